-- The staff console's steps on a thread (gateway.inbox.intake.Intake.desk_step, used by
-- gateway.inbox.desk.Desk and Intake.reply), each one atomic with the queue's indexes.
-- KEYS: thread hash, thread messages, claim key.
-- ARGV: op, the console's index prefix (rediskeys.DESK_PREFIX: `<prefix><queue>:<view>`), its
--       event channel, at (epoch), staff, thread id, then the op's own:
--   read                                   the thread leaves the queue's 'unread'
--   handover  to, force ("1"/"0"), ttl, detail   the holder (or an admin: force) hands it on
--   release   force, detail                the holder gives it up
--   note      sealed text                  a private note (never sent)
--   tags      add, remove (comma lists), max, detail   the staff tags
--   answered                               a staff answer was queued: no longer waiting
-- Returns {0, ''}: no such thread; {2, holder or tags}: refused (someone else holds it; too
-- many tags); {1, value}: done (the earlier holder, the note's entry id, the new tags).
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local op, p, channel, at, staff, tid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local t = redis.call('HMGET', KEYS[1], 'queue', 'closed_at')
local queue = t[1] or ''
local q = p .. queue .. ':'
local function event(kind)
  redis.call('PUBLISH', channel, cjson.encode({k = kind, q = queue, t = tid, at = tonumber(at)}))
end
local function entry(kind, detail, ...)
  return redis.call('XADD', KEYS[2], '*', 'dir', 'event', 'at', at, 'kind', kind, 'staff', staff, 'detail', detail, ...)
end
local value = ''
if op == 'read' then
  value = tostring(redis.call('ZREM', q .. 'unread', tid))
  event('read')
elseif op == 'handover' then
  local to, force, ttl = ARGV[7], ARGV[8], ARGV[9]
  local holder = redis.call('GET', KEYS[3])
  if holder ~= staff and force ~= '1' then return {2, holder or ''} end
  redis.call('SET', KEYS[3], to, 'EX', ttl)
  if holder then redis.call('ZREM', q .. 'mine:' .. holder, tid) end
  if not t[2] then
    local expires = tonumber(at) + tonumber(ttl)
    redis.call('ZADD', q .. 'claimed', expires, tid)
    redis.call('ZADD', q .. 'mine:' .. to, expires, tid)
  end
  entry('handover', ARGV[10], 'to', to)
  event('handover')
  value = holder or ''
elseif op == 'release' then
  local holder = redis.call('GET', KEYS[3])
  if not holder then return {1, ''} end
  if holder ~= staff and ARGV[7] ~= '1' then return {2, holder} end
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', q .. 'claimed', tid)
  redis.call('ZREM', q .. 'mine:' .. holder, tid)
  entry('release', ARGV[8])
  event('release')
  value = holder
elseif op == 'note' then
  value = redis.call('XADD', KEYS[2], '*', 'dir', 'note', 'at', at, 'staff', staff, 'text', ARGV[7])
  event('note')
elseif op == 'tags' then
  local tags, seen = {}, {}
  local remove = {}
  for tag in string.gmatch(ARGV[8], '[^,]+') do remove[tag] = true end
  local function keep(tag)
    if not seen[tag] and not remove[tag] then
      seen[tag] = true
      tags[#tags + 1] = tag
    end
  end
  for tag in string.gmatch(redis.call('HGET', KEYS[1], 'staff_tags') or '', '[^,]+') do keep(tag) end
  for tag in string.gmatch(ARGV[7], '[^,]+') do keep(tag) end
  value = table.concat(tags, ',')
  if #tags > tonumber(ARGV[9]) then return {2, value} end
  redis.call('HSET', KEYS[1], 'staff_tags', value)
  entry('tags', ARGV[10])
  event('tag')
elseif op == 'answered' then
  redis.call('HSET', KEYS[1], 'answered_at', at, 'last_at', at)
  redis.call('HDEL', KEYS[1], 'waiting_since')
  redis.call('ZREM', q .. 'waiting', tid)
  redis.call('ZADD', q .. 'open', 'XX', at, tid)
  event('reply')
else
  return redis.error_reply('unknown desk op ' .. op)
end
return {1, value}
