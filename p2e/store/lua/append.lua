-- Append events to one branch atomically; the store assigns their sequence numbers.
-- KEYS[1] branch hash, KEYS[2] branch event list, KEYS[3] conversation hash
-- ARGV[1] expected length ('' = any), ARGV[2] index key prefix, ARGV[3] branch name,
-- then per event: JSON (without seq), kind, agent ('' = none)
-- Returns {first_seq, next_length}, or {-1, current_length} when ARGV[1] does not match.
-- Every key is checked before the first write: a script that fails half-way cannot roll back.
local function must_be(key, kind)
  local t = redis.call('TYPE', key)['ok']
  if t ~= kind and t ~= 'none' then return redis.error_reply('P2E_WRONGTYPE ' .. key .. ' is a ' .. t) end
end
local len = tonumber(redis.call('HGET', KEYS[1], 'length'))
if not len then return redis.error_reply('P2E_NO_BRANCH ' .. KEYS[1]) end
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= len then return {-1, len} end
local err = must_be(KEYS[2], 'list') or must_be(KEYS[3], 'hash')
if err then return err end
local seen = {}
for i = 4, #ARGV, 3 do
  for _, key in ipairs({ARGV[2] .. 'kind:' .. ARGV[i + 1], ARGV[2] .. 'agent:' .. ARGV[i + 2]}) do
    if not seen[key] then
      seen[key] = true
      err = must_be(key, 'list')
      if err then return err end
    end
  end
end
local seq = len
local out = {}
for i = 4, #ARGV, 3 do
  out[#out + 1] = '{"seq":' .. seq .. ',' .. string.sub(ARGV[i], 2)
  local ref = ARGV[3] .. ':' .. seq
  redis.call('RPUSH', ARGV[2] .. 'kind:' .. ARGV[i + 1], ref)
  if ARGV[i + 2] ~= '' then redis.call('RPUSH', ARGV[2] .. 'agent:' .. ARGV[i + 2], ref) end
  seq = seq + 1
  if #out == 1000 then  -- unpack() is bounded by Lua's stack: push in slices, still one script
    redis.call('RPUSH', KEYS[2], unpack(out))
    out = {}
  end
end
if #out > 0 then redis.call('RPUSH', KEYS[2], unpack(out)) end
redis.call('HSET', KEYS[1], 'length', seq)
redis.call('HINCRBY', KEYS[3], 'events', seq - len)
return {len, seq}
