-- Staff close a thread (gateway.inbox.intake.Intake.close); a new message from the citizen
-- re-opens it (accept.lua clears the fields and indexes it again).
-- KEYS: thread hash, thread messages, claim key. ARGV: at, staff, outcome ("" for none), the
-- console's index prefix (rediskeys.DESK_PREFIX), its event channel, the event's detail
-- (Korean), thread id, how many closed threads the queue's 'closed' index keeps.
-- Returns 0: no such thread; 1: closed now; 2: it was closed already (a double click).
-- The thread leaves the queue's open/unread/waiting/claimed indexes (and its holder's 'mine')
-- and joins the bounded 'closed' one.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'closed_at') == 1 then return 2 end
local at, tid = ARGV[1], ARGV[7]
redis.call('HSET', KEYS[1], 'closed_at', at, 'closed_by', ARGV[2], 'outcome', ARGV[3])
redis.call('HDEL', KEYS[1], 'waiting_since')
local queue = redis.call('HGET', KEYS[1], 'queue') or ''
local q = ARGV[4] .. queue .. ':'
for _, view in ipairs({'open', 'unread', 'waiting', 'claimed'}) do redis.call('ZREM', q .. view, tid) end
local holder = redis.call('GET', KEYS[3])
if holder then redis.call('ZREM', q .. 'mine:' .. holder, tid) end
redis.call('ZADD', q .. 'closed', at, tid)
redis.call('ZREMRANGEBYRANK', q .. 'closed', 0, -1 - tonumber(ARGV[8]))
redis.call('XADD', KEYS[2], '*', 'dir', 'event', 'at', at, 'kind', 'close', 'staff', ARGV[2], 'detail', ARGV[6],
           'outcome', ARGV[3])
redis.call('PUBLISH', ARGV[5], cjson.encode({k = 'close', q = queue, t = tid, at = tonumber(at)}))
return 1
