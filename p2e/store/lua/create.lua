-- Create a conversation and its first branch, or fail if the name or id is taken.
-- KEYS[1] convs zset, KEYS[2] names hash, KEYS[3] conv hash, KEYS[4] branches zset,
-- KEYS[5] first branch hash, KEYS[6] the conv hash a conversation with id = ARGV[2] would have
-- ARGV[1] id, ARGV[2] name, ARGV[3] root agent, ARGV[4] created ts, ARGV[5] branch name
-- Ids and names share one space (`p2e conversation show X` takes either), so neither may
-- shadow the other.
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return redis.error_reply('P2E_NAME_TAKEN ' .. ARGV[2]) end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return redis.error_reply('P2E_NAME_TAKEN ' .. ARGV[1]) end
if redis.call('EXISTS', KEYS[3]) == 1 then return redis.error_reply('P2E_NAME_TAKEN ' .. ARGV[1]) end
if ARGV[2] ~= ARGV[1] and redis.call('EXISTS', KEYS[6]) == 1 then
  return redis.error_reply('P2E_NAME_TAKEN ' .. ARGV[2])
end
redis.call('HSET', KEYS[3], 'id', ARGV[1], 'name', ARGV[2], 'root', ARGV[3], 'created', ARGV[4],
  'active', ARGV[5], 'events', 0)
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[5], 'name', ARGV[5], 'parent', '', 'fork_at', 0, 'length', 0,
  'created', ARGV[4], 'lineage', '[]')
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
return 1
