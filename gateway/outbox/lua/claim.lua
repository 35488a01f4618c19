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
