-- Delayed jobs (tasks/transport.py, DELAYED_LIB): functions the publish and take scripts
-- begin with. A message whose eta is still to come waits in its queue list's delayed set
-- (jobyard:delayed:<list key>, a sorted set: the message's exact text -> its due time, unix
-- seconds) instead of on the list, and moves to the head of the list once the server's
-- clock (TIME) reaches it. Reads no script keys or arguments itself: callers pass them in.

-- Unix seconds of an ISO 8601 time as Celery writes an eta header
-- (2026-12-02T13:40:00.123456+00:00; Z, +HH, +HHMM and no offset, read as UTC, too), or nil.
local function iso_seconds(text)
  if type(text) ~= 'string' then return nil end
  local y, mo, d, h, mi, rest = string.match(text, '^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d)(.*)$')
  if not y then return nil end
  local seconds = 0
  local s, after = string.match(rest, '^:(%d%d)(.*)$')
  if s then
    seconds, rest = tonumber(s), after
    local fraction, tail = string.match(rest, '^[%.,](%d+)(.*)$')
    if fraction then seconds, rest = seconds + tonumber('0.' .. fraction), tail end
  end
  local offset = 0
  if rest ~= '' and rest ~= 'Z' then
    local sign, oh, om = string.match(rest, '^([%+%-])(%d%d):?(%d%d)$')
    if not sign then
      sign, oh = string.match(rest, '^([%+%-])(%d%d)$')
      om = '00'
    end
    if not sign then return nil end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == '+' and 1 or -1)
  end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo < 1 or mo > 12 or d < 1 or d > 31 then return nil end
  -- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  local days = era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + seconds - offset
end

-- The server's clock, in unix seconds.
local function server_now()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) + tonumber(clock[2]) / 1e6
end

-- Messages moved per delayed set in one step (the rest move at the next take).
local DUE_BATCH = 100

-- Move the messages of ``delayed_key`` due by ``now`` to the head of ``list_key`` (they
-- have waited their turn), earliest due nearest the head, at most DUE_BATCH; ring
-- ``bell_key`` (if any) once per moved message, keeping ``bell_cap`` rings. Each is pushed
-- before it leaves the set, in one script: no message is lost or moved twice, however many
-- consumers move at once. Returns how many moved.
local function move_due(delayed_key, list_key, bell_key, now, bell_cap)
  local due = redis.call('ZRANGEBYSCORE', delayed_key, '-inf', now, 'LIMIT', 0, DUE_BATCH)
  for n = #due, 1, -1 do
    redis.call('RPUSH', list_key, due[n])
    redis.call('ZREM', delayed_key, due[n])
  end
  if #due > 0 and bell_key then
    for _ = 1, math.min(#due, bell_cap) do redis.call('LPUSH', bell_key, 1) end
    redis.call('LTRIM', bell_key, 0, bell_cap - 1)
  end
  return #due
end

