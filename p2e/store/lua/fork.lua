-- Create a branch that inherits its parent's first ARGV[1] events. Copies no event.
-- KEYS[1] parent branch hash, KEYS[2] new branch hash, KEYS[3] branches zset, KEYS[4] conv hash
-- ARGV[1] fork_at, ARGV[2] new name, ARGV[3] parent name, ARGV[4] created ts, ARGV[5] lineage JSON,
-- ARGV[6] 1 to check the new branch out
local plen = tonumber(redis.call('HGET', KEYS[1], 'length'))
if not plen then return redis.error_reply('P2E_NO_BRANCH ' .. KEYS[1]) end
local at = tonumber(ARGV[1])
if at < 0 or at > plen then return redis.error_reply('P2E_RANGE ' .. plen) end
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('P2E_EXISTS ' .. ARGV[2]) end
redis.call('HSET', KEYS[2], 'name', ARGV[2], 'parent', ARGV[3], 'fork_at', at, 'length', at,
  'created', ARGV[4], 'lineage', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
if ARGV[6] == '1' then redis.call('HSET', KEYS[4], 'active', ARGV[2]) end
return plen
