"""The retention purge of what Redis keeps without a TTL: citizens' threads, the staff inboxes'
streams and the two audit streams (`gateway.infra.rediskeys` says who writes each).

- threads (`gw:thread:<tid>` hash + `gw:thread:<tid>:msgs` stream): found by SCAN (MATCH, COUNT;
  never KEYS, which would stall Redis on a city's keyspace); a thread whose last activity (the
  latest of the hash's `last_at`, the citizen's last message, its `closed_at`, and the `at` of
  the stream's newest entry, e.g. a staff reply) is before the messages' cutoff goes, both keys
  at once. The check and the delete are one Lua step per batch, so a message accepted into a
  thread between a read and a delete is never destroyed with it.
- inboxes (`gw:inbox:<queue>`): XTRIM MINID to the messages' cutoff (a stream id is the
  millisecond the entry was added).
- `gw:optout:audit` (consent changes) and `gw:audit` (the guard's decisions): XTRIM MINID to
  the consent and access cutoffs.

A dry run counts the same things with the same tests and deletes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.domain.retention import Cutoffs, PurgeCount
from gateway.infra.rediskeys import (
    AUDIT_STREAM,
    DESK_PREFIX,
    OPTOUT_AUDIT,
    inbox_key,
    thread_key,
    thread_messages_key,
)

# KEYS: (thread hash, its messages stream) pairs; ARGV[1]: the cutoff (epoch seconds); ARGV[2]:
# "1" to count only (dry run); ARGV[3]: the console's index prefix (rediskeys.DESK_PREFIX), ARGV[4]:
# the length of a thread hash key's prefix (the thread id follows it). A purged thread also
# leaves its queue's console indexes (a 'mine' entry expires with its claim). Returns how many
# threads are (or would be) gone. A thread with no time at all is kept: what cannot be dated is
# not destroyed by a guess. UNLINK frees the memory off Redis's main thread. (Inline rather
# than a lua/ file: short, and read once; a file would need a package-data glob for
# gateway/records/lua.)
_PURGE_THREADS = """
local cutoff = tonumber(ARGV[1])
local gone = 0
for i = 1, #KEYS, 2 do
  local last
  for _, v in ipairs(redis.call('HMGET', KEYS[i], 'last_at', 'closed_at')) do
    local at = tonumber(v or '')
    if at and (not last or at > last) then last = at end
  end
  local newest = redis.call('XREVRANGE', KEYS[i + 1], '+', '-', 'COUNT', 1)[1]
  if newest then
    local f = newest[2]
    for j = 1, #f, 2 do
      if f[j] == 'at' then
        local at = tonumber(f[j + 1])
        if at and (not last or at > last) then last = at end
      end
    end
  end
  if last and last < cutoff then
    gone = gone + 1
    if ARGV[2] ~= '1' then
      local queue = redis.call('HGET', KEYS[i], 'queue')
      if queue then
        local tid = string.sub(KEYS[i], tonumber(ARGV[4]) + 1)
        for _, view in ipairs({'open', 'unread', 'waiting', 'claimed', 'closed'}) do
          redis.call('ZREM', ARGV[3] .. queue .. ':' .. view, tid)
        end
      end
      redis.call('UNLINK', KEYS[i], KEYS[i + 1])
    end
  end
end
return gone
"""

THREAD_BATCH = 200  # threads per Lua step: each holds Redis for about a millisecond, no more
SCAN_COUNT = 1000
_PAGE = 1000  # entries per XRANGE page when a dry run counts a stream's old entries
_THREAD_PREFIX = thread_key("")
_MSGS_SUFFIX = thread_messages_key("")[len(_THREAD_PREFIX) :]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _thread_id(key: str) -> str:
    tid = key[len(_THREAD_PREFIX) :]
    return tid[: -len(_MSGS_SUFFIX)] if tid.endswith(_MSGS_SUFFIX) else tid


async def purge_threads(
    client: Any, cutoff: float, *, dry_run: bool, batch: int = THREAD_BATCH, scan_count: int = SCAN_COUNT
) -> int:
    """Threads whose last activity is before `cutoff`: deleted (or counted); how many."""
    script = client.register_script(_PURGE_THREADS)
    seen: set[str] = set()  # a thread's two keys may come in different SCAN pages
    pending: list[str] = []
    gone = 0

    async def flush() -> int:
        keys = [k for tid in pending for k in (thread_key(tid), thread_messages_key(tid))]
        pending.clear()
        args = [repr(cutoff), "1" if dry_run else "0", DESK_PREFIX, len(_THREAD_PREFIX)]
        return int(await script(keys=keys, args=args))

    async for raw in client.scan_iter(match=thread_key("*"), count=scan_count):
        tid = _thread_id(_text(raw))
        if tid in seen:
            continue
        seen.add(tid)
        pending.append(tid)
        if len(pending) >= batch:
            gone += await flush()
    if pending:
        gone += await flush()
    return gone


async def _count_before(client: Any, key: str, min_id: int) -> int:
    """Entries of a stream with an id before `min_id` (milliseconds), a page at a time."""
    count, start = 0, "-"
    while True:
        page = await client.xrange(key, min=start, max=str(min_id - 1), count=_PAGE)
        count += len(page)
        if len(page) < _PAGE:
            return count
        start = "(" + _text(page[-1][0])


async def trim_stream(client: Any, key: str, cutoff: float, *, dry_run: bool) -> int:
    """XTRIM MINID (exact, so that the count is what went): entries added before `cutoff`."""
    min_id = int(cutoff * 1000)
    if dry_run:
        return await _count_before(client, key, min_id)
    return int(await client.xtrim(key, minid=min_id, approximate=False))


async def purge_inboxes(client: Any, cutoff: float, *, dry_run: bool) -> tuple[int, int]:
    """Every queue's inbox stream trimmed to `cutoff`: (entries, streams)."""
    keys = sorted({_text(k) async for k in client.scan_iter(match=inbox_key("*"), count=SCAN_COUNT)})
    total = 0
    for key in keys:
        total += await trim_stream(client, key, cutoff, dry_run=dry_run)
    return total, len(keys)


async def purge_redis(client: Any, cutoffs: Cutoffs, *, dry_run: bool) -> AsyncIterator[PurgeCount]:
    """Each Redis kind's purge in turn, yielded as it is done (so that the caller records each
    at once): threads, inboxes, the consent changes, the guard's audit. 0 when nothing was due."""
    threads = await purge_threads(client, cutoffs.messages, dry_run=dry_run)
    yield PurgeCount("threads", "redis", cutoffs.messages, threads, "thread hashes with their message streams")
    inbox, streams = await purge_inboxes(client, cutoffs.messages, dry_run=dry_run)
    yield PurgeCount("inbox", "redis", cutoffs.messages, inbox, f"entries of {streams} queue stream(s)")
    optout = await trim_stream(client, OPTOUT_AUDIT, cutoffs.consent, dry_run=dry_run)
    yield PurgeCount("optout_audit", "redis", cutoffs.consent, optout, "consent changes (opt-out/opt-in)")
    audit = await trim_stream(client, AUDIT_STREAM, cutoffs.access, dry_run=dry_run)
    yield PurgeCount("audit", "redis", cutoffs.access, audit, "the guard's decisions")
