-- Take one message from a consumer's queue lists and record it as unacknowledged,
-- in one atomic step (executor/take.py, TAKE, which begins with tasks/lua/delayed.lib.lua).
-- First, each list's delayed messages that are due by the server's clock move to the head
-- of the list, ringing its queue's doorbell; a message on a list whose eta is still to
-- come (a plain kombu or older publisher, kombu's lease sweep) moves to the list's delayed
-- set instead of being taken, byte for byte: no agent ever holds a job waiting its eta.
--
-- KEYS[1]                          kombu's unacked hash: delivery tag -> [payload, exchange, routing key]
-- KEYS[2]                          kombu's unacked index (zset): delivery tag -> lease (taken at,
--                                  by the server's clock, as renewals and the sweep are)
-- KEYS[3]                          jobyard:skipped (zset): delivery tag -> when it was first passed over
-- KEYS[4]                          jobyard:rejected (capped list): what the take set aside, newest first
-- KEYS[5 .. 4 + lists]             the queue lists, in the order to look at them (priority, then queue)
-- KEYS[5 + lists .. 4 + 2 * lists] per list, its queue's reservations hash (jobyard:reserve:<queue>):
--                                  delivery tag -> "<holder> <when the holder last saw it>"
-- KEYS[5 + 2 * lists .. 4 + 3 * lists] per list, its delayed set (jobyard:delayed:<list>):
--                                  message -> due time (unix seconds)
-- KEYS[5 + 3 * lists ..]           the consumer's queues' doorbells (jobyard:bell:<queue>)
--
-- ARGV[1]   lists: how many queue lists KEYS holds
-- ARGV[2]   look-ahead: messages looked at per list, oldest first (0: take the oldest, unsized)
-- ARGV[3]   free cpus of this host
-- ARGV[4]   free memory of this host (bytes)
-- ARGV[5]   this host's cpus
-- ARGV[6]   this host's memory (bytes)
-- ARGV[7]   the backfill bound: seconds a message may be passed over before a host reserves for it
-- ARGV[8]   the header holding a message's spec ({cpus, memory, retry_memory_max, ...})
-- ARGV[9]   the header holding a retry's memory scale factor
-- ARGV[10]  this consumer's host name: who holds the reservations it makes
-- ARGV[11]  the agent state key prefix: a holder is alive while <prefix><holder> exists
-- ARGV[12]  how long a reservation lives without its holder seeing the message (seconds)
-- ARGV[13]  JSON array, one entry per list: {"cpus", "memory"} of the largest host serving its
--           queue, "reserving", how many hosts may hold a reservation in it at once, "queue",
--           and "bell", the index of its queue's doorbell among the doorbell KEYS (or none)
-- ARGV[14]  JSON object, how to set aside what is not a message (tasks.records.RejectedMessage):
--           {"cap": largest item taken (bytes), "host": who sets aside (or null), "kept": entries
--           the rejected list keeps, "ttl": its TTL (seconds), "sample": bytes of an item kept}
-- ARGV[15]  how many doorbell entries to keep
--
-- Returns {list key, raw item, delivery tag} for a message taken (always recorded); {list
-- key, false, false, reason, size} for an item set aside: oversized, not JSON, or not
-- kombu's envelope (a delivery tag and delivery info), removed from its list and pushed to
-- the rejected list in this same script; false (nil) when every list is empty, after
-- deleting the queues' doorbells, or, if a delayed message waits in one of the lists' sets, the
-- seconds until the first is due (a string: the consumer waits on doorbells no longer); 0 when nothing within the look-ahead fits the free
-- capacity; 1 when this host is reserved for a message that could run here and has been
-- passed over for longer than the bound, so it takes nothing until that one fits. Taken or
-- set aside, in this order: an item that is not a message (set aside), a message the script
-- cannot size (the consumer screens it), one larger than every host (the consumer rejects
-- it), one that fits the free capacity. cjson refuses a lone surrogate escape (\ud800) that
-- Python's JSON reads: such a message is read from a copy with the escape replaced, and
-- recorded as its original text. The record is kombu's own [payload, exchange, routing_key]
-- with the payload's text kept byte for byte, written before the removal (as a set-aside
-- entry is): Redis does not roll a failed script back, and on a full noeviction server the
-- record is what fails.
--
-- Reservations: a passed-over message past the bound is reserved by the first host that
-- could run it and looks at it then, unless that host already holds a reservation in the
-- queue or the queue has as many live ones as it may. Other hosts keep backfilling around
-- it. A reservation is live while its holder's state key exists and the holder saw the
-- message within the reservation's lifetime.

