-- Staff close a thread (gateway.inbox.intake.Intake.close); a new message from the citizen
-- re-opens it (accept.lua clears the fields).
-- KEYS: thread hash. ARGV: at, staff.
-- Returns 0: no such thread; 1: closed now; 2: it was closed already (a double click).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'closed_at') == 1 then return 2 end
redis.call('HSET', KEYS[1], 'closed_at', ARGV[1], 'closed_by', ARGV[2])
return 1
