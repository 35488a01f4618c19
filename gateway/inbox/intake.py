"""Citizens' text messages: intake, opt-out, routing, the staff inbox and replies.

`Intake.accept` is what both intake edges (HTTP webhook, SMTP relay) call. It returns only
once the message is durable in Redis (one Lua step: idempotency key, thread, inbox entry and
the queue's notification job), so the edge can answer 2xx/250; when Redis cannot be reached it
raises `StoreUnavailable` and the edge answers 503/451 so the provider retries. A repeated
provider message id is a duplicate: stored once, answered as success. What may wait is done by
the worker from the notification job: the rules' automatic reply or opt-out confirmation
(`gateway.inbox.replies`) and the queue's sinks (webhook, officer on duty), so that the provider's
request does only what must be durable before it is answered.

The citizen's number and every text are sealed (AES-GCM) at rest; the thread id and the
opt-out record are keyed by a keyed hash of the number, never the number itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.domain.inputs import MAX_MESSAGE_ID, has_surrogate, message_key, shown_id
from gateway.domain.models import NumberKind
from gateway.domain.numbers import NumberPlan, mask
from gateway.domain.optout import OPT_IN, OPT_OUT, QUESTION, QUESTION_TAG
from gateway.domain.postcall import MessagingRules
from gateway.domain.records import SEOUL, ThreadEventKind, ThreadFact
from gateway.domain.routing import DayType, InboundSms, RoutingRules, ThreadContext, TimeWindow, route
from gateway.errors import ClaimedByOther, GatewayError, RecipientUnknown, StoreUnavailable, ThreadNotFound
from gateway.inbox.replies import AUTO_REPLY, Replies
from gateway.infra.crypto import Sealer
from gateway.infra.rediskeys import (
    CONSOLE_EVENTS,
    DESK_PREFIX,
    NONE_KEY,
    OPTOUT_AUDIT,
    contact_key,
    inbound_key,
    inbox_key,
    lua_script,
    optout_key,
    reply_once_key,
    thread_claim_key,
    thread_key,
    thread_messages_key,
)
from gateway.infra.wire import ReplicaAck, Wire
from gateway.messaging.jobs import Enqueuer, inbound_reply
from gateway.outbox.guard import Outbox, Verdict
from gateway.outbox.store import number_hash
from gateway.ports import DecisionSink, NoRecords, QueuePut, RecordSink
from gateway.records.refs import message_ref

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL_S = 30 * 86400
CONTACT_TTL_S = 30 * 86400

# One atomic step per citizen's message (one round trip): idempotency key, thread, inbox entry
# and the queue's notification job (keys, arguments and answers described in `accept.lua`).
_ACCEPT = lua_script(__package__, "accept.lua")
# A contact that changes between routing and storing, again and again: give up (503, the
# provider retries) rather than loop.
_ROUTING_ATTEMPTS = 3

# Staff claim a thread, in one step so that two staff never both win (`claim_thread.lua`).
_CLAIM = lua_script(__package__, "claim_thread.lua")
_CLOSE = lua_script(__package__, "close_thread.lua")  # staff close a thread; a new message re-opens it
# The console's other steps on a thread (read, handover, release, note, tags, answered), each
# atomic with the queue's indexes (`desk.lua`; used by `gateway.inbox.desk.Desk`).
_DESK = lua_script(__package__, "desk.lua")
CLOSED_KEEP = 1000  # closed threads a queue's 'closed' index keeps (the console's "closed" view)
CLAIM_TTL_S = 3600
# The same reply text from the same staff to the same thread within this time is a double click
# (or a client retry): sent once, the repeat answered "duplicate".
REPLY_ONCE_S = 60
NOT_MOBILE = "not_mobile"  # why no automatic reply: only a Korean mobile gets one (cost, and it can't be read)
_PLAN = NumberPlan()  # sender kinds only: classify() takes E.164 as it is
# Office hours for the records' after-hours share (`records.office_hours`): a weekday inside
# this window is office hours; anything else (evenings, weekends, holidays) is after hours.
OFFICE_HOURS = TimeWindow(9 * 60, 18 * 60)


def is_mobile(e164: str) -> bool:
    """Whether a citizen's number is a Korean mobile (the only numbers automatic replies go to:
    a landline, a 1588 number or a foreign one cannot read them or costs more)."""
    return _PLAN.classify(e164).kind is NumberKind.MOBILE


@dataclass(slots=True)  # internal to one accept; not frozen: frozen construction costs 5 x more
class _Plan:
    """What one accept step stores and queues besides the message (see `_ACCEPT`)."""

    queue: str
    priority: str
    rule: str
    tags: str
    job: QueuePut | None  # the queue's notification (with the reply the worker sends, if any)


class InboundRejected(GatewayError):
    """The message cannot be taken (not for one of our numbers, empty, ...): HTTP 400."""

    http_status = 400


class OptedOut(GatewayError):
    """A reply to a citizen who refused messages: HTTP 409."""

    http_status = 409


@dataclass(frozen=True, slots=True)
class IntakeResult:
    status: str  # "accepted" or "duplicate"
    thread: str
    queue: str
    optout: str = ""  # "opt_out" / "opt_in" when the message was such a keyword, "question" when it asked
    reply: str = ""  # why no automatic reply goes to the citizen ("not_mobile"), "" otherwise


def keyword_of(text: str, rules: MessagingRules) -> str:
    """ "opt_out", "opt_in", "question" or "": the whole short message is the keyword as citizens
    write it ("[Web발신] 수신 거부합니다.", "STOP!!"), never a word in a sentence; a message that
    asks about opting out or mentions it is a "question" (`gateway.domain.optout`)."""
    return rules.optout_words.classify(text)


class OptOutRegistry:
    """Opt-outs keyed by the number's keyed hash, with an append-only audit stream."""

    AUDIT = OPTOUT_AUDIT

    def __init__(
        self, client: aioredis.Redis, hash_key: bytes, *, wire: Wire | None = None, ack: ReplicaAck | None = None
    ) -> None:
        self.client: Any = client
        self.hash_key = hash_key
        self.counts: dict[tuple[str, str], int] = {}  # (opt_out|opt_in, channel) for /metrics
        # With replica acknowledgements (`ack.replicas` > 0) the change goes over `wire`, where
        # a WAIT can follow it on the same connection (WAIT covers that connection's writes).
        self.wire = wire
        self.ack = ack if ack is not None else ReplicaAck()

    async def set(self, e164: str, opted_out: bool, *, channel: str, via: str) -> None:
        h = number_hash(self.hash_key, e164)
        record = json.dumps({"at": round(time.time(), 3), "channel": channel, "via": via})
        if self.ack.replicas and self.wire is not None:
            await self._set_replicated(h, opted_out, record, channel=channel, via=via)
        else:
            await self._set(h, opted_out, record, channel=channel, via=via)
        key = ("opt_out" if opted_out else "opt_in", channel)
        self.counts[key] = self.counts.get(key, 0) + 1
        log.info("%s %s via %s (%s)", mask(e164), "opted out" if opted_out else "opted in", channel, via)

    async def _set_replicated(self, h: str, opted_out: bool, record: str, *, channel: str, via: str) -> None:
        """`_set`'s transaction over the wire, then WAIT, in one write (`execute_many` keeps
        MULTI ... EXEC and the WAIT contiguous on the connection)."""
        assert self.wire is not None
        change: tuple[str | bytes, ...] = ("SET", optout_key(h), record) if opted_out else ("DEL", optout_key(h))
        action = "opt_out" if opted_out else "opt_in"
        audit: tuple[str, ...] = ("XADD", self.AUDIT, "*", "number", h, "action", action, "channel", channel)
        audit += ("via", via, "at", f"{time.time():.3f}")
        try:
            replies = await self.wire.execute_many(
                [("MULTI",), change, audit, ("EXEC",), self.ack.command], hold_s=self.ack.hold_s
            )
            self.ack.check(replies[-1], "optout")
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def _set(self, h: str, opted_out: bool, record: str, *, channel: str, via: str) -> None:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                if opted_out:
                    pipe.set(optout_key(h), record)
                else:
                    pipe.delete(optout_key(h))
                pipe.xadd(
                    self.AUDIT,
                    {
                        "number": h,
                        "action": "opt_out" if opted_out else "opt_in",
                        "channel": channel,
                        "via": via,
                        "at": f"{time.time():.3f}",
                    },
                )
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def status(self, e164: str) -> dict[str, Any] | None:
        try:
            raw = await self.client.get(optout_key(number_hash(self.hash_key, e164)))
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return json.loads(raw) if raw else None


