-- Set the faucet's cap (ARGV[1] = '' keeps it); refused below what is minted already. Seal a
-- ledger from before seals: every wallet's seal set to its balance now (once; see lib.lua).
-- KEYS[1] meta hash, KEYS[2] balances hash; ARGV[1] cap, ARGV[2] created timestamp (kept if set)
local cap = ARGV[1]
local sealed = redis.call('HGET', KEYS[1], 'sealed')
local balances = sealed and {} or redis.call('HGETALL', KEYS[2])
if cap ~= '' then
  local minted = redis.call('HGET', KEYS[1], 'minted') or '0'
  if #minted > #cap or (#minted == #cap and minted > cap) then
    return redis.error_reply('P2E_CAP_BELOW ' .. minted)
  end
  redis.call('HSET', KEYS[1], 'cap', cap)
end
redis.call('HSETNX', KEYS[1], 'created', ARGV[2])
for i = 1, #balances, 2 do redis.call('HSETNX', KEYS[1], 'seal:' .. balances[i], balances[i + 1]) end
if not sealed then redis.call('HSET', KEYS[1], 'sealed', '1') end
return 1
