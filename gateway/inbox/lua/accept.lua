-- One atomic step per citizen's message (one round trip; gateway.inbox.intake):
-- KEYS: idempotency, thread hash, thread messages, inbox stream; the notification job's
--       message hash and queue list (both NONE_KEY: no job; else dramatiq's private layout,
--       held by tests/integration/test_dramatiq_layout.py); the citizen's contact key; the
--       thread's claim key.
-- ARGV: result, ttl, city number, sealed sender, sender hash, queue, at, sealed text, message
--       id, provider, thread id, priority, rule, tags, job id, job data; the contact value the
--       message was routed with ("" for none); the console's index prefix (rediskeys.DESK_PREFIX:
--       `<prefix><queue>:<view>`) and its event channel (rediskeys.CONSOLE_EVENTS).
-- Returns {0, earlier result} for a duplicate; {2, contact} when the citizen's contact is not
-- the one routed with (nothing stored: route again with it); else {1, result}: stored and
-- notification queued, or nothing.
-- The console's indexes: the thread is open, unread and waiting (since its first unanswered
-- message) in its queue; a thread that moved queue leaves the old queue's sets; a closed one
-- is re-opened (and its still valid claim counted again). The event is published here, so
-- that it goes out exactly when the message is durable.
local earlier = redis.call('GET', KEYS[1])
if earlier then return {0, earlier} end
local contact = redis.call('GET', KEYS[7]) or ''
if contact ~= ARGV[17] then return {2, contact} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local tid, queue, at, p = ARGV[11], ARGV[6], ARGV[7], ARGV[18]
local old = redis.call('HMGET', KEYS[2], 'queue', 'closed_at', 'waiting_since')
redis.call('HSET', KEYS[2], 'to', ARGV[3], 'sender', ARGV[4], 'sender_hash', ARGV[5], 'queue', queue,
           'last_at', at, 'last_in_at', at, 'rule', ARGV[13], 'priority', ARGV[12], 'tags', ARGV[14],
           'preview', ARGV[8])
redis.call('HSETNX', KEYS[2], 'created_at', at)
local since = old[3] or at
if not old[3] then redis.call('HSET', KEYS[2], 'waiting_since', at) end
redis.call('HDEL', KEYS[2], 'closed_at', 'closed_by', 'outcome')  -- a new message re-opens a closed thread
redis.call('HINCRBY', KEYS[2], 'count', 1)
redis.call('XADD', KEYS[3], '*', 'dir', 'in', 'at', at, 'text', ARGV[8], 'message_id', ARGV[9],
           'provider', ARGV[10])
redis.call('XADD', KEYS[4], '*', 'thread', tid, 'at', at, 'priority', ARGV[12], 'rule', ARGV[13],
           'tags', ARGV[14], 'message_id', ARGV[9])
if KEYS[5] ~= KEYS[6] then
  redis.call('HSET', KEYS[5], ARGV[15], ARGV[16])
  redis.call('RPUSH', KEYS[6], ARGV[15])
end
local q = p .. queue .. ':'
local moved = old[1] and old[1] ~= queue
if moved then
  local o = p .. old[1] .. ':'
  for _, view in ipairs({'open', 'unread', 'waiting', 'claimed', 'closed'}) do redis.call('ZREM', o .. view, tid) end
  local holder = redis.call('GET', KEYS[8])
  if holder then redis.call('ZREM', o .. 'mine:' .. holder, tid) end
end
redis.call('ZADD', q .. 'open', at, tid)
redis.call('ZADD', q .. 'unread', at, tid)
redis.call('ZADD', q .. 'waiting', 'NX', since, tid)
if old[2] or moved then
  redis.call('ZREM', q .. 'closed', tid)
  local holder = redis.call('GET', KEYS[8])
  if holder then
    local now = redis.call('TIME')
    local expires = tonumber(now[1]) + redis.call('PTTL', KEYS[8]) / 1000
    redis.call('ZADD', q .. 'claimed', expires, tid)
    redis.call('ZADD', q .. 'mine:' .. holder, expires, tid)
  end
end
redis.call('PUBLISH', ARGV[19], cjson.encode({k = 'message', q = queue, t = tid, at = tonumber(at)}))
return {1, ARGV[1]}
