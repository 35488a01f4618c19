-- The outbox guard as Lua functions over a key table K and an argument table A
-- (RedisOutboxStore.claim_call builds them); gateway.outbox.store appends
-- "return claim_then(KEYS, ARGV)" to make the claim script.
-- K: opt-out, dedupe, rate, cap, no-lettering-device flag (the last two may be the unused
--    NONE key), NONE; then optionally the job's message hash, its queue list and a stream
--    (NONE: no entry).
-- A: dedupe ttl ms, rate limit, window s, claim value, cap ttl ms; then the job's redis
--    message id and data, then the stream entry's field/value pairs.
-- A claim value starting "lease:" is a lease (see RedisOutboxStore.settle): a clash with it
-- answers 'leased'. When admitted and K[7] is given, the job is put where dramatiq's broker
-- puts it (HSET <ns>:<queue>.msgs id data, RPUSH <ns>:<queue> id: dramatiq's private layout,
-- held by tests/integration/test_dramatiq_layout.py), and the stream entry added, in the
-- same step: a message is admitted and queued, or neither.
local function claim(K, A)
  if redis.call('EXISTS', K[1]) == 1 then return 'opted_out' end
  if not redis.call('SET', K[2], A[4], 'NX', 'PX', A[1]) then
    local held = redis.call('GET', K[2])
    if held and string.sub(held, 1, 6) == 'lease:' then return 'leased' end
    return 'duplicate'
  end
  if K[4] ~= K[6] then
    if not redis.call('SET', K[4], A[4], 'NX', 'PX', A[5]) then return 'capped' end
  end
  local limit = tonumber(A[2])
  if limit > 0 then
    local n = redis.call('INCR', K[3])
    if n == 1 then redis.call('EXPIRE', K[3], A[3]) end
    if n > limit then return 'rate_limited' end
  end
  if K[5] ~= K[6] and redis.call('EXISTS', K[5]) == 1 then return 'ok_no_lettering' end
  return 'ok'
end
local function claim_then(K, A)
  local verdict = claim(K, A)
  if K[7] and (verdict == 'ok' or verdict == 'ok_no_lettering') then
    redis.call('HSET', K[7], A[6], A[7])
    redis.call('RPUSH', K[8], A[6])
    if K[9] ~= K[6] then redis.call('XADD', K[9], '*', unpack(A, 8)) end
  end
  return verdict
end
-- A lettering claim tied to the claiming gateway's liveness (RedisOutboxStore.claim_lease):
-- K as `claim`; A as `claim` (A[4] 'lease:<epoch>:<instance>'), then A[6] the liveness key
-- prefix (gw:alive:, + instance = that gateway's heartbeat), A[7] 'claim' or 'peek'.
-- 'claim' answers as `claim`, except on a lease held by another instance: 'leased:<ms>' while
-- its heartbeat lives (<ms> more unless renewed), or, once the heartbeat is gone (the gateway
-- died or is stopped), the lease is ours: 'taken_over' / 'taken_over_no_lettering'. The rate
-- limit is not counted again (the dead owner's claim counted it). A lease with no instance
-- (an earlier release) stays 'leased' until it lapses.
-- 'peek' writes nothing: 'duplicate' (settled or final), 'leased' (a live owner's lease) or
-- 'owner_died' (a lease whose owner's heartbeat is gone, or a lease that lapsed).
-- The heartbeat key is built here from the owner named in the value, not passed in KEYS:
-- fine on a single primary (Sentinel), not on Redis Cluster (never supported, see the runbook).
local function lease_owner(held)
  if not held then return nil end
  return string.match(held, '^lease:[^:]*:(.+)$')
end
local function claim_lease(K, A)
  if A[7] == 'peek' then
    local held = redis.call('GET', K[2])
    if not held then return 'owner_died' end
    if string.sub(held, 1, 6) ~= 'lease:' then return 'duplicate' end
    local owner = lease_owner(held)
    if owner and redis.call('EXISTS', A[6] .. owner) == 0 then return 'owner_died' end
    return 'leased'
  end
  local verdict = claim(K, A)
  if verdict ~= 'leased' then return verdict end
  local owner = lease_owner(redis.call('GET', K[2]))
  if not owner then return verdict end
  local ttl = redis.call('PTTL', A[6] .. owner)
  if ttl == -1 then return 'leased:250' end
  if ttl >= 0 then return 'leased:' .. ttl end
  redis.call('SET', K[2], A[4], 'PX', A[1])
  if K[5] ~= K[6] and redis.call('EXISTS', K[5]) == 1 then return 'taken_over_no_lettering' end
  return 'taken_over'
end
