-- Delivery state only moves forward (reports arrive out of order). KEYS: state hash
-- (gw:msg:<provider>:<reference>). ARGV: new rank, new status, at, detail.
-- Returns 'updated', 'stale' or 'unknown'.
if redis.call('EXISTS', KEYS[1]) == 0 then return 'unknown' end
local rank = tonumber(redis.call('HGET', KEYS[1], 'rank') or '0')
if tonumber(ARGV[1]) <= rank then return 'stale' end
redis.call('HSET', KEYS[1], 'rank', ARGV[1], 'status', ARGV[2], 'at', ARGV[3], 'detail', ARGV[4])
return 'updated'
