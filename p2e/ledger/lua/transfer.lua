-- Move an amount from one wallet to another: balance check, optional budget check, debit, credit,
-- journal append, idempotency, in one atomic step.
-- KEYS[5] payer's history list, KEYS[6] payee's history list, KEYS[7] payer's budget hash
-- ARGV[4] payer, ARGV[5] payee, ARGV[6] amount, ARGV[7] budget scope ('' = none: not counted),
-- ARGV[8] the scope's limit ('' = counted, not limited)
local done = replay()
if done then return done end
local payer, payee, amount, scope, limit = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if not positive(amount) then return fail('AMOUNT', amount) end
if payer == payee then return fail('SELF', payer) end
local b = redis.call('HMGET', BAL, payer, payee)
if not b[1] then return fail('NO_WALLET', payer) end
if not b[2] then return fail('NO_WALLET', payee) end
if not ge(b[1], amount) then return fail('FUNDS', b[1]) end
if scope ~= '' then
  local spent = redis.call('HGET', KEYS[7], scope) or '0'
  if limit ~= '' and not ge(limit, add(spent, amount)) then return fail('BUDGET', spent) end
end
local seq, m = state('volume', 'transfers')
lists(KEYS[5], KEYS[6])
local debit = move(payer, '-' .. amount)
local credit = move(payee, amount)
if scope ~= '' then redis.call('HINCRBY', KEYS[7], scope, amount) end
local entry = append(seq, m[1], {debit, credit},
  'volume', add(m[2] or '0', amount), 'transfers', (tonumber(m[3]) or 0) + 1)
redis.call('RPUSH', KEYS[5], seq)
redis.call('RPUSH', KEYS[6], seq)
return {0, entry}