local unacked_key = KEYS[1]
local unacked_index_key = KEYS[2]
local skipped_key = KEYS[3]
local rejected_key = KEYS[4]
local lists = tonumber(ARGV[1])
local depth = tonumber(ARGV[2])
local free_cpus = tonumber(ARGV[3])
local free_memory = tonumber(ARGV[4])
local host_cpus = tonumber(ARGV[5])
local host_memory = tonumber(ARGV[6])
local bound = tonumber(ARGV[7])
local spec_header = ARGV[8]
local scale_header = ARGV[9]
local me = ARGV[10]
local agents = ARGV[11]
local lifetime = tonumber(ARGV[12])
local per_list = cjson.decode(ARGV[13])
local aside = cjson.decode(ARGV[14])
local bell_cap = tonumber(ARGV[15])
local list_keys = {unpack(KEYS, 5, 4 + lists)}
local reservation_keys = {unpack(KEYS, 5 + lists, 4 + 2 * lists)}
local delayed_keys = {unpack(KEYS, 5 + 2 * lists, 4 + 3 * lists)}
local bell_keys = {unpack(KEYS, 5 + 3 * lists)}
-- The server's clock, not the consumer's: lease scores (the unacked index), first-skipped
-- times, reservations and due times are compared with other hosts' (executor.channel.TakingQoS).
local now = server_now()
local REPLACEMENT = '\239\191\189'  -- U+FFFD in UTF-8
local UNSIZED_WINDOW = 16  -- messages an unsized take looks at, past those it defers

local function remove(i, index)
  local key = list_keys[i]
  if index == -1 then
    redis.call('RPOP', key)
  else
    redis.call('LSET', key, index, '__jobyard_taking__')
    redis.call('LREM', key, -1, '__jobyard_taking__')
  end
