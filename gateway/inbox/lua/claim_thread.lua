-- Staff claim a thread (gateway.inbox.intake.Intake.claim).
-- KEYS: thread hash, claim key, thread messages. ARGV: staff, ttl, now (epoch), the console's
-- index prefix (rediskeys.DESK_PREFIX), its event channel, the event's detail (Korean), thread id.
-- Returns {0, ""}: no such thread; {1, earlier holder or ""}: claimed by ARGV[1] (again: the
-- same staff's double click renews it); {2, holder}: someone else has it. One step, so two
-- staff never both win. An open thread's claim is indexed for the console ('claimed' and the
-- holder's 'mine', score: the claim's expiry); a new claim is an event in the thread.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {2, holder} end
local staff, tid = ARGV[1], ARGV[7]
redis.call('SET', KEYS[2], staff, 'EX', ARGV[2])
local t = redis.call('HMGET', KEYS[1], 'queue', 'closed_at')
if t[1] and not t[2] then
  local q = ARGV[4] .. t[1] .. ':'
  local expires = tonumber(ARGV[3]) + tonumber(ARGV[2])
  -- (claims that expired without a close or release: pruned here, where they accumulate)
  redis.call('ZREMRANGEBYSCORE', q .. 'claimed', '-inf', ARGV[3])
  redis.call('ZREMRANGEBYSCORE', q .. 'mine:' .. staff, '-inf', ARGV[3])
  redis.call('ZADD', q .. 'claimed', expires, tid)
  redis.call('ZADD', q .. 'mine:' .. staff, expires, tid)
end
if not holder then
  redis.call('XADD', KEYS[3], '*', 'dir', 'event', 'at', ARGV[3], 'kind', 'claim', 'staff', staff, 'detail', ARGV[6])
  redis.call('PUBLISH', ARGV[5], cjson.encode({k = 'claim', q = t[1] or '', t = tid, at = tonumber(ARGV[3])}))
end
return {1, holder or ''}
