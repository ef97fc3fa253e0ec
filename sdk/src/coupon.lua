-- COUPON.* for Redis servers that cannot load the module: the same rules over the same keys,
-- leaving the same data (holders, last seq, event entries) as the module does.
--
-- KEYS: 1 = the coupon key (hash user -> seq; the last seq under the field ''), 2 = its events
-- ARGV: op ('issue' | 'revoke'), user, and for issue: limit [, start_ms, end_ms];
--       or 'restore', floor, then user, seq pairs (COUPON.RESTORE's arguments)
-- Replies match the module's: issue -> {status, seq | nil, holders}; revoke -> 1 | 0;
-- restore -> one element per pair: 'restored' | 'held' | {'user-holds', seq} | {'seq-taken', user}.

-- The layout's names (checked against coupon_layout by the SDK's tests).
local LAST_SEQ, OP, USER, SEQ, ISSUE, REVOKE, RESTORE = '', 'op', 'user', 'seq', 'issue', 'revoke', 'restore'

local coupon, events = KEYS[1], KEYS[2]
local op, user = ARGV[1], ARGV[2]

-- Every field of the coupon hash but the last seq is a holder.
local function holders()
  local fields = redis.call('HLEN', coupon)
  if fields > 0 then
    return fields - 1
  end
  return 0
end

-- A coupon is both keys or neither: one without the other was evicted or deleted, and a write
-- would hand out a seq without its event or restart the seqs. (During a resharding the server
-- itself answers -TRYAGAIN, as both keys are declared.)
local function refusal()
  local has_coupon = redis.call('EXISTS', coupon) == 1
  if has_coupon == (redis.call('EXISTS', events) == 1) then
    return nil
  end
  if has_coupon then
    return redis.error_reply('ERR the coupon exists but its event stream is missing (evicted or '
      .. 'deleted), so nothing was changed; restore the stream, or delete the coupon to start it over')
  end
  return redis.error_reply("ERR the coupon's event stream exists but the coupon is missing "
    .. '(evicted or deleted), so nothing was changed; restore the coupon, or delete the stream '
    .. 'to start it over')
end

if op == 'issue' then
  local held = redis.call('HGET', coupon, user)
  if held then
    return {'DUPLICATE', tonumber(held), holders()}
  end
  if ARGV[4] then
    -- Unix ms are exact in a Lua number (below 2^53).
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if now < tonumber(ARGV[4]) then
      return {'NOT_STARTED', false, holders()}
    end
    if now >= tonumber(ARGV[5]) then
      return {'ENDED', false, holders()}
    end
  end
  local count = holders()
  -- The limit arrives as a decimal up to 2^63-1; more than 15 digits is never reached.
  local limit = ARGV[3]
  if #limit <= 15 and count >= tonumber(limit) then
    return {'SOLD_OUT', false, count}
  end
  local refused = refusal()
  if refused then
    return refused
  end
  local last = redis.call('HGET', coupon, LAST_SEQ)
  if not last and redis.call('EXISTS', coupon) == 1 then
    return redis.error_reply('ERR coupon data is corrupt: the coupon hash has no last-seq field')
  end
  local seq = string.format('%d', (tonumber(last) or 0) + 1)
  redis.call('XADD', events, '*', OP, ISSUE, USER, user, SEQ, seq)
  redis.call('HSET', coupon, user, seq, LAST_SEQ, seq)
  return {'ISSUED', tonumber(seq), count + 1}
elseif op == 'revoke' then
  local seq = redis.call('HGET', coupon, user)
  if not seq then
    return 0
  end
  local refused = refusal()
  if refused then
    return refused
  end
  redis.call('XADD', events, '*', OP, REVOKE, USER, user, SEQ, seq)
  redis.call('HDEL', coupon, user)
  return 1
elseif op == 'restore' then
  -- Integers exactly as Redis writes them, compared as decimal strings (no precision lost).
  local function integer(text, least)
    if text == '0' then
      return least == 0
    end
    if not string.find(text, '^[1-9]%d*$') or #text > 19 then
      return false
    end
    return #text < 19 or text <= '9223372036854775807'
  end
  local function above(a, b)
    return #a > #b or (#a == #b and a > b)
  end
  local floor, n = ARGV[2], #ARGV
  if not floor or n % 2 ~= 0 then
    return redis.error_reply('ERR wrong number of arguments')
  end
  if not integer(floor, 0) then
    return redis.error_reply('ERR floor must be an integer from 0 to 9223372036854775807')
  end
  local users, seqs = {}, {}
  for i = 3, n, 2 do
    local name, seq = ARGV[i], ARGV[i + 1]
    if name == '' then
      return redis.error_reply('ERR user must not be empty')
    end
    if not integer(seq, 1) then
      return redis.error_reply('ERR seq must be an integer from 1 to 9223372036854775807')
    end
    if users[name] then
      return redis.error_reply("ERR user '" .. name .. "' is named twice in one restore; nothing was changed")
    end
    if seqs[seq] then
      return redis.error_reply('ERR seq ' .. seq .. ' is named twice in one restore; nothing was changed')
    end
    users[name], seqs[seq] = true, true
  end
  local replies, undecided = {}, false
  for i = 3, n, 2 do
    local held = redis.call('HGET', coupon, ARGV[i])
    if held == ARGV[i + 1] then
      replies[#replies + 1] = 'held'
    elseif held then
      replies[#replies + 1] = {'user-holds', tonumber(held)}
    else
      replies[#replies + 1] = false
      undecided = true
    end
  end
  local last = redis.call('HGET', coupon, LAST_SEQ)
  if not last and redis.call('EXISTS', coupon) == 1 then
    return redis.error_reply('ERR coupon data is corrupt: the coupon hash has no last-seq field')
  end
  last = last or '0'
  local highest = last
  if above(floor, highest) then
    highest = floor
  end
  local fields = {}
  if undecided then
    -- Seq -> holder, from one pass over the coupon (an operator's command: O(holders)).
    local owners, all = {}, redis.call('HGETALL', coupon)
    for j = 1, #all, 2 do
      if all[j] ~= LAST_SEQ then
        owners[all[j + 1]] = all[j]
      end
    end
    for k = 1, #replies do
      if replies[k] == false then
        local name, seq = ARGV[2 * k + 1], ARGV[2 * k + 2]
        if owners[seq] then
          replies[k] = {'seq-taken', owners[seq]}
        else
          replies[k] = 'restored'
          fields[#fields + 1] = name
          fields[#fields + 1] = seq
          if above(seq, highest) then
            highest = seq
          end
        end
      end
    end
  end
  local raise = above(highest, last)
  if #fields == 0 and not raise then
    return replies
  end
  local refused = refusal()
  if refused then
    return refused
  end
  for j = 1, #fields, 2 do
    redis.call('XADD', events, '*', OP, RESTORE, USER, fields[j], SEQ, fields[j + 1])
  end
  if #fields == 0 and redis.call('EXISTS', events) == 0 then
    -- A coupon is never left without its stream: created empty, as the module does.
    local id = redis.call('XADD', events, '*', OP, RESTORE, USER, LAST_SEQ, SEQ, highest)
    redis.call('XDEL', events, id)
  end
  if raise then
    fields[#fields + 1] = LAST_SEQ
    fields[#fields + 1] = highest
  end
  redis.call('HSET', coupon, unpack(fields))
  return replies
end
return redis.error_reply('ERR unknown coupon script op')