end
local function take(i, index, item, message)
  local info = message.properties.delivery_info
  local tag = message.properties.delivery_tag
  redis.call('HSET', unacked_key, tag,
    '[' .. item .. ',' .. cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
  redis.call('ZADD', unacked_index_key, now, tag)
  redis.call('ZREM', skipped_key, tag)
  redis.call('HDEL', reservation_keys[i], tag)
  remove(i, index)
  return {list_keys[i], item, tag}
end

local function is_utf8(s)
  if not string.find(s, '[\128-\255]') then return true end
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local extra, low, high = 0, 128, 191
    if c < 128 then extra = 0
    elseif c >= 194 and c <= 223 then extra = 1
    elseif c >= 224 and c <= 239 then
      extra = 2
      if c == 224 then low = 160 elseif c == 237 then high = 159 end
    elseif c >= 240 and c <= 244 then
      extra = 3
      if c == 240 then low = 144 elseif c == 244 then high = 143 end
    else return false end
    for k = i + 1, i + extra do
      local b = string.byte(s, k)
      if not b or b < low or b > high then return false end
      low, high = 128, 191
    end
    i = i + extra + 1
  end
  return true
end
local BASE64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = string.byte(s, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = {}
    for k = 3, 0, -1 do
      local v = math.floor(n / 64 ^ k) % 64
      chars[#chars + 1] = string.sub(BASE64, v + 1, v + 1)
    end
    if not b then chars[3], chars[4] = '=', '=' elseif not c then chars[4] = '=' end
    out[#out + 1] = table.concat(chars)
  end
  return table.concat(out)
end
local KINDS = {['['] = 'list', ['"'] = 'str', t = 'bool', f = 'bool', n = 'NoneType'}
local function problem_of(item, message)
  local first = string.match(item, '^%s*(.)')
  if type(message) ~= 'table' or first ~= '{' then
    return 'envelope is a JSON ' .. (KINDS[first] or 'number') .. ', not an object'
  end
  local properties = message.properties
  if type(properties) ~= 'table' then return 'envelope has no properties object' end
  local tag = properties.delivery_tag
  if type(tag) ~= 'string' or #tag == 0 or #tag > 200 then return 'envelope has no delivery_tag string' end
  local info = properties.delivery_info
  if type(info) ~= 'table' or type(info.exchange) ~= 'string' or type(info.routing_key) ~= 'string' then
    return 'envelope has no delivery_info with exchange and routing_key'
  end
  return nil
end
-- The message in ``item``, or nil and why it is not one.
local function read(item)
  if #item > aside.cap then
    return nil, string.format('oversized: %d bytes, over the %d-byte cap', #item, aside.cap)
  end
  local ok, message = pcall(cjson.decode, item)
  local lossy = false
  if not ok then
    local copy, replaced = string.gsub(item, '\\u[dD][89abcdefABCDEF]%x%x', '\\ufffd')
    local err = message
    if replaced > 0 then ok, message = pcall(cjson.decode, copy) end
    if not ok then
      return nil, is_utf8(item) and ('not JSON: ' .. tostring(err)) or 'not UTF-8 text'
    end
    lossy = true
  end
  local problem = problem_of(item, message)
  if problem then return nil, problem end
  local properties = message.properties
  if lossy and (string.find(properties.delivery_tag, REPLACEMENT, 1, true)
      or string.find(properties.delivery_info.exchange, REPLACEMENT, 1, true)
      or string.find(properties.delivery_info.routing_key, REPLACEMENT, 1, true)) then
    return nil, 'envelope names hold a surrogate escape'
  end
  return message, nil
end
local function set_aside(i, index, item, reason)
  local sample = string.sub(item, 1, aside.sample)
  local encoding, shown = 'utf-8', sample
  if not is_utf8(sample) then encoding, shown = 'base64', base64(sample) end
  redis.call('LPUSH', rejected_key, cjson.encode({
    reason = reason, queue = per_list[i].queue, host = aside.host, at = now,
    size = #item, truncated = #item > aside.sample, raw_encoding = encoding, raw = shown}))
  redis.call('LTRIM', rejected_key, 0, aside.kept - 1)
  redis.call('EXPIRE', rejected_key, aside.ttl)
  remove(i, index)
  return {list_keys[i], false, false, reason, #item}
end
local function holder_of(entry)
  if not entry then return nil end
  local holder, seen = string.match(entry, '^(.*) ([^ ]+)$')
  if holder and now - tonumber(seen) < lifetime and redis.call('EXISTS', agents .. holder) == 1 then
    return holder
  end
  return nil
end
local function reserve(reservations, tag, cap)
  local entries = redis.call('HGETALL', reservations)
  local live = 0
  for n = 1, #entries, 2 do
    local holder = holder_of(entries[n + 1])
    if holder == me then return false end
    if holder then live = live + 1 else redis.call('HDEL', reservations, entries[n]) end
  end
  if live >= cap then return false end
  redis.call('HSET', reservations, tag, me .. ' ' .. now)
  return true
end
local function bell_of(i)
  local bell = per_list[i].bell
  return type(bell) == 'number' and bell_keys[bell + 1] or nil
end
-- The message's due time if its eta is still to come, else nil.
local function waiting(message)
  local headers = message.headers
  local due = type(headers) == 'table' and iso_seconds(headers.eta)
  if due and due > now then return due end
  return nil
end
local function defer(i, index, item, due)
  redis.call('ZADD', delayed_keys[i], due, item)
  remove(i, index)
end
-- Take the message at ``index`` of list ``i`` if it fits (or must go to the consumer);
-- 1 if this host is reserved for it; nil to look at the next one.
local function consider(i, index, item, message)
  local largest = per_list[i]
  if depth == 0 then return take(i, index, item, message) end
  local headers = type(message) == 'table' and message.headers
  local spec = type(headers) == 'table' and headers[spec_header]
  if type(spec) ~= 'table' or type(spec.cpus) ~= 'number' or type(spec.memory) ~= 'number' then
    return take(i, index, item, message)
  end
  local cpus, memory = spec.cpus, spec.memory
  local scale = tonumber(headers[scale_header])
  if scale and scale > 1 then
    memory = math.min(math.floor(memory * scale), tonumber(spec.retry_memory_max) or memory * 1024)
  end
  if cpus > largest.cpus + 1e-9 or memory > largest.memory then
    return take(i, index, item, message)
  end
  if cpus <= free_cpus + 1e-9 and memory <= free_memory then
    return take(i, index, item, message)
  end
  local tag = message.properties.delivery_tag
  if cpus <= host_cpus + 1e-9 and memory <= host_memory then
    local first = tonumber(redis.call('ZSCORE', skipped_key, tag))
    if not first then
      redis.call('ZREMRANGEBYSCORE', skipped_key, '-inf', now - 86400)
      redis.call('ZADD', skipped_key, now, tag)
      first = now
    end
    local reservations = reservation_keys[i]
    local holder = holder_of(redis.call('HGET', reservations, tag))
    if holder == me then
      redis.call('HSET', reservations, tag, me .. ' ' .. now)
      return 1
    end
    if not holder and now - first >= bound and reserve(reservations, tag, largest.reserving) then
      return 1
    end
  end
  return nil
end

for i = 1, lists do
  move_due(delayed_keys[i], list_keys[i], bell_of(i), now, bell_cap)
end
local seen = false
for i = 1, lists do
  -- An unsized take (depth 0) takes the oldest message, past those it defers.
  local items = redis.call('LRANGE', list_keys[i], -(depth > 0 and depth or UNSIZED_WINDOW), -1)
  local count = #items
  local removed = 0  -- messages deferred so far: each shifts the indices of those left of it
  for n = count, 1, -1 do
    local item, index = items[n], n - count - 1 + removed
    local message, problem = read(item)
    if problem then return set_aside(i, index, item, problem) end
    local due = waiting(message)
    if due then
      defer(i, index, item, due)
      removed = removed + 1
    else
      seen = true
      local result = consider(i, index, item, message)
      if result ~= nil then return result end
    end
  end
end
if not seen then
  for _, bell in ipairs(bell_keys) do
    redis.call('DEL', bell)
  end
  local next_due
  for _, key in ipairs(delayed_keys) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local due = tonumber(first[2])
    if due and (not next_due or due < next_due) then next_due = due end
  end
  if next_due then return tostring(math.max(next_due - now, 0)) end
  return false
end
return 0