class Intake:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        routing: Callable[[], RoutingRules | None],
        messaging: Callable[[], MessagingRules],
        sealer: Sealer,
        hash_key: bytes,
        outbox: Outbox,
        enqueuer: Enqueuer | None,
        sms_provider: str,
        sink: DecisionSink,
        wire: Wire,
        records: RecordSink | None = None,
        office_hours: TimeWindow = OFFICE_HOURS,
        ack: ReplicaAck | None = None,
    ) -> None:
        # redis-py types every reply as a union of everything; this module reads bytes replies.
        self.client: Any = client
        self.wire = wire  # the accept path's round trips (lean connection: gateway.infra.wire)
        self._routing = routing
        self._messaging = messaging
        self.sealer = sealer
        self.hash_key = hash_key
        self.outbox = outbox
        self.enqueuer = enqueuer
        self.sink = sink
        # Replica acknowledgements the accept and opt-outs wait for (none by default).
        self.ack = ack if ack is not None else ReplicaAck()
        self.optouts = OptOutRegistry(client, hash_key, wire=wire, ack=self.ack)
        self.replies = Replies(outbox, enqueuer, sealer, sms_provider)
        self.counts: dict[tuple[str, str, str], int] = {}  # (queue, status, keyword) for /metrics
        self._accept = self.wire.register_script(_ACCEPT)
        self._claim = client.register_script(_CLAIM)
        self._close = client.register_script(_CLOSE)
        self._desk = client.register_script(_DESK)
        # The SQL archive: a thread's lifecycle (received, claimed, answered, closed).
        self.records: RecordSink = records if records is not None else NoRecords()
        self._recording = not isinstance(self.records, NoRecords)
        self.office_hours = office_hours

    @staticmethod
    def thread_id(sender_hash: str, city_number: str) -> str:
        """One conversation per citizen (by the number's keyed hash) and city number; not
        reversible to the number."""
        digest = hashlib.sha256(sender_hash.encode() + b"|" + city_number.encode())
        return "t" + digest.hexdigest()[:20]

    @staticmethod
    def _context(raw: bytes) -> ThreadContext | None:
        """The department that recently messaged the citizen (see `remember_contact`)."""
        if not raw:
            return None
        data = json.loads(raw)
        return ThreadContext(str(data["department"]), float(data["at"]))

    async def accept(self, sms: InboundSms) -> IntakeResult:
        routing = self._routing()
        if not sms.sender.startswith("+") or not sms.to.startswith("+"):
            raise InboundRejected("sender and recipient must be phone numbers")
        if not sms.message_id:
            raise InboundRejected("a provider message id is required (idempotency)")
        if len(sms.message_id) > MAX_MESSAGE_ID:
            raise InboundRejected(f"message_id longer than {MAX_MESSAGE_ID:,} characters")
        for name, value in (("message_id", sms.message_id), ("text", sms.text), ("provider", sms.provider)):
            # (every edge checks this first; here too, so that no edge can store what cannot be encoded)
            if has_surrogate(value):
                raise InboundRejected(f"'{name}' is not valid Unicode text (a lone surrogate)")
        if routing is not None and routing.city_numbers and sms.to not in routing.city_numbers:
            raise RecipientUnknown(f"'to' is not one of the city's numbers ({mask(sms.to)})")
        rules = self._messaging()
        keyword = keyword_of(sms.text, rules)
        sender_hash = number_hash(self.hash_key, sms.sender)
        tid = self.thread_id(sender_hash, sms.to)
        sealed_sender = self.sealer.seal(sms.sender, tid.encode())
        sealed_text = self.sealer.seal(sms.text, tid.encode())
        # Optimistic: most citizens have no recent department contact, so the message is routed
        # without one and the script checks that (atomically); a citizen who has one is routed
        # again with it: two round trips instead of a lookup before every message.
        contact = b""
        try:
            if keyword in (OPT_OUT, OPT_IN):
                # Recorded before the message itself: if storing fails, the provider's retry
                # records it again (idempotent), but a refusal is never lost.
                await self.optouts.set(sms.sender, keyword == OPT_OUT, channel="sms", via=sms.provider)
            for _ in range(_ROUTING_ATTEMPTS):
                plan = self._plan(
                    sms,
                    routing=routing,
                    rules=rules,
                    keyword=keyword,
                    context=self._context(contact),
                    tid=tid,
                    sealed_text=sealed_text,
                    sealed_sender=sealed_sender,
                )
                keys = [
                    inbound_key(sms.provider, message_key(sms.message_id)),
                    thread_key(tid),
                    thread_messages_key(tid),
                    inbox_key(plan.queue),
                    plan.job.msgs_key if plan.job else NONE_KEY,
                    plan.job.queue_key if plan.job else NONE_KEY,
                    contact_key(sender_hash),
                    thread_claim_key(tid),
                ]
                args: list[str | int | bytes] = [
                    f"{tid}|{plan.queue}",
                    IDEMPOTENCY_TTL_S,
                    sms.to,
                    sealed_sender,
                    sender_hash,
                    plan.queue,
                    f"{sms.received_at:.3f}",
                    sealed_text,
                    sms.message_id,
                    sms.provider,
                    tid,
                    plan.priority,
                    plan.rule,
                    plan.tags,
                    plan.job.message_id if plan.job else "",
                    plan.job.data if plan.job else b"",
                    contact,
                    DESK_PREFIX,
                    CONSOLE_EVENTS,
                ]
                if self.ack.replicas:  # durable means replicated (redis.min_replicas_ack)
                    stored, value = await self._accept.call_replicated(self.ack, "inbound", keys=keys, args=args)
                else:
                    stored, value = await self._accept(keys=keys, args=args)
                if int(stored) != 2:
                    break
                contact = value
            else:
                raise StoreUnavailable("the citizen's contact changed while routing, again and again")
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        tid, _, queue = (value.decode() if isinstance(value, bytes) else str(value)).partition("|")
        status = "accepted" if int(stored) == 1 else "duplicate"
        key = (queue, status, keyword)
        self.counts[key] = self.counts.get(key, 0) + 1
        no_reply = "" if is_mobile(sms.sender) else NOT_MOBILE
        self.sink.decision(
            {
                "event": "inbound",
                "provider": sms.provider,
                "message_id": shown_id(sms.message_id),
                "thread": tid,
                "queue": queue,
                "status": status,
                "optout": keyword,
                "rule": plan.rule if status == "accepted" else "",
                "reply": no_reply,
            }
        )
        if log.isEnabledFor(logging.INFO):  # (the masks are not computed for a record that is dropped)
            log.info(
                "inbound %s from %s to %s: %s -> %s (%s)",
                shown_id(sms.message_id),
                mask(sms.sender),
                mask(sms.to),
                status,
                queue,
                plan.rule,
            )
        if status == "accepted" and self.enqueuer is not None:
            self.enqueuer.enqueued += plan.job is not None
        if status == "accepted" and self._recording:
            self._received(
                sms, routing, tid=tid, queue=queue, plan=plan, sender_hash=sender_hash, sealed_text=sealed_text
            )
        return IntakeResult(status, tid, queue, keyword, no_reply)

    def _received(
        self,
        sms: InboundSms,
        routing: RoutingRules | None,
        *,
        tid: str,
        queue: str,
        plan: _Plan,
        sender_hash: str,
        sealed_text: str,
    ) -> None:
        """The RECEIVED fact of an accepted message (after the accept: off its critical step)."""
        try:
            day_type, after_hours = self.when(routing, sms.received_at)
            key = message_ref(sms.provider, sms.message_id)
            self.records.record(
                ThreadFact(
                    thread=tid,
                    kind=ThreadEventKind.RECEIVED.value,
                    at=sms.received_at,
                    ref=key,
                    message=key,
                    queue=queue,
                    rule=plan.rule,
                    tags=tuple(t for t in plan.tags.split(",") if t),
                    day_type=day_type,
                    after_hours=after_hours,
                    party_hash=sender_hash,
                    sealed_text=sealed_text,
                )
            )
        except Exception:  # the archive must never fail an accept that is already durable
            log.exception("message %s not recorded", shown_id(sms.message_id))

    def when(self, routing: RoutingRules | None, at: float) -> tuple[str, bool]:
        """(day type, after hours) of a time: the routing calendar's day type (holidays
        included); weekends and holidays are after hours all day, weekdays outside the office
        hours. Without routing rules: weekdays and weekends only."""
        if routing is not None:
            local = routing.calendar.local_time(at)
            day = routing.calendar.day_type(local)
        else:
            local = datetime.fromtimestamp(at, SEOUL)
            day = DayType.WEEKEND if local.weekday() >= 5 else DayType.WEEKDAY
        inside = self.office_hours.contains(local.hour * 60 + local.minute)
        return day.value, day is not DayType.WEEKDAY or not inside

    def _record_step(self, tid: str, kind: ThreadEventKind, at: float, ref: str, **fields: Any) -> None:
        """A staff step of a thread (CLAIMED, ANSWERED, CLOSED) for the archive."""
        if not self._recording:
            return
        try:
            self.records.record(ThreadFact(thread=tid, kind=kind.value, at=at, ref=ref, **fields))
        except Exception:
            log.exception("thread %s: %s not recorded", tid, kind.value)

    def _plan(
        self,
        sms: InboundSms,
        *,
        routing: RoutingRules | None,
        rules: MessagingRules,
        keyword: str,
        context: ThreadContext | None,
        tid: str,
        sealed_text: str,
        sealed_sender: str,
    ) -> _Plan:
        """Route the message and prepare its notification job, with the automatic reply (or
        opt-out confirmation) the worker is to send, all to go into the accept's one step."""
        if routing is None:
            queue, priority, rule, tags, reply = "complaint", "normal", "(no routing.yaml)", "", None
        else:
            decision = route(sms, routing, context)
            queue, priority, rule = decision.queue, decision.priority.value, decision.rule
            tags, reply = ",".join(decision.tags), decision.auto_reply
        if keyword in (OPT_OUT, OPT_IN):
            # ("opt_out_confirm:..." is the one action the guard lets through to an opted-out number)
            reply = rules.optout_confirmation if keyword == OPT_OUT else rules.optin_confirmation
            action = f"{keyword}_confirm:{sms.message_id}"
        else:
            action = f"{AUTO_REPLY}:{sms.message_id}"
            if keyword == QUESTION:
                # Asked about (or mentioned) opting out: routed as usual, tagged for staff, and the
                # automatic reply tells how (an ordinary auto-reply: an opted-out citizen gets none).
                tags = f"{tags},{QUESTION_TAG}" if tags else QUESTION_TAG
                reply = f"{reply}\n{rules.optout_help}" if reply else rules.optout_help
        job = self._notification(
            sms,
            tid,
            sealed_text,
            queue=queue,
            rule=rule,
            priority=priority,
            reply=(reply, action, sealed_sender) if reply and is_mobile(sms.sender) else None,
        )
        return _Plan(queue, priority, rule, tags, job)

    def _notification(
        self,
        sms: InboundSms,
        tid: str,
        sealed_text: str,
        *,
        queue: str,
        rule: str,
        priority: str,
        reply: tuple[str, str, str] | None = None,
    ) -> QueuePut | None:
        """The queue's notification job (webhook, duty SMS) for an accepted message, with the
        reply (text, action, the citizen's sealed number) the worker sends from the city number
        texted; None when nothing is queued (no broker)."""
        if self.enqueuer is None:
            return None
        payload: dict[str, Any] = {
            "v": 1,
            "thread": tid,
            "queue": queue,
            "rule": rule,
            "priority": priority,
            "message_id": sms.message_id,
            "provider": sms.provider,
            "at": sms.received_at,
            "citizen": mask(sms.sender),
            "text": sealed_text,
        }
        if reply is not None and self.replies.sms_provider:
            text, action, sealed_sender = reply
            # The citizen's number sealed as the thread keeps it (bound to the thread id).
            payload["reply"] = inbound_reply(
                self.sealer, tid, text=text, action=action, sealed_to=sealed_sender, city_number=sms.to
            )
        return self.enqueuer.prepare("inbound", payload)

    # ------------------------------------------------------------------ staff side
    async def inbox(self, queue: str, *, count: int = 50) -> list[dict[str, Any]]:
        entries = await self.client.xrevrange(inbox_key(queue), count=count)
        out = []
        for entry_id, fields in entries:
            f = {k.decode(): v.decode() for k, v in fields.items()}
            claimed = await self.client.get(thread_claim_key(f["thread"]))
            out.append(
                {
                    "entry": entry_id.decode(),
                    "thread": f["thread"],
                    "at": float(f["at"]),
                    "priority": f["priority"],
                    "rule": f["rule"],
                    "tags": [t for t in f["tags"].split(",") if t],
                    "claimed_by": claimed.decode() if claimed else None,
                }
            )
        return out

    async def thread(self, tid: str) -> dict[str, Any] | None:
        raw = await self.client.hgetall(thread_key(tid))
        if not raw:
            return None
        t = {k.decode(): v.decode() for k, v in raw.items()}
        sender = self.sealer.open(t["sender"], tid.encode())
        messages = []
        for entry_id, fields in await self.client.xrange(thread_messages_key(tid)):
            f = {k.decode(): v.decode() for k, v in fields.items()}
            if f.get("dir") not in ("in", "out"):
                continue  # the console's private notes and events are not part of the exchange
            messages.append(
                {
                    "id": entry_id.decode(),
                    "dir": f["dir"],
                    "at": float(f["at"]),
                    "text": self.sealer.open(f["text"], tid.encode()),
                }
            )
        return {
            "thread": tid,
            "city_number": t["to"],
            "citizen": mask(sender),
            "queue": t["queue"],
            "count": int(t.get("count", "0")),
            "messages": messages,
            "reply": "" if is_mobile(sender) else NOT_MOBILE,
            # Closed by staff (POST .../close) until the citizen writes again: None when open.
            "closed_at": float(t["closed_at"]) if t.get("closed_at") else None,
            "closed_by": t.get("closed_by") or None,
        }

    async def _recent_inbound(self, tid: str, count: int = 20) -> list[str]:
        """The provider message ids of the citizen's latest messages in a thread."""
        entries = await self.client.xrevrange(thread_messages_key(tid), count=count)
        return [
            fields[b"message_id"].decode()
            for _, fields in entries
            if fields.get(b"dir") == b"in" and b"message_id" in fields
        ]

    async def claim(self, tid: str, staff: str, ttl_s: int = CLAIM_TTL_S) -> bool:
        """Claim a thread for `staff` for `ttl_s`: True when newly claimed, False when `staff`
        held it already (a double click: renewed, not an error). Raises `ThreadNotFound`, or
        `ClaimedByOther` when another staff member holds it."""
        at = time.time()
        try:
            found, holder = await self._claim(
                keys=[thread_key(tid), thread_claim_key(tid), thread_messages_key(tid)],
                args=[staff, ttl_s, f"{at:.3f}", DESK_PREFIX, CONSOLE_EVENTS, f"{staff} 담당자가 맡음", tid],
            )
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        holder = holder.decode() if isinstance(holder, bytes) else str(holder)
        if int(found) == 0:
            raise ThreadNotFound(f"no thread {tid}")
        if int(found) == 2:
            raise ClaimedByOther(holder)
        newly = holder != staff
        if newly:
            self._record_step(tid, ThreadEventKind.CLAIMED, at, f"{staff}:{at:.6f}", staff=staff)
        return newly

    async def close(self, tid: str, staff: str, *, outcome: str = "", detail: str = "") -> bool:
        """Staff close a thread: True when closed now, False when it was closed already (a
        double click). A new message from the citizen re-opens it. Raises `ThreadNotFound`.
        `outcome` (a key of `gateway.inbox.desk.OUTCOMES`, "" for none) is kept on the thread
        and in the CLOSED fact's detail; `detail` is the thread's event text (Korean)."""
        at = time.time()
        try:
            result = await self._close(
                keys=[thread_key(tid), thread_messages_key(tid), thread_claim_key(tid)],
                args=[
                    f"{at:.3f}",
                    staff,
                    outcome,
                    DESK_PREFIX,
                    CONSOLE_EVENTS,
                    detail or f"{staff} 담당자가 종결",
                    tid,
                    CLOSED_KEEP,
                ],
            )
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        if int(result) == 0:
            raise ThreadNotFound(f"no thread {tid}")
        if int(result) == 2:
            return False
        self._record_step(tid, ThreadEventKind.CLOSED, at, f"{staff}:{at:.6f}", staff=staff, detail=outcome)
        self.sink.decision({"event": "closed", "thread": tid, "staff": staff})
        return True

    async def reply(self, tid: str, text: str, staff: str) -> str:
        """Staff answer a thread: SMS/LMS from the city number the citizen texted.

        Only the staff member who claimed the thread may answer it (`ClaimedByOther` otherwise);
        an unclaimed thread is claimed by its first answer, so that a second person does not
        answer it too. The same text from the same staff within `REPLY_ONCE_S` is sent once and
        the repeat returns "duplicate" (a double click, a client's retry)."""
        if not text.strip():
            raise InboundRejected("empty reply")
        await self.claim(tid, staff)
        once = reply_once_key(tid, hashlib.sha256(f"{staff}|{text}".encode()).hexdigest()[:24])
        action = f"reply:{uuid.uuid4().hex[:12]}"
        # With replica acknowledgements, an answer answered "store_unavailable" is queued on the
        # primary all the same (only the replica's acknowledgement was missing): the once-key
        # keeps its action, and the retry reuses it, so the guard's claim finds it a duplicate
        # instead of queueing the answer a second time (or queues it if it really was lost).
        replicated = self.ack.replicas > 0
        try:
            raw = await self.client.hgetall(thread_key(tid))
            if not await self.client.set(once, action if replicated else "1", nx=True, ex=REPLY_ONCE_S):
                prior = await self.client.get(once) if replicated else None
                if not prior or not prior.startswith(b"reply:"):
                    return "duplicate"
                action = prior.decode()
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        if not raw:  # (expired between the claim and now)
            raise ThreadNotFound(f"no thread {tid}")
        t = {k.decode(): v.decode() for k, v in raw.items()}
        sender = self.sealer.open(t["sender"], tid.encode())
        result = "failed"
        try:
            result = await self.replies.send(tid, sender, t["to"], text, action, staff=staff)
        finally:
            kept = ("queued", Verdict.DUPLICATE.value, Verdict.STORE_UNAVAILABLE.value) if replicated else ("queued",)
            if result not in kept:
                # Not sent: the same answer may be posted again at once.
                with contextlib.suppress(RedisError):
                    await self.client.delete(once)
        if result == Verdict.OPTED_OUT.value:
            raise OptedOut("the citizen refused messages (수신거부); no reply is sent")
        if result == "queued":
            # The worker sends automatic replies from the messages' notification jobs; if it is
            # behind, this answer came first and those are no longer sent.
            await self.replies.supersede(tid, sender, await self._recent_inbound(tid))
            # The console's indexes: answered, no longer waiting (the answer is queued: a
            # failure here is logged, not raised, the citizen's answer is on its way).
            try:
                await self.desk_step("answered", tid, staff)
            except (StoreUnavailable, ThreadNotFound) as exc:
                log.warning("thread %s: answer not indexed for the console: %s", tid, exc)
            if self._recording:
                self._record_step(
                    tid,
                    ThreadEventKind.ANSWERED,
                    time.time(),
                    action,
                    queue=t["queue"],
                    staff=staff,
                    sealed_text=self.sealer.seal(text, tid.encode()),
                )
        self.sink.decision({"event": "reply", "thread": tid, "staff": staff, "result": result})
        if t["queue"].startswith("dept:"):
            await self.remember_contact(sender, t["queue"].removeprefix("dept:"))
        return result

    async def desk_step(self, op: str, tid: str, staff: str, *args: str | int) -> str:
        """One of the console's steps on a thread (`desk.lua`: read, handover, release, note,
        tags, answered), atomic with the queue's indexes and published as a live event.
        Returns the step's value (earlier holder, note entry id, new tags). Raises
        `ThreadNotFound`, `ClaimedByOther` (handover, release) or `StoreUnavailable`; too many
        tags raise `InboundRejected`."""
        try:
            found, value = await self._desk(
                keys=[thread_key(tid), thread_messages_key(tid), thread_claim_key(tid)],
                args=[op, DESK_PREFIX, CONSOLE_EVENTS, f"{time.time():.3f}", staff, tid, *args],
            )
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        text = value.decode() if isinstance(value, bytes) else str(value)
        if int(found) == 0:
            raise ThreadNotFound(f"no thread {tid}")
        if int(found) == 2:
            if op == "tags":
                raise InboundRejected("태그는 민원 하나에 최대 10개까지 붙일 수 있습니다 / too many tags")
            raise ClaimedByOther(text)
        return text

    async def remember_contact(self, e164: str, department: str) -> None:
        """A department messaged this citizen: a reply within N days goes back to it."""
        await self.outbox.store.remember_contact(number_hash(self.hash_key, e164), department, CONTACT_TTL_S)


