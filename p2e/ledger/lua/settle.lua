-- Settle a locked escrow: release it to payees, or refund it to its sponsor. Only its arbiter may;
-- the payouts must add up to the escrowed amount exactly.
-- KEYS[5] the escrow hash, KEYS[6..] each payee's history list (in ARGV order)
-- ARGV[4] escrow id, ARGV[5] who asks (must be the arbiter), ARGV[6] 'released' or 'refunded',
-- then pairs: payee, amount
local done = replay()
if done then return done end
local id, caller, state_to = ARGV[4], ARGV[5], ARGV[6]
local e = redis.call('HMGET', KEYS[5], 'state', 'arbiter', 'amount', 'sponsor')
if not e[1] then return fail('NO_ESCROW', id) end
if e[1] ~= 'locked' then return fail('ESCROW_STATE', e[1]) end
if e[2] ~= caller then return fail('NOT_ARBITER', e[2]) end
if state_to == 'refunded' and (#ARGV ~= 8 or ARGV[7] ~= e[4]) then return fail('REFUND_TO', e[4]) end
local total = '0'
for i = 7, #ARGV, 2 do
  if not positive(ARGV[i + 1]) then return fail('AMOUNT', ARGV[i + 1]) end
  if redis.call('HEXISTS', BAL, ARGV[i]) == 0 then return fail('NO_WALLET', ARGV[i]) end
  total = add(total, ARGV[i + 1])
end
if total ~= e[3] then return fail('PAYOUT_SUM', e[3] .. ' ' .. total) end
local payees = {}
for i = 7, #ARGV, 2 do payees[#payees + 1] = ARGV[i] end
local tampered = untampered(unpack(payees))
if tampered then return tampered end
local seq, m = state('escrowed')
for k = 6, #KEYS do lists(KEYS[k]) end
local moves = {}
for i = 7, #ARGV, 2 do moves[#moves + 1] = move(ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', META, 'escrowed', '-' .. e[3])
local entry = append(seq, m[1], moves)
redis.call('HSET', KEYS[5], 'state', state_to, 'settled', seq)
for k = 6, #KEYS do redis.call('RPUSH', KEYS[k], seq) end
return {0, entry}
