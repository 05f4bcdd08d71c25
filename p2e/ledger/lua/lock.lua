-- Lock an amount from the sponsor's wallet in a new escrow that only the arbiter can settle.
-- KEYS[5] sponsor's history list, KEYS[6] the escrow hash, KEYS[7] escrow ids list, KEYS[8] parties hash
-- ARGV[4] sponsor, ARGV[5] arbiter, ARGV[6] amount, ARGV[7] escrow id, ARGV[8] memo
local done = replay()
if done then return done end
local sponsor, arbiter, amount, id = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if not positive(amount) then return fail('AMOUNT', amount) end
if redis.call('EXISTS', KEYS[6]) == 1 then return fail('ESCROW_EXISTS', id) end
local balance = redis.call('HGET', BAL, sponsor)
if not balance then return fail('NO_WALLET', sponsor) end
local tampered = untampered(sponsor)
if tampered then return tampered end
if redis.call('HEXISTS', KEYS[8], arbiter) == 0 then return fail('NO_PARTY', arbiter) end
if not ge(balance, amount) then return fail('FUNDS', balance) end
local seq, m = state('escrowed')
lists(KEYS[5], KEYS[7])
local entry = append(seq, m[1], {move(sponsor, '-' .. amount)}, 'escrowed', add(m[2] or '0', amount))
redis.call('HSET', KEYS[6], 'sponsor', sponsor, 'arbiter', arbiter, 'amount', amount, 'state', 'locked',
  'memo', ARGV[8], 'locked', seq)
redis.call('RPUSH', KEYS[7], id)
redis.call('RPUSH', KEYS[5], seq)
return {0, entry}
