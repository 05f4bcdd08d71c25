-- Set the faucet's cap (ARGV[1] = '' keeps it); refused below what is minted already.
-- KEYS[1] meta hash; ARGV[1] cap, ARGV[2] created timestamp (kept if set)
local cap = ARGV[1]
if cap ~= '' then
  local minted = redis.call('HGET', KEYS[1], 'minted') or '0'
  if #minted > #cap or (#minted == #cap and minted > cap) then
    return redis.error_reply('P2E_CAP_BELOW ' .. minted)
  end
  redis.call('HSET', KEYS[1], 'cap', cap)
end
redis.call('HSETNX', KEYS[1], 'created', ARGV[2])
return 1
