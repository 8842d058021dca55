-- Take one message from a consumer's queue lists and record it as unacknowledged,
-- in one atomic step (executor/take.py, TAKE).
--
-- KEYS[1]                          kombu's unacked hash: delivery tag -> [payload, exchange, routing key]
-- KEYS[2]                          kombu's unacked index (zset): delivery tag -> lease (taken at)
-- KEYS[3]                          jobyard:skipped (zset): delivery tag -> when it was first passed over
-- KEYS[4 .. 3 + lists]             the queue lists, in the order to look at them (priority, then queue)
-- KEYS[4 + lists .. 3 + 2 * lists] per list, its queue's reservations hash (jobyard:reserve:<queue>):
--                                  delivery tag -> "<holder> <when the holder last saw it>"
-- KEYS[4 + 2 * lists ..]           the consumer's queues' doorbells (jobyard:bell:<queue>)
--
-- ARGV[1]   now: kombu scores the unacked index with the consumer's clock
-- ARGV[2]   lists: how many queue lists KEYS holds
-- ARGV[3]   look-ahead: messages looked at per list, oldest first (0: take the oldest, unsized)
-- ARGV[4]   free cpus of this host
-- ARGV[5]   free memory of this host (bytes)
-- ARGV[6]   this host's cpus
-- ARGV[7]   this host's memory (bytes)
-- ARGV[8]   the backfill bound: seconds a message may be passed over before a host reserves for it
-- ARGV[9]   the header holding a message's spec ({cpus, memory, retry_memory_max, ...})
-- ARGV[10]  the header holding a retry's memory scale factor
-- ARGV[11]  this consumer's host name: who holds the reservations it makes
-- ARGV[12]  the agent state key prefix: a holder is alive while <prefix><holder> exists
-- ARGV[13]  how long a reservation lives without its holder seeing the message (seconds)
-- ARGV[14]  JSON array, one entry per list: {"cpus", "memory"} of the largest host serving its
--           queue and "reserving", how many hosts may hold a reservation in it at once
--
-- Returns {list key, raw item, delivery tag or false} for a message taken; false (nil)
-- when every list is empty, after deleting the queues' doorbells; 0 when nothing within
-- the look-ahead fits the free capacity; 1 when this host is reserved for a message that
-- could run here and has been passed over for longer than the bound, so it takes nothing
-- until that one fits. Taken, in this order: a message the script cannot size (the
-- consumer screens it), one larger than every host (the consumer rejects it), one that
-- fits the free capacity. The record is kombu's own [payload, exchange, routing_key] with
-- the payload's text kept byte for byte, written before the removal: Redis does not roll a
-- failed script back, and on a full noeviction server the record is what fails.
--
-- Reservations: a passed-over message past the bound is reserved by the first host that
-- could run it and looks at it then, unless that host already holds a reservation in the
-- queue or the queue has as many live ones as it may. Other hosts keep backfilling around
-- it. A reservation is live while its holder's state key exists and the holder saw the
-- message within the reservation's lifetime.

local unacked_key = KEYS[1]
local unacked_index_key = KEYS[2]
local skipped_key = KEYS[3]
local now = tonumber(ARGV[1])
local lists = tonumber(ARGV[2])
local depth = tonumber(ARGV[3])
local free_cpus = tonumber(ARGV[4])
local free_memory = tonumber(ARGV[5])
local host_cpus = tonumber(ARGV[6])
local host_memory = tonumber(ARGV[7])
local bound = tonumber(ARGV[8])
local spec_header = ARGV[9]
local scale_header = ARGV[10]
local me = ARGV[11]
local agents = ARGV[12]
local lifetime = tonumber(ARGV[13])
local per_list = cjson.decode(ARGV[14])
local list_keys = {unpack(KEYS, 4, 3 + lists)}
local reservation_keys = {unpack(KEYS, 4 + lists, 3 + 2 * lists)}
local bell_keys = {unpack(KEYS, 4 + 2 * lists)}

local function take(i, index, item, message)
  local key = list_keys[i]
  local tag = false
  if type(message) == 'table' and type(message.properties) == 'table' then
    local properties = message.properties
    local info = properties.delivery_info
    if type(properties.delivery_tag) == 'string' and type(info) == 'table'
        and type(info.exchange) == 'string' and type(info.routing_key) == 'string' then
      tag = properties.delivery_tag
      redis.call('HSET', unacked_key, tag,
        '[' .. item .. ',' .. cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
      redis.call('ZADD', unacked_index_key, now, tag)
      redis.call('ZREM', skipped_key, tag)
      redis.call('HDEL', reservation_keys[i], tag)
    end
  end
  if index == -1 then
    redis.call('RPOP', key)
  else
    redis.call('LSET', key, index, '__jobyard_taking__')
    redis.call('LREM', key, -1, '__jobyard_taking__')
  end
  return {key, item, tag}
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
local seen = false
for i = 1, lists do
  local key = list_keys[i]
  local largest = per_list[i]
  local items = redis.call('LRANGE', key, -math.max(depth, 1), -1)
  local count = #items
  for n = count, 1, -1 do
    seen = true
    local item, index = items[n], n - count - 1
    local ok, message = pcall(cjson.decode, item)
    if not ok then message = nil end
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
    local tag = type(message.properties) == 'table' and message.properties.delivery_tag
    if cpus <= host_cpus + 1e-9 and memory <= host_memory and type(tag) == 'string' then
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
  end
end
if not seen then
  for _, bell in ipairs(bell_keys) do
    redis.call('DEL', bell)
  end
  return false
end
return 0
