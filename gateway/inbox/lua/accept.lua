-- One atomic step per citizen's message (one round trip; gateway.inbox.intake):
-- KEYS: idempotency, thread hash, thread messages, inbox stream; the notification job's
--       message hash and queue list (both NONE_KEY: no job; else dramatiq's private layout,
--       held by tests/integration/test_dramatiq_layout.py); the citizen's contact key.
-- ARGV: result, ttl, city number, sealed sender, sender hash, queue, at, sealed text, message
--       id, provider, thread id, priority, rule, tags, job id, job data; the contact value the
--       message was routed with ("" for none).
-- Returns {0, earlier result} for a duplicate; {2, contact} when the citizen's contact is not
-- the one routed with (nothing stored: route again with it); else {1, result}: stored and
-- notification queued, or nothing.
local earlier = redis.call('GET', KEYS[1])
if earlier then return {0, earlier} end
local contact = redis.call('GET', KEYS[7]) or ''
if contact ~= ARGV[17] then return {2, contact} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('HSET', KEYS[2], 'to', ARGV[3], 'sender', ARGV[4], 'sender_hash', ARGV[5], 'queue', ARGV[6],
           'last_at', ARGV[7])
redis.call('HSETNX', KEYS[2], 'created_at', ARGV[7])
redis.call('HDEL', KEYS[2], 'closed_at', 'closed_by')  -- a new message re-opens a closed thread
redis.call('HINCRBY', KEYS[2], 'count', 1)
redis.call('XADD', KEYS[3], '*', 'dir', 'in', 'at', ARGV[7], 'text', ARGV[8], 'message_id', ARGV[9],
           'provider', ARGV[10])
redis.call('XADD', KEYS[4], '*', 'thread', ARGV[11], 'at', ARGV[7], 'priority', ARGV[12], 'rule', ARGV[13],
           'tags', ARGV[14], 'message_id', ARGV[9])
if KEYS[5] ~= KEYS[6] then
  redis.call('HSET', KEYS[5], ARGV[15], ARGV[16])
  redis.call('RPUSH', KEYS[6], ARGV[15])
end
return {1, ARGV[1]}