def inbound_from_fields(fields: Mapping[str, str], provider: str, plan: Any, now: float) -> InboundSms:
    """An `InboundSms` from a webhook's fields (`message_id`, `from`, `to`, `text`, `received_at`)."""
    missing = [k for k in ("message_id", "from", "to", "text") if not fields.get(k)]
    if missing:
        raise InboundRejected(f"missing field(s): {', '.join(missing)}")
    sender, to = plan.classify(fields["from"]), plan.classify(fields["to"])
    if not sender.e164.startswith("+"):
        raise InboundRejected(f"'from' is not a phone number: {mask(fields['from'])}")
    if not to.e164.startswith("+"):
        raise InboundRejected("'to' is not a phone number")
    message_id = fields["message_id"]
    if len(message_id) > MAX_MESSAGE_ID:
        raise InboundRejected(f"message_id longer than {MAX_MESSAGE_ID:,} characters")
    for name in ("message_id", "text"):
        if has_surrogate(fields[name]):
            raise InboundRejected(f"'{name}' is not valid Unicode text (a lone surrogate: an emoji cut in half?)")
    try:
        received = float(fields.get("received_at") or now)
    except ValueError:
        raise InboundRejected("'received_at' must be epoch seconds") from None
    # inf, nan or a year past 2286 would crash the calendar (and the routing) further in: a 400 here.
    if not math.isfinite(received) or not 0 < received < 1e10:
        raise InboundRejected("'received_at' must be epoch seconds") from None
    text = fields["text"]
    if len(text) > 2000:
        raise InboundRejected("text longer than an LMS (2,000 characters)")
    return InboundSms(message_id, provider, to.e164, sender.e164, text, received)
