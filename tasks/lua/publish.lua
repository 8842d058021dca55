-- Queue a message and ring its queue's doorbell in one step, at most once per task id
-- and retry number; a retry's message and its retry mark are written together
-- (tasks/transport.py, PUBLISH, which begins with tasks/lua/delayed.lib.lua). A message
-- whose eta is still to come by the server's clock goes to the list's delayed set
-- instead, byte for byte, in the same step (no ring: nothing is ready yet).
--
-- KEYS[1]  the queue list (kombu's, with its priority suffix) the message goes on
-- KEYS[2]  the queue's doorbell list (jobyard:bell:<queue>)
-- KEYS[3]  the list's delayed set (jobyard:delayed:<list>): message -> due time
-- KEYS[4]  optional, for a task message: the publish's marker (jobyard:published:<id>:<retry>)
-- KEYS[5]  optional, for a retry (retry number > 0): the job's retry mark (jobyard:retried:<id>)
--
-- ARGV[1]  the message, as kombu's Redis transport leaves it on a list
-- ARGV[2]  how many doorbell entries to keep
-- ARGV[3]  the marker's time to live (seconds)
-- ARGV[4]  the message's eta header (ISO 8601), or '' for none
-- ARGV[5]  with KEYS[5]: the message's retry number
-- ARGV[6]  with KEYS[5]: the retry mark's time to live (seconds)
--
-- A publisher whose reply was lost (Redis died just after executing this) retries the
-- publish; the marker, named by task id and retry number, makes that retry a no-op
-- instead of a second job. The retry mark makes older deliveries of the job stale; it
-- only ever rises, and it exists only if its retry was queued: an agent killed after
-- this script cannot leave a mark without its message.
--
-- The message's push (or its ZADD) is the first write: Redis does not undo a script's writes when a
-- later command fails, so a refused push leaves neither marker nor mark behind.
--
-- Returns 1 if queued, 0 if it was already.

local queue_key = KEYS[1]
local bell_key = KEYS[2]
local delayed_key = KEYS[3]
local marker_key = KEYS[4]
local mark_key = KEYS[5]
local message = ARGV[1]
local bell_cap = tonumber(ARGV[2])
local marker_ttl = ARGV[3]
local due = iso_seconds(ARGV[4])
local retry = tonumber(ARGV[5])
local mark_ttl = ARGV[6]

if marker_key and redis.call('EXISTS', marker_key) == 1 then
  return 0
end
if due and due > server_now() then
  redis.call('ZADD', delayed_key, due, message)
else
  redis.call('LPUSH', queue_key, message)
  redis.call('LPUSH', bell_key, 1)
  redis.call('LTRIM', bell_key, 0, bell_cap - 1)
end
if marker_key then
  redis.call('SET', marker_key, 1, 'EX', marker_ttl)
end
if mark_key then
  local sent = tonumber(redis.call('GET', mark_key))
  if not sent or retry > sent then
    redis.call('SET', mark_key, retry, 'EX', mark_ttl)
  end
end
return 1
