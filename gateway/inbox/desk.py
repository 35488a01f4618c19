"""The staff console's inbox: per-queue views of the open threads, the thread as a conversation,
the staff steps on a thread, and the live events (`EventHub`).

The views read per-queue sorted sets (`rediskeys.desk_key`, `desk_mine_key`) that the intake's
Lua steps keep in the same atomic step as the thread itself: `accept.lua` (open, unread,
waiting; a queue move; a re-open), `claim_thread.lua`, `close_thread.lua` and `desk.lua`
(read, handover, release, note, tags, answered). A page costs two pipelined round trips
whatever the queue's size: the page's ids with the totals, then the page's threads.

Every step publishes a compact JSON event on `rediskeys.CONSOLE_EVENTS`; `EventHub` holds one
subscription per process and fans it out to the console's pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.domain.numbers import mask
from gateway.errors import StoreUnavailable, ThreadNotFound
from gateway.inbox.intake import CLAIM_TTL_S, CLOSED_KEEP, NOT_MOBILE, InboundRejected, Intake, is_mobile
from gateway.infra import redisurl
from gateway.infra.rediskeys import (
    CONSOLE_EVENTS,
    desk_key,
    desk_mine_key,
    message_key,
    optout_key,
    sent_key,
    thread_claim_key,
    thread_key,
    thread_messages_key,
)
from gateway.outbox.store import number_hash

log = logging.getLogger(__name__)

# How a thread was closed: the key is stored, the Korean label shown.
OUTCOMES: dict[str, str] = {
    "answered": "답변 완료",
    "referred": "부서 이관",
    "no_action": "조치 불필요",
    "spam": "스팸",
    "duplicate": "중복",
}
VIEWS = ("open", "unread", "waiting", "mine", "closed")
MAX_NOTE = 2000  # characters of a private note
MAX_TAG = 20  # characters of a tag
MAX_TAGS = 10  # staff tags per thread
MAX_PAGE = 200  # threads per page
CONVERSATION_LIMIT = 500  # the latest entries of a thread shown as its conversation
PREVIEW = 60  # characters of the last inbound text in a summary
DELIVERY_STATES = ("queued", "sent", "delivered", "failed")

# The thread hash's fields a summary reads (accept.lua, close_thread.lua and desk.lua write them).
_FIELDS = (
    "to",
    "sender",
    "queue",
    "last_at",
    "last_in_at",
    "answered_at",
    "count",
    "waiting_since",
    "rule",
    "priority",
    "tags",
    "staff_tags",
    "preview",
    "closed_at",
    "outcome",
)


@dataclass(frozen=True, slots=True)
class ThreadSummary:
    thread: str
    queue: str
    citizen: str  # masked
    city_number: str
    last_at: float
    last_in_at: float
    answered_at: float | None
    count: int
    unread: bool
    claimed_by: str | None
    waiting: bool  # an inbound text unanswered by staff for longer than the desk's waiting_s
    waiting_since: float | None
    rule: str
    priority: str
    tags: tuple[str, ...]  # routing tags, then staff tags
    preview: str  # the last inbound text, first 60 characters
    closed_at: float | None
    outcome: str  # a key of OUTCOMES, "" when open or closed without one


@dataclass(frozen=True, slots=True)
class ThreadPage:
    items: tuple[ThreadSummary, ...]
    total: int
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class Message:
    id: str  # the thread stream's entry id
    kind: str  # "in", "out" (staff), "auto", "note", "event"
    at: float
    text: str  # "" for events
    staff: str  # "" for the citizen and automatic replies
    state: str  # an outgoing message's delivery state: queued/sent/delivered/failed, "" otherwise
    detail: str  # an event's Korean description; a failed delivery's reason


@dataclass(frozen=True, slots=True)
class Conversation:
    summary: ThreadSummary
    messages: tuple[Message, ...]
    reply_blocked: str  # "" or why no answer can be sent: "opted_out", "not_mobile", "not_configured"


def _s(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _f(value: Any) -> float | None:
    text = _s(value)
    return float(text) if text else None


@contextlib.contextmanager
def _redis() -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise StoreUnavailable(f"redis: {exc}") from exc


def check_tag(tag: str) -> str:
    """A staff tag as given, stripped; `InboundRejected` (Korean) when it cannot be one."""
    tag = tag.strip()
    if not tag or len(tag) > MAX_TAG or "," in tag:
        raise InboundRejected(f"태그는 1~{MAX_TAG}자, 쉼표 없이 입력해 주세요: {tag[:30]!r}")
    return tag


class Desk:
    """The console's inbox over an `Intake` (its Redis client, sealer and steps)."""

    def __init__(self, intake: Intake, *, waiting_s: float) -> None:
        self.intake = intake
        self.client: Any = intake.client
        self.waiting_s = waiting_s

    # ------------------------------------------------------------------ views
    async def open_threads(
        self, queues: Iterable[str], *, view: str = "open", staff: str = "", offset: int = 0, count: int = 50
    ) -> ThreadPage:
        """A page of the queues' threads in a view: newest activity first ("waiting": longest
        waiting first; "mine": the staff member's claims, latest first; "closed": latest closed
        first). Two pipelined round trips: each queue's first offset+count ids with the totals,
        then the page's threads."""
        if view not in VIEWS:
            raise InboundRejected(f"unknown view {view!r}")
        if view == "mine" and not staff:
            raise InboundRejected("'mine' needs the staff member")
        offset, count = max(0, offset), min(max(1, count), MAX_PAGE)
        names = list(dict.fromkeys(queues))
        if not names:
            return ThreadPage((), 0, offset, count)
        now = time.time()
        want = offset + count
        waited = f"({now - self.waiting_s!r}"
        with _redis():
            async with self.client.pipeline(transaction=False) as pipe:
                for q in names:
                    if view == "waiting":
                        key = desk_key(q, "waiting")
                        pipe.zrangebyscore(key, "-inf", waited, start=0, num=want, withscores=True)
                        pipe.zcount(key, "-inf", waited)
                    elif view == "mine":
                        key = desk_mine_key(q, staff)
                        pipe.zrevrangebyscore(key, "+inf", f"({now!r}", start=0, num=want, withscores=True)
                        pipe.zcount(key, f"({now!r}", "+inf")
                    else:
                        key = desk_key(q, view)
                        pipe.zrevrange(key, 0, want - 1, withscores=True)
                        pipe.zcard(key)
                replies = await pipe.execute()
        merged: list[tuple[float, str, str]] = []
        total = 0
        for i, q in enumerate(names):
            merged += [(float(score), _s(tid), q) for tid, score in replies[2 * i]]
            total += int(replies[2 * i + 1])
        merged.sort(key=lambda item: item[0], reverse=view != "waiting")
        page = [(tid, q) for _, tid, q in merged[offset : offset + count]]
        return ThreadPage(tuple(await self._summaries(page, now)), total, offset, count)

    async def counts(self, queues: Iterable[str]) -> dict[str, dict[str, int]]:
        """Per queue: open, unread, waiting (too long) and claimed threads (one round trip)."""
        names = list(dict.fromkeys(queues))
        now = time.time()
        with _redis():
            async with self.client.pipeline(transaction=False) as pipe:
                for q in names:
                    pipe.zcard(desk_key(q, "open"))
                    pipe.zcard(desk_key(q, "unread"))
                    pipe.zcount(desk_key(q, "waiting"), "-inf", f"({now - self.waiting_s!r}")
                    pipe.zcount(desk_key(q, "claimed"), f"({now!r}", "+inf")
                replies = await pipe.execute()
        return {
            q: dict(zip(("open", "unread", "waiting", "claimed"), map(int, replies[4 * i : 4 * i + 4]), strict=True))
            for i, q in enumerate(names)
        }

    async def _summaries(self, page: Sequence[tuple[str, str]], now: float) -> list[ThreadSummary]:
        """The threads of a page (thread id, the queue it was listed in): one round trip; a
        thread purged meanwhile is left out."""
        if not page:
            return []
        with _redis():
            async with self.client.pipeline(transaction=False) as pipe:
                for tid, q in page:
                    pipe.hmget(thread_key(tid), _FIELDS)
                    pipe.get(thread_claim_key(tid))
                    pipe.zscore(desk_key(q, "unread"), tid)
                replies = await pipe.execute()
        out = []
        for i, (tid, _) in enumerate(page):
            fields, claim, unread = replies[3 * i : 3 * i + 3]
            if fields[0] is None:
                continue
            out.append(self._summary(tid, dict(zip(_FIELDS, fields, strict=True)), claim, unread is not None, now))
        return out

    def _summary(self, tid: str, raw: dict[str, Any], claim: Any, unread: bool, now: float) -> ThreadSummary:
        f = {k: _s(v) for k, v in raw.items()}
        aad = tid.encode()
        sender = self.intake.sealer.open(f["sender"], aad) if f["sender"] else ""
        preview = self.intake.sealer.open(f["preview"], aad)[:PREVIEW] if f["preview"] else ""
        closed_at = _f(f["closed_at"])
        since = _f(f["waiting_since"]) if closed_at is None else None
        last_at = _f(f["last_at"]) or 0.0
        tags = [t for t in f["tags"].split(",") if t]
        tags += [t for t in f["staff_tags"].split(",") if t and t not in tags]
        return ThreadSummary(
            thread=tid,
            queue=f["queue"],
            citizen=mask(sender) if sender else "",
            city_number=f["to"],
            last_at=last_at,
            last_in_at=_f(f["last_in_at"]) or last_at,
            answered_at=_f(f["answered_at"]),
            count=int(f["count"] or 0),
            unread=unread,
            claimed_by=_s(claim) or None,
            waiting=since is not None and now - since > self.waiting_s,
            waiting_since=since,
            rule=f["rule"],
            priority=f["priority"] or "normal",
            tags=tuple(tags),
            preview=preview,
            closed_at=closed_at,
            outcome=f["outcome"],
        )

    async def summary(self, tid: str) -> ThreadSummary:
        """One thread's summary; `ThreadNotFound` when there is none."""
        with _redis():
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hmget(thread_key(tid), _FIELDS)
                pipe.get(thread_claim_key(tid))
                fields, claim = await pipe.execute()
            if fields[0] is None:
                raise ThreadNotFound(f"no thread {tid}")
            raw = dict(zip(_FIELDS, fields, strict=True))
            unread = await self.client.zscore(desk_key(_s(raw["queue"]), "unread"), tid)
        return self._summary(tid, raw, claim, unread is not None, time.time())

    async def conversation(self, tid: str) -> Conversation:
        """The thread as a conversation (its latest `CONVERSATION_LIMIT` entries, oldest first):
        the citizen's texts, automatic replies, staff answers with their delivery state, private
        notes and staff events; and why no answer can be sent, if so."""
        summary = await self.summary(tid)
        aad = tid.encode()
        with _redis():
            entries = await self.client.xrevrange(thread_messages_key(tid), count=CONVERSATION_LIMIT)
            sealed = _s(await self.client.hget(thread_key(tid), "sender"))
        sender = self.intake.sealer.open(sealed, aad) if sealed else ""
        raw = [(_s(entry_id), {_s(k): _s(v) for k, v in fields.items()}) for entry_id, fields in reversed(entries)]
        states = await self._delivery_states(tid, sender, [f.get("action", "") for _, f in raw if f["dir"] == "out"])
        messages = []
        for entry_id, f in raw:
            direction = f.get("dir", "")
            at = float(f.get("at") or 0)
            text = self.intake.sealer.open(f["text"], aad) if f.get("text") else ""
            if direction == "in":
                messages.append(Message(entry_id, "in", at, text, "", "", ""))
            elif direction == "out":
                action = f.get("action", "")
                state, detail = states.get(action, ("queued", ""))
                kind = "out" if action.startswith("reply:") else "auto"
                messages.append(Message(entry_id, kind, at, text, f.get("staff", ""), state, detail))
            elif direction == "note":
                messages.append(Message(entry_id, "note", at, text, f.get("staff", ""), "", ""))
            elif direction == "event":
                messages.append(Message(entry_id, "event", at, "", f.get("staff", ""), "", f.get("detail", "")))
        return Conversation(summary, tuple(messages), await self._reply_blocked(sender))

    async def _delivery_states(self, tid: str, to: str, actions: Sequence[str]) -> dict[str, tuple[str, str]]:
        """action -> (delivery state, detail) of the thread's outgoing messages: the worker's
        sent marker (`sent_key`: provider and reference, by the send's idempotency key) and
        the delivery reports' state (`message_key`); "queued" while neither exists (also for a
        job that is still queued, retried or dead-lettered: the job itself is not read)."""
        actions = [a for a in actions if a]
        if not actions or not to:
            return {}
        keys = [self.intake.outbox.key_for("sms", tid, action, to) for action in actions]
        with _redis():
            sent = await self.client.mget([sent_key(k) for k in keys])
            refs = [(a, _s(s).partition(":")) for a, s in zip(actions, sent, strict=True) if s]
            reports: list[Any] = []
            if refs:
                async with self.client.pipeline(transaction=False) as pipe:
                    for _, (provider, _, reference) in refs:
                        pipe.hmget(message_key(provider, reference), ["status", "detail"])
                    reports = await pipe.execute()
        states = {a: ("queued", "") for a in actions}
        for (action, (_, _, reference)), report in zip(refs, reports, strict=True):
            status, detail = _s(report[0]), _s(report[1])
            if not reference or status not in DELIVERY_STATES:
                status = "sent"  # accepted by the provider; no report (yet)
            states[action] = (status, detail)
        return states

    async def _reply_blocked(self, sender: str) -> str:
        intake = self.intake
        if intake.enqueuer is None or not intake.replies.sms_provider:
            return "not_configured"
        if not sender or not is_mobile(sender):
            return NOT_MOBILE
        with _redis():
            opted = await self.client.exists(optout_key(number_hash(intake.hash_key, sender)))
        return "opted_out" if opted else ""

    async def _sender(self, tid: str) -> str:
        with _redis():
            sealed = await self.client.hget(thread_key(tid), "sender")
        if sealed is None:
            raise ThreadNotFound(f"no thread {tid}")
        return self.intake.sealer.open(_s(sealed), tid.encode())

    async def reveal(self, tid: str) -> str:
        """The citizen's number (E.164). The caller records the access."""
        return await self._sender(tid)

    async def opted_out(self, tid: str) -> bool:
        sender = await self._sender(tid)
        with _redis():
            return bool(await self.client.exists(optout_key(number_hash(self.intake.hash_key, sender))))

    async def reindex(self, *, batch: int = 500) -> int:
        """Index the threads stored before the console's indexes existed (once, after the
        upgrade; idempotent): an open thread joins its queue's 'open' index (score: its last
        activity) and, when its newest entry is the citizen's, 'waiting'; a closed one joins
        'closed'. Nothing already indexed is changed (ZADD NX) and nothing is marked unread.
        SCAN in pages, one pipelined round trip per `batch` threads. Returns threads seen."""
        prefix = thread_key("")
        suffix = thread_messages_key("")[len(prefix) :]
        seen = 0
        pending: list[str] = []
        with _redis():
            async for raw in self.client.scan_iter(match=thread_key("*"), count=1000):
                key = _s(raw)
                if key.endswith(suffix):
                    continue
                pending.append(key[len(prefix) :])
                if len(pending) >= batch:
                    seen += await self._reindex(pending)
                    pending = []
            if pending:
                seen += await self._reindex(pending)
        return seen

    async def _reindex(self, tids: Sequence[str]) -> int:
        async with self.client.pipeline(transaction=False) as pipe:
            for tid in tids:
                pipe.hmget(thread_key(tid), ["queue", "last_at", "closed_at", "waiting_since"])
                pipe.xrevrange(thread_messages_key(tid), count=1)
            replies = await pipe.execute()
        touched: set[str] = set()
        async with self.client.pipeline(transaction=False) as pipe:
            for i, tid in enumerate(tids):
                (queue, last_at, closed_at, since), newest = replies[2 * i], replies[2 * i + 1]
                if queue is None:
                    continue
                q = _s(queue)
                touched.add(q)
                if closed_at is not None:
                    pipe.zadd(desk_key(q, "closed"), {tid: float(_s(closed_at))}, nx=True)
                    continue
                pipe.zadd(desk_key(q, "open"), {tid: float(_s(last_at) or 0)}, nx=True)
                fields = newest[0][1] if newest else {}
                if since is not None or fields.get(b"dir") == b"in":
                    at = float(_s(since) or _s(fields.get(b"at")) or _s(last_at) or 0)
                    pipe.zadd(desk_key(q, "waiting"), {tid: at}, nx=True)
            for q in touched:
                pipe.zremrangebyrank(desk_key(q, "closed"), 0, -1 - CLOSED_KEEP)
            await pipe.execute()
        return len(tids)

    # ------------------------------------------------------------------ steps
    async def mark_read(self, tid: str, staff: str) -> None:
        """The thread leaves its queue's unread view."""
        await self.intake.desk_step("read", tid, staff)

    async def handover(self, tid: str, staff: str, to: str, *, force: bool = False) -> None:
        """Hand the thread to a colleague, who becomes its holder. Only the holder may (or an
        admin: `force`); `ClaimedByOther` otherwise (also when nobody holds it)."""
        to = to.strip()
        if not to:
            raise InboundRejected("인계할 담당자를 선택해 주세요")
        detail = f"{staff} 담당자가 {to} 담당자에게 인계"
        await self.intake.desk_step("handover", tid, staff, to, "1" if force else "0", CLAIM_TTL_S, detail)

    async def release(self, tid: str, staff: str, *, force: bool = False) -> None:
        """The holder gives the thread up (nothing when nobody holds it); `ClaimedByOther`
        when someone else holds it (unless `force`)."""
        await self.intake.desk_step("release", tid, staff, "1" if force else "0", f"{staff} 담당자가 맡기를 해제")

    async def note(self, tid: str, staff: str, text: str) -> str:
        """A private note (sealed at rest, never sent): its entry id."""
        if not text.strip():
            raise InboundRejected("메모 내용을 입력해 주세요")
        if len(text) > MAX_NOTE:
            raise InboundRejected(f"메모는 {MAX_NOTE:,}자까지 쓸 수 있습니다")
        return await self.intake.desk_step("note", tid, staff, self.intake.sealer.seal(text, tid.encode()))

    async def set_tags(
        self, tid: str, staff: str, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> tuple[str, ...]:
        """Add and remove staff tags (1-20 characters, no commas, at most 10 per thread):
        the thread's staff tags after the change."""
        added = list(dict.fromkeys(check_tag(t) for t in add))
        removed = list(dict.fromkeys(t.strip() for t in remove if t.strip()))
        parts = []
        if added:
            parts.append("태그 추가: " + ", ".join(added))
        if removed:
            parts.append("태그 삭제: " + ", ".join(removed))
        if not parts:
            return (await self.summary(tid)).tags
        value = await self.intake.desk_step(
            "tags", tid, staff, ",".join(added), ",".join(removed), MAX_TAGS, " / ".join(parts)
        )
        return tuple(t for t in value.split(",") if t)

    async def close(self, tid: str, staff: str, outcome: str) -> bool:
        """Close with an outcome (a key of `OUTCOMES`): True when closed now, False when it was
        already closed."""
        if outcome not in OUTCOMES:
            raise InboundRejected(f"처리 결과를 선택해 주세요 (unknown outcome {outcome[:30]!r})")
        detail = f"{staff} 담당자가 종결: {OUTCOMES[outcome]}"
        return await self.intake.close(tid, staff, outcome=outcome, detail=detail)


# ---------------------------------------------------------------------- live events

RESYNC: dict[str, Any] = {"k": "resync"}
_END: dict[str, Any] = {"k": "__end__"}


class Subscription:
    """One subscriber's events: an async iterator of event dicts over a bounded queue. A
    subscriber that falls behind loses what it had not read and gets one {"k": "resync"} (read
    the page again) instead of unbounded memory."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)
        self.closed = False
        self.dropped = 0  # events lost to a full queue

    def push(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += self._drain()
            self._queue.put_nowait(RESYNC)

    def _drain(self) -> int:
        n = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            n += 1
        return n

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._queue.full():
                self._drain()
            self._queue.put_nowait(_END)

    def ready(self) -> list[dict[str, Any]]:
        """The events already waiting, without waiting (a stream writes them in one go); the
        end marker stays queued for the next read."""
        out: list[dict[str, Any]] = []
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if event is _END:
                self._queue.put_nowait(_END)
                break
            out.append(event)
        return out

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        event = await self._queue.get()
        if event is _END:
            self._queue.put_nowait(_END)  # (another reader also ends)
            raise StopAsyncIteration
        return event


class EventHub:
    """One Redis subscription to `CONSOLE_EVENTS` per process, fanned out to any number of
    `Subscription`s. Reconnects by itself (every subscriber gets {"k": "resync"} once it is
    subscribed again: events may have been missed) and never raises into subscribers."""

    def __init__(self, redis: str | aioredis.Redis, *, queue_size: int = 256, retry_s: float = 0.5) -> None:
        if isinstance(redis, str):
            # (`redis+sentinel://`: the subscription is re-made on the primary after a failover.)
            self._client: Any = redisurl.async_client(
                redis, socket_connect_timeout=2.0, health_check_interval=15, socket_keepalive=True
            )
            self._own = True
        else:
            self._client, self._own = redis, False
        self.queue_size = queue_size
        self.retry_s = retry_s
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.received = 0  # events received from Redis
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> bool:
        """Whether the hub is subscribed (within `timeout_s`)."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="console-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for sub in list(self._subscribers):
            sub.close()
        self._subscribers.clear()
        if self._own:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()

    def subscribe(self) -> Subscription:
        sub = Subscription(self.queue_size)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _fan(self, event: dict[str, Any]) -> None:
        for sub in list(self._subscribers):
            sub.push(event)

    async def _run(self) -> None:
        first = True
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CONSOLE_EVENTS)
                self._connected.set()
                if not first:
                    self.reconnects += 1
                    self._fan(RESYNC)
                first = False
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        event = json.loads(message["data"])
                    except (ValueError, TypeError):
                        continue
                    if isinstance(event, dict):
                        self.received += 1
                        self._fan(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # (any failure: reconnect; subscribers never see it)
                if self._connected.is_set():
                    log.warning("console events: subscription lost (%s); reconnecting", exc)
                self._connected.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(self.retry_s)
