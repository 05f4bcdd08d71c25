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
local seen = {[ARGV[2] .. 'agent:'] = true}  -- (no agent: no index entry)
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
local out, refs, order = {}, {}, {}
local function index(key, ref)  -- refs grouped per index key: one RPUSH per key, not per event
  if not refs[key] then refs[key] = {}; order[#order + 1] = key end
  local t = refs[key]
  t[#t + 1] = ref
end
local function push(key, items)  -- unpack() is bounded by Lua's stack: push in slices
  for i = 1, #items, 1000 do
    redis.call('RPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
end
for i = 4, #ARGV, 3 do
  out[#out + 1] = '{"seq":' .. seq .. ',' .. string.sub(ARGV[i], 2)
  local ref = ARGV[3] .. ':' .. seq
  index(ARGV[2] .. 'kind:' .. ARGV[i + 1], ref)
  if ARGV[i + 2] ~= '' then index(ARGV[2] .. 'agent:' .. ARGV[i + 2], ref) end
  seq = seq + 1
end
push(KEYS[2], out)
for _, key in ipairs(order) do push(key, refs[key]) end
redis.call('HSET', KEYS[1], 'length', seq)
redis.call('HINCRBY', KEYS[3], 'events', seq - len)
return {len, seq}
