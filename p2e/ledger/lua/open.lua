-- Open a wallet (balance 0) and register its party. Its command id is `open:<name>`, so opening
-- again replays the first entry.
-- KEYS[5] parties hash, KEYS[6] the wallet's history list
-- ARGV[4] wallet name, ARGV[5] party record (JSON)
local done = replay()
if done then return done end
local name = ARGV[4]
if redis.call('HEXISTS', BAL, name) == 1 then return fail('EXISTS', name) end
redis.call('HEXISTS', KEYS[5], name)
local seq, m = state()
lists(KEYS[6])
redis.call('HSETNX', KEYS[5], name, ARGV[5])
local entry = append(seq, m[1], {move(name, '0')})
redis.call('RPUSH', KEYS[6], seq)
return {0, entry}
