-- Move an amount from one wallet to another: balance check, optional budget check, debit, credit,
-- journal append, idempotency, in one atomic step.
-- The hot path, so it is lean: self-contained (lib.lua is not prepended: no library closures to
-- make on each call), nine redis.calls without a budget (each costs several microseconds), and a
-- short answer (the client knows the rest of the entry).
-- Seals (see lib.lua's `untampered`): both wallets' seals come with the meta fields it reads
-- anyway, and are written with the ones it writes, so checking them costs no redis.call.
-- KEYS[1] meta hash, KEYS[2] balances hash, KEYS[3] journal list, KEYS[4] command ids hash,
-- KEYS[5] payer's history list, KEYS[6] payee's history list, KEYS[7] payer's budget hash,
-- KEYS[8] the budget scope's list of entries (seqs: what a rollout row counts for its episode)
-- ARGV[1] command id, ARGV[2] fingerprint of the command, ARGV[3] the entry's fields that the
-- client knows (ts, kind, cid, by, amount, reason) as JSON object members WITHOUT the braces,
-- ARGV[4] payer, ARGV[5] payee, ARGV[6] amount, ARGV[7] budget scope ('' = none: not counted),
-- ARGV[8] the scope's limit ('' = counted, not limited)
-- Answers {0, seq, prev, payer's balance after, payee's balance after} (text), or, for a command
-- id applied already, {1, the original entry's text} (as lib.lua's replay does).
-- The entry is the one lib.lua's append writes: {"seq":..,"prev":..,<ARGV[3]>,"moves":[...]}.
-- The next seq is meta's seq (lib.lua counts the journal instead: the two are equal, and verify
-- checks that they are).
local META, BAL, JOURNAL, CMDS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local CID, FP = ARGV[1], ARGV[2]
local payer, payee, amount, scope, limit = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]

local done = redis.call('HGET', CMDS, CID)
if done then
  local seq, fp = string.match(done, '^(%d+) (.*)$')
  if fp ~= FP then return redis.error_reply('P2E_CONFLICT ' .. seq) end
  return {1, redis.call('LINDEX', JOURNAL, tonumber(seq))}
end
if #amount > 19 or not string.match(amount, '^[1-9]%d*$') then
  return redis.error_reply('P2E_AMOUNT ' .. amount)
end
if payer == payee then return redis.error_reply('P2E_SELF ' .. payer) end
local b = redis.call('HMGET', BAL, payer, payee)
local from, to = b[1], b[2]
if not from then return redis.error_reply('P2E_NO_WALLET ' .. payer) end
if not to then return redis.error_reply('P2E_NO_WALLET ' .. payee) end
-- A balance that is not its seal was changed behind the ledger's back: refused, payer or payee
-- (paid into, it would be sealed, then spent). No seal passes only on a ledger without seals yet.
local m = redis.call('HMGET', META, 'seq', 'head', 'volume', 'transfers', 'sealed', 'seal:' .. payer,
  'seal:' .. payee)
if m[6] ~= from and (m[6] or m[5]) then
  return redis.error_reply('P2E_TAMPERED ' .. payer .. ' ' .. from .. ' ' .. (m[6] or '-'))
end
if m[7] ~= to and (m[7] or m[5]) then
  return redis.error_reply('P2E_TAMPERED ' .. payee .. ' ' .. to .. ' ' .. (m[7] or '-'))
end
if #from > 24 or #to > 24 then return redis.error_reply('P2E_CORRUPT ' .. BAL) end
-- Amounts and balances are decimal text of integers (minor units) without leading zeros; Lua
-- numbers are doubles, exact only below 2^53, so text is compared by length, then as text.
if #from < #amount or (#from == #amount and from < amount) then
  return redis.error_reply('P2E_FUNDS ' .. from)
end

-- x + amount and x - amount (x >= amount) for such text: as doubles when both are below 10^15
-- (exact, and so is the result; '%d' prints a double through a 64-bit integer, much cheaper
-- than '%.0f' or tostring); else in two limbs of 9 digits (each limb, and each limb's sum,
-- exact) up to 24 digits, which every balance and amount is (at most 10^18); a longer sum (only
-- the volume can be, after millions of the largest payments) in 7-digit chunks.
local n = #amount <= 15 and tonumber(amount)
local function limbs(x)
  if #x <= 9 then return 0, tonumber(x) end
  return tonumber(string.sub(x, 1, -10)), tonumber(string.sub(x, -9))
