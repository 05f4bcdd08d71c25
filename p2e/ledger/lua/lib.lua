-- Shared by the ledger scripts (prepended to each: Redis scripts cannot import), but for cap.lua
-- and transfer.lua, which are self-contained (transfer: the hot path, see its header).
-- KEYS[1] meta hash, KEYS[2] balances hash, KEYS[3] journal list, KEYS[4] command ids hash
-- ARGV[1] command id, ARGV[2] fingerprint of the command, ARGV[3] the entry's body: a JSON object
-- without seq, prev and moves, which the script adds (it alone knows them).
-- A script reads (and so type-checks) every key before its first write: a script that fails
-- half-way cannot roll back. Reads are grouped (HMGET; LLEN of the journal is the next seq)
-- because each redis.call costs a few microseconds and a transfer is on the hot path.
-- Errors are `P2E_<CODE> <detail>`; p2e/ledger/embedded.py maps them to p2e errors.
local META, BAL, JOURNAL, CMDS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local CID, FP, BODY = ARGV[1], ARGV[2], ARGV[3]
local GENESIS = string.rep('0', 40)
local EXACT = 9007199254740992  -- 2^53: Lua numbers (doubles) hold integers exactly below it

local function fail(code, detail)
  return redis.error_reply('P2E_' .. code .. ' ' .. (detail or ''))
end

-- Keys first touched by a write (history lists) are read first: a foreign key of another type
-- fails the script here, before any write (LLEN: cheaper than TYPE and a status table).
local function lists(...)
  for _, key in ipairs({...}) do redis.call('LLEN', key) end
end

-- Amounts travel as decimal strings of integers (minor units) without leading zeros. Lua numbers
-- are doubles, exact only below 2^53, so amounts are compared and summed as strings; balances
-- change through HINCRBY (exact 64-bit integers).
local function positive(a)
  return string.match(a, '^[1-9]%d*$') ~= nil
end

local function ge(a, b)
  if #a ~= #b then return #a > #b end
  return a >= b
end

-- a + b for decimal strings, in 7-digit chunks (each exact as a double).
local function add(a, b)
  local out, carry, i, j = '', 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local s = carry
    if i > 0 then s = s + tonumber(string.sub(a, math.max(1, i - 6), i)) end
    if j > 0 then s = s + tonumber(string.sub(b, math.max(1, j - 6), j)) end
    if s >= 10000000 then s, carry = s - 10000000, 1 else carry = 0 end
    i, j = i - 7, j - 7
    if i > 0 or j > 0 or carry > 0 then out = string.format('%07d', s) .. out else out = s .. out end
  end
  return out
end

-- A command id already applied: the original entry if the command is the same, else a conflict.
local function replay()
  local done = redis.call('HGET', CMDS, CID)
  if not done then return nil end
  local seq, fp = string.match(done, '^(%d+) (.*)$')
  if fp ~= FP then return fail('CONFLICT', seq) end
  return {1, redis.call('LINDEX', JOURNAL, tonumber(seq))}
end

-- The journal's next seq and the meta fields asked for (checks both keys' types).
local function state(...)
  return redis.call('LLEN', JOURNAL), redis.call('HMGET', META, 'head', ...)
end

-- Seals: meta field `seal:<wallet>` holds the balance the ledger's last command left in the
-- wallet, written with it by every script. A balance changed behind the ledger's back (an HINCRBY
-- by hand) no longer equals its seal, and every command that would move it is refused until it is
-- set back (`verify` names it too). A wallet without a seal passes only on a ledger from before
-- seals (meta `sealed` unset: `initialize` seals every wallet and sets it; a new ledger's first
-- entry sets it). An error, or nil if every wallet given is as the ledger left it.
local function untampered(...)
  local wallets, fields = {...}, {'sealed'}
  for k, w in ipairs(wallets) do fields[k + 1] = 'seal:' .. w end
  local seals, balances = redis.call('HMGET', META, unpack(fields)), redis.call('HMGET', BAL, ...)
  for k, w in ipairs(wallets) do
    local seal, balance = seals[k + 1], balances[k]
    if balance and seal ~= balance and (seal or seals[1]) then
      return fail('TAMPERED', w .. ' ' .. balance .. ' ' .. (seal or '-'))
    end
  end
  return nil
end

-- Change a balance; the exact text of the new balance (HINCRBY answers a Lua number: exact
-- below 2^53, else read back as text).
local function move(wallet, delta)
  local v = redis.call('HINCRBY', BAL, wallet, delta)
  if v < EXACT and v > -EXACT then return {wallet, delta, string.format('%.0f', v)} end
  return {wallet, delta, redis.call('HGET', BAL, wallet)}
end

-- Append the entry (seq, the previous entry's hash, the body, the moves), set the meta fields
-- (seq, head, the moved wallets' seals and the pairs given; `sealed` with a new ledger's first
-- entry), record the command id. Returns the entry.
local function append(seq, prev, moves, ...)
  local parts = {}
  for k, m in ipairs(moves) do parts[k] = '["' .. m[1] .. '",' .. m[2] .. ',' .. m[3] .. ']' end
  local entry = '{"seq":' .. seq .. ',"prev":"' .. (prev or GENESIS) .. '",' .. string.sub(BODY, 2, -2)
    .. ',"moves":[' .. table.concat(parts, ',') .. ']}'
  local fields = {'seq', seq + 1, 'head', redis.sha1hex(entry), ...}
  for _, m in ipairs(moves) do
    table.insert(fields, 'seal:' .. m[1])
    table.insert(fields, m[3])
  end
  if seq == 0 then
    table.insert(fields, 'sealed')
    table.insert(fields, '1')
  end
  redis.call('RPUSH', JOURNAL, entry)
  redis.call('HSET', META, unpack(fields))
  redis.call('HSET', CMDS, CID, seq .. ' ' .. FP)
  return entry
end

