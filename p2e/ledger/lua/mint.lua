-- New money into a wallet, through the faucet: refused past the cap.
-- KEYS[5] the wallet's history list
-- ARGV[4] wallet, ARGV[5] amount, ARGV[6] the cap when none is set
local done = replay()
if done then return done end
local to, amount = ARGV[4], ARGV[5]
if not positive(amount) then return fail('AMOUNT', amount) end
if redis.call('HEXISTS', BAL, to) == 0 then return fail('NO_WALLET', to) end
local tampered = untampered(to)
if tampered then return tampered end
local seq, m = state('minted', 'cap')
local minted, cap = m[2] or '0', m[3] or ARGV[6]
local total = add(minted, amount)
if not ge(cap, total) then return fail('CAP', minted .. ' ' .. cap) end
lists(KEYS[5])
local entry = append(seq, m[1], {move(to, amount)}, 'minted', total)
redis.call('RPUSH', KEYS[5], seq)
return {0, entry}