end
local ah, al  -- the amount's limbs, when first needed
local function text(h, l)
  if l < 0 then h, l = h - 1, l + 1000000000 elseif l >= 1000000000 then h, l = h + 1, l - 1000000000 end
  if h == 0 then return string.format('%d', l) end
  return string.format('%d%09d', h, l)
end
local function plus(x)
  if n and #x <= 15 then return string.format('%d', tonumber(x) + n) end
  if #x <= 24 then
    local h, l = limbs(x)
    if not ah then ah, al = limbs(amount) end
    return text(h + ah, l + al)
  end
  local out, carry, i, j = '', 0, #x, #amount
  while i > 0 or j > 0 or carry > 0 do
    local s = carry
    if i > 0 then s = s + tonumber(string.sub(x, math.max(1, i - 6), i)) end
    if j > 0 then s = s + tonumber(string.sub(amount, math.max(1, j - 6), j)) end
    if s >= 10000000 then s, carry = s - 10000000, 1 else carry = 0 end
    i, j = i - 7, j - 7
    if i > 0 or j > 0 or carry > 0 then out = string.format('%07d', s) .. out else out = s .. out end
  end
  return out
end
local function minus(x)
  if n and #x <= 15 then return string.format('%d', tonumber(x) - n) end
  local h, l = limbs(x)
  if not ah then ah, al = limbs(amount) end
  return text(h - ah, l - al)
end

local spent
if scope ~= '' then
  local before = redis.call('HGET', KEYS[7], scope) or '0'
  spent = plus(before)
  if limit ~= '' and (#spent > #limit or (#spent == #limit and spent > limit)) then
    return redis.error_reply('P2E_BUDGET ' .. before)
  end
end
local seq, prev = m[1] or '0', m[2] or '0000000000000000000000000000000000000000'
local after_from, after_to = minus(from), plus(to)
local entry = '{"seq":' .. seq .. ',"prev":"' .. prev .. '",' .. ARGV[3] .. ',"moves":[["' .. payer
  .. '",-' .. amount .. ',' .. after_from .. '],["' .. payee .. '",' .. amount .. ',' .. after_to
  .. ']]}'

-- Every value is computed, and every key but the three lists read (so type-checked), before
-- the first write: a script that fails half-way cannot roll back. The lists are written first,
-- unread: a key of another type fails its RPUSH, and the pushes before it are taken back.
local pushed = redis.pcall('RPUSH', JOURNAL, entry)
if type(pushed) == 'table' then return pushed end
pushed = redis.pcall('RPUSH', KEYS[5], seq)
if type(pushed) == 'table' then
  redis.call('RPOP', JOURNAL)
  return pushed
end
pushed = redis.pcall('RPUSH', KEYS[6], seq)
if type(pushed) == 'table' then
  redis.call('RPOP', JOURNAL)
  redis.call('RPOP', KEYS[5])
  return pushed
end
if scope ~= '' then
  pushed = redis.pcall('RPUSH', KEYS[8], seq)
  if type(pushed) == 'table' then
    redis.call('RPOP', JOURNAL)
    redis.call('RPOP', KEYS[5])
    redis.call('RPOP', KEYS[6])
    return pushed
  end
end
redis.call('HSET', BAL, payer, after_from, payee, after_to)
if spent then redis.call('HSET', KEYS[7], scope, spent) end
redis.call('HSET', META, 'seq', string.format('%d', seq + 1), 'head', redis.sha1hex(entry),
  'volume', plus(m[3] or '0'), 'transfers', string.format('%d', (tonumber(m[4]) or 0) + 1),
  'seal:' .. payer, after_from, 'seal:' .. payee, after_to)
redis.call('HSET', CMDS, CID, seq .. ' ' .. FP)
return {0, seq, prev, after_from, after_to}
