-- Queue a message and ring its queue's doorbell in one step, at most once per task id
-- and retry number (tasks/transport.py, PUBLISH).
--
-- KEYS[1]  the queue list (kombu's, with its priority suffix) the message goes on
-- KEYS[2]  the queue's doorbell list (jobyard:bell:<queue>)
-- KEYS[3]  optional, for a task message: the publish's marker (jobyard:published:<id>:<retry>)
--
-- ARGV[1]  the message, as kombu's Redis transport leaves it on a list
-- ARGV[2]  how many doorbell entries to keep
-- ARGV[3]  the marker's time to live (seconds)
--
-- A publisher whose reply was lost (Redis died just after executing this) retries the
-- publish; the marker, named by task id and retry number, makes that retry a no-op
-- instead of a second job.
--
-- Returns 1 if queued, 0 if it was already.

local queue_key = KEYS[1]
local bell_key = KEYS[2]
local marker_key = KEYS[3]
local message = ARGV[1]
local bell_cap = tonumber(ARGV[2])
local marker_ttl = ARGV[3]

if marker_key and not redis.call('SET', marker_key, 1, 'NX', 'EX', marker_ttl) then
  return 0
end
redis.call('LPUSH', queue_key, message)
redis.call('LPUSH', bell_key, 1)
redis.call('LTRIM', bell_key, 0, bell_cap - 1)
return 1
