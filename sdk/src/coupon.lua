-- COUPON.* for Redis servers that cannot load the module: the same rules over the same keys,
-- leaving the same data (holders, last seq, event entries) as the module does.
--
-- KEYS: 1 = the coupon key (hash user -> seq; the last seq under the field ''), 2 = its events
-- ARGV: op ('issue' | 'revoke'), user, and for issue: limit [, start_ms, end_ms]
-- Replies match the module's: issue -> {status, seq | nil, holders}; revoke -> 1 | 0.

-- The layout's names (checked against coupon_layout by the SDK's tests).
local LAST_SEQ, OP, USER, SEQ, ISSUE, REVOKE = '', 'op', 'user', 'seq', 'issue', 'revoke'

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
end
return redis.error_reply('ERR unknown coupon script op')
