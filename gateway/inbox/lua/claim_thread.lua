-- Staff claim a thread (KEYS: thread hash, claim key; ARGV: staff, ttl). Returns {0, ""}: no
-- such thread; {1, earlier holder or ""}: claimed by ARGV[1] (again: the same staff's double
-- click renews it); {2, holder}: someone else has it. One step, so two staff never both win.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local holder = redis.call('GET', KEYS[2])
if (not holder) or holder == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  return {1, holder or ''}
end
return {2, holder}
