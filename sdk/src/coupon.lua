-- COUPON.* for Redis servers that cannot load the module: the same rules over the same keys,
-- leaving the same data (holders, meta counters, event entries) as the module does.
--
-- KEYS: 1 = {K}:holders (hash user -> seq), 2 = {K}:meta (hash), 3 = {K}:events (stream)
-- ARGV: op ("issue" | "revoke"), coupon key, user, and for issue: limit [, start_ms, end_ms]
-- Replies match the module's: issue -> {status, seq | nil, holders}; revoke -> 1 | 0.

local holders, meta, events = KEYS[1], KEYS[2], KEYS[3]
local op, coupon, user = ARGV[1], ARGV[2], ARGV[3]

-- The server's clock in unix ms, as a decimal string (no float formatting on the way).
local function now_ms()
  local t = redis.call('TIME')
  return t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end

local function append_event(kind, seq, ts)
  redis.call('XADD', events, '*', 'op', kind, 'coupon', coupon, 'user', user, 'seq', seq, 'ts', ts)
end

if op == 'issue' then
  local held = redis.call('HGET', holders, user)
  if held then
    return {{ok = 'DUPLICATE'}, tonumber(held), redis.call('HLEN', holders)}
  end
  local ts = now_ms()
  if ARGV[5] then
    -- 13-digit decimals compare exactly as numbers.
    local now = tonumber(ts)
    if now < tonumber(ARGV[5]) then
      return {{ok = 'NOT_STARTED'}, false, redis.call('HLEN', holders)}
    end
    if now >= tonumber(ARGV[6]) then
      return {{ok = 'ENDED'}, false, redis.call('HLEN', holders)}
    end
  end
  local count = redis.call('HLEN', holders)
  -- The limit arrives as a decimal up to 2^63-1; compare as strings when it is that long.
  local limit = ARGV[4]
  local sold_out
  if #limit > 15 then
    sold_out = false
  else
    sold_out = count >= tonumber(limit)
  end
  if sold_out then
    return {{ok = 'SOLD_OUT'}, false, count}
  end
  local seq = string.format('%d', (tonumber(redis.call('HGET', meta, 'last_seq')) or 0) + 1)
  append_event('issue', seq, ts)
  redis.call('HSET', holders, user, seq)
  redis.call('HSET', meta, 'last_seq', seq)
  return {{ok = 'ISSUED'}, tonumber(seq), count + 1}
elseif op == 'revoke' then
  local seq = redis.call('HGET', holders, user)
  if not seq then
    return 0
  end
  local revoked = string.format('%d', (tonumber(redis.call('HGET', meta, 'revoked')) or 0) + 1)
  append_event('revoke', seq, now_ms())
  redis.call('HDEL', holders, user)
  redis.call('HSET', meta, 'revoked', revoked)
  return 1
end
return redis.error_reply('ERR unknown coupon script op')
