"""The worker's runtime: the dramatiq actors that hand queued messages to their providers.

Each queue has one actor (`deliver_<queue>`). An actor opens the sealed number, passes the
message through the outbox guard (`Outbox.send`: opt-out again, never twice) and acts on
the typed outcome: temporary errors are retried by dramatiq (bounded, then dead-lettered),
permanent ones are recorded, and an Alimtalk that cannot reach a citizen who has no
KakaoTalk becomes an SMS/LMS job. A circuit breaker per provider stops hammering a provider
that is down; its messages wait in the queue instead.

Only the runtime lives here; which providers, rules and sinks it gets is composition
(`gateway.app.worker.build_worker`), and starting, watching and stopping the threads that run
it is `gateway.messaging.workers`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, Middleware

from gateway.domain.models import SendOutcome, SendResult, SmsRequest
from gateway.domain.notify import NotifyRules, duty_sms
from gateway.domain.numbers import mask
from gateway.domain.records import SendFact, ThreadEventKind, ThreadFact
from gateway.domain.smstext import choose
from gateway.errors import GatewayError, StoreUnavailable
from gateway.infra.crypto import Sealer, SealError, sign
from gateway.messaging.jobs import QUEUES, Enqueuer, actor_name, actor_options, decode_message, open_inbound_reply
from gateway.outbox.guard import Admission, Outbox, QueuedMessage, Verdict
from gateway.outbox.store import number_hash
from gateway.ports import DecisionSink, NoRecords, RecordSink
from gateway.records.refs import message_ref

log = logging.getLogger(__name__)

# Results an SMS can fix: the citizen is not reachable on KakaoTalk.
SMS_CAN_FIX = frozenset({SendResult.NOT_KAKAO_USER, SendResult.BLOCKED})

# A send's state in the archive (`SendFact.state`), as delivery reports name states too; a
# permanent refusal is "failed" with the provider's answer as detail. TEMPORARY_ERROR is no
# state: the job is retried.
_SEND_STATE = {SendResult.ACCEPTED: "sent", SendResult.OPTED_OUT: "opted_out"}


class TemporaryFailure(GatewayError):
    """Raised inside an actor so that dramatiq retries the message later."""


class UnreadableJob(GatewayError):
    """A payload that cannot be decoded: retrying cannot help, it goes to the dead letters."""


class NotConfigured(GatewayError):
    """A sink lacks its configuration (e.g. the webhook secret): straight to the dead letters,
    where /health shows it and `gateway deadletters redrive` sends it once it is fixed."""


class CircuitBreaker:
    """Opens after `threshold` consecutive temporary failures; lets one trial through after `cooldown_s`."""

    def __init__(self, threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        return self.state != "open"

    def success(self) -> None:
        self.failures, self.opened_at = 0, None

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = self.clock()

    def remaining_s(self) -> float:
        """Seconds until an open circuit lets a trial through (0 when not open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))


# An open circuit defers a message at most this often (about an hour at the 30 s cooldown)
# before the message takes the ordinary retry path towards the dead letters.
MAX_DEFERRALS = 120


class ReplySender(Protocol):
    """What the actors need of the citizens' replies (`gateway.inbox.replies.Replies`): the
    inbox flow owns replies; the runtime is given a way to build one over its outbox."""

    async def send(
        self, tid: str, to: str, city_number: str, text: str, action: str, *, rule_text: bool = False
    ) -> str: ...


def no_notify() -> NotifyRules | None:
    """No notify rules: a citizen's message gets its automatic reply, and no sink is told."""
    return None


class WorkerRuntime:
    """Everything the actors need. Built lazily on the worker's event loop (the async Redis
    client and the providers' HTTP sessions belong to the loop that uses them).

    `replies` builds the citizens' replies over the outbox once that exists; `notify` and
    `queue_names` read the rules in force (they change on reload)."""

    def __init__(
        self,
        build_outbox: Callable[[], Outbox],
        sealer: Sealer,
        enqueuer: Enqueuer,
        sink: DecisionSink | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        replies: Callable[[Outbox], ReplySender],
        notify: Callable[[], NotifyRules | None] = no_notify,
        queue_names: Callable[[], Mapping[str, str]] = dict,
        records: RecordSink | None = None,
    ) -> None:
        self._build_outbox = build_outbox
        self._build_replies = replies
        # Where the notification webhooks' secrets are read (`secret_env` in notify.yaml): the
        # process environment, or the one the demo and tests were given.
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self._outbox: Outbox | None = None
        self.sealer = sealer
        self.enqueuer = enqueuer
        self.sink = sink
        self.breakers: dict[str, CircuitBreaker] = {}
        self.notify = notify
        self.queue_names = queue_names
        self._replies: ReplySender | None = None
        self.handled = 0
        self.in_flight = 0
        self.deferred = 0  # jobs put back because their provider's circuit was open
        self._lock = threading.Lock()
        # The SQL archive: every citizen-bound send's state, every automatic reply's verdict.
        self.records: RecordSink = records if records is not None else NoRecords()

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = self._build_outbox()
        return self._outbox

    @property
    def built_outbox(self) -> Outbox | None:
        """The outbox if the first job built it already (metrics read it; they must not build it)."""
        return self._outbox

    @property
    def replies(self) -> ReplySender:
        """Built with the outbox, on the worker's event loop."""
        if self._replies is None:
            self._replies = self._build_replies(self.outbox)
        return self._replies

    def _emit(self, record: Mapping[str, Any]) -> None:
        if self.sink is not None:
            with self._lock:
                self.sink.decision(record)

    async def handle(self, queue: str, payload: Mapping[str, Any]) -> None:
        with self._lock:
            self.in_flight += 1
        try:
            await self._handle(queue, payload)
        finally:
            with self._lock:
                self.in_flight -= 1
                self.handled += 1

    async def _handle(self, queue: str, payload: Mapping[str, Any]) -> None:
        if queue == "inbound":
            await self._inbound(payload)
            return
        try:
            message = decode_message(payload, self.sealer)
        except (SealError, KeyError, ValueError, TypeError) as exc:
            # A payload we cannot read will not become readable by retrying: dead-letter it.
            log.error("unreadable %s job %s: %s", queue, payload.get("key", "?"), exc)
            raise UnreadableJob(f"unreadable job: {exc}") from None
        breaker = self.breakers.setdefault(message.provider, CircuitBreaker())
        if not breaker.allow():
            await self._defer(queue, payload, breaker, message.provider)
            return
        try:
            result = await self.outbox.send(message)
        except StoreUnavailable as exc:
            raise TemporaryFailure(str(exc)) from exc
        if isinstance(result, Verdict):
            self._report(message, result.value, "")
            if result is not Verdict.ALREADY_SENT:  # (its state was recorded when it was sent)
                self._record_send(message, result.value)
            return
        self._report(message, result.result.value, result.reference, result)
        if result.result is not SendResult.TEMPORARY_ERROR:
            self._record_send(message, _SEND_STATE.get(result.result, "failed"), result)
        if result.result is SendResult.TEMPORARY_ERROR:
            breaker.failure()
            raise TemporaryFailure(f"{result.provider}: {result.detail}")
        breaker.success()
        if message.alimtalk is not None and result.result in SMS_CAN_FIX:
            await self._sms_fallback(message, result)

    async def _defer(self, queue: str, payload: Mapping[str, Any], breaker: CircuitBreaker, provider: str) -> None:
        """An open circuit is the provider's failure, not the message's: put the message back for
        after the cooldown without spending one of its retries (raising would, and a long outage
        would then dead-letter messages that were never tried). The copy is enqueued before this
        job is acknowledged; if the worker dies in between, both run and the sent/attempt markers
        keep the citizen from getting it twice."""
        deferred = int(payload.get("deferred", 0))
        if deferred >= MAX_DEFERRALS:
            raise TemporaryFailure(f"provider {provider} circuit open ({deferred} deferrals)")
        delay = breaker.remaining_s() + random.uniform(0.0, 5.0)  # jitter: not all at the trial
        ok = await self.enqueuer.enqueue_payload(
            queue, {**payload, "deferred": deferred + 1}, f"{queue} job deferred by open circuit", delay_s=delay
        )
        if not ok:
            raise TemporaryFailure(f"provider {provider} circuit open; could not defer")
        with self._lock:
            self.deferred += 1

    async def _inbound(self, payload: Mapping[str, Any]) -> None:
        """A citizen's message is in its queue: send the rules' automatic reply (or opt-out
        confirmation), then tell the queue's sinks: a signed webhook, an SMS to the officer on
        duty. Each is idempotent (the reply's guard claim, webhook idempotency key, SMS sent
        marker), so a retry after a partial failure repeats nothing already done."""
        try:
            tid, queue, message_id = str(payload["thread"]), str(payload["queue"]), str(payload["message_id"])
            text = self.sealer.open(str(payload["text"]), tid.encode())
            reply = payload.get("reply")
            if reply:
                # sealed since payload v2; a job queued by the previous release has it in clear
                reply_to, reply_text, reply_action, reply_from = open_inbound_reply(reply, self.sealer, tid)
        except (SealError, KeyError, ValueError, TypeError) as exc:
            raise UnreadableJob(f"unreadable inbound notification: {exc}") from None
        if reply:
            replied = await self._reply(tid, reply_to, reply_from, reply_text, reply_action)
            self._record_auto_reply(tid, queue, payload, replied)
        rules = self.notify()
        if rules is None:
            return
        sinks = rules.sinks(queue)
        if sinks.webhook_url:
            await self._webhook(
                sinks.webhook_url,
                sinks.webhook_secret_env,
                {
                    "thread": tid,
                    "queue": queue,
                    "rule": payload.get("rule"),
                    "priority": payload.get("priority"),
                    "message_id": message_id,
                    "received_at": payload.get("at"),
                    "citizen": payload.get("citizen"),
                    "text": text,
                },
                f"{tid}:{message_id}",
            )
        if sinks.notify_duty_officer:
            officer = rules.officer_at(float(payload.get("at") or time.time()))
            if officer is None or not self.outbox.sms:
                log.warning("no officer on duty to tell about %s in %s", message_id, queue)
            else:
                key = f"notify:{message_id}:{officer.phone[-4:]}"
                kind, safe = choose(duty_sms(self.queue_names().get(queue, queue), text, tid))
                sender = rules.sender
                result = await self.outbox.send(
                    QueuedMessage(
                        key,
                        "inbound",
                        tid,
                        "duty_notify",
                        officer.phone,
                        next(iter(self.outbox.sms)),
                        sms=SmsRequest(key, officer.phone, sender, safe, "당직 알림", kind),
                    )
                )
                outcome = result.value if isinstance(result, Verdict) else result.result.value
                self._emit(
                    {
                        "event": "notified",
                        "thread": tid,
                        "queue": queue,
                        "sink": "duty_officer",
                        "officer": officer.name,
                        "result": outcome,
                    }
                )
                if not isinstance(result, Verdict) and result.result is SendResult.TEMPORARY_ERROR:
                    raise TemporaryFailure(f"duty SMS: {result.detail}")

    async def _reply(self, tid: str, to: str, city_number: str, text: str, action: str) -> str:
        """The automatic reply of a citizen's message, through the guard (a retried job finds it
        a duplicate; a citizen who opted out since gets none but the opt-out's confirmation)."""
        result = await self.replies.send(tid, to, city_number, text, action, rule_text=True)
        if result == Verdict.STORE_UNAVAILABLE.value:
            raise TemporaryFailure(f"reply {action}: redis unavailable")
        self._emit({"event": "replied", "thread": tid, "action": action, "to": to, "result": result})
        return result

    async def _webhook(self, url: str, secret_env: str, body: Mapping[str, Any], key: str) -> None:
        secret = self.environ.get(secret_env, "")
        if not secret:
            log.error("webhook %s: environment variable %s is not set; notification dead-lettered", url, secret_env)
            raise NotConfigured(f"webhook secret {secret_env} is not set")
        raw = json.dumps(body, ensure_ascii=False).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Signature-Timestamp": ts,
            "X-Signature": sign(secret, ts, url, raw),
            "X-Idempotency-Key": key,
        }
        # One session per notification: citizens' messages are few, and a session kept on the
        # actors' loop could never be closed cleanly (dramatiq stops that loop itself).
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.post(url, data=raw, headers=headers) as resp,
            ):
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TemporaryFailure(f"webhook {url}: {type(exc).__name__}") from None
        self._emit(
            {"event": "notified", "thread": body["thread"], "queue": body["queue"], "sink": "webhook", "result": status}
        )
        if not 200 <= status < 300:
            raise TemporaryFailure(f"webhook {url}: HTTP {status}")

    async def _sms_fallback(self, message: QueuedMessage, outcome: SendOutcome) -> None:
        alimtalk = message.alimtalk
        assert alimtalk is not None
        fallback = message.sms or alimtalk.fallback
        if fallback is None or not self.outbox.sms:
            log.warning(
                "%s to %s: %s and no SMS fallback configured", message.action, mask(message.recipient), outcome.result
            )
            return
        action = f"{message.action}_sms"
        verdict = await self.outbox.admit(Admission(message.pbx, message.call_id, action, message.recipient))
        if verdict is not Verdict.ADMITTED:
            self._report_sms(message, action, verdict.value)
            return
        key = self.outbox.key_for(message.pbx, message.call_id, action, message.recipient)
        sms = SmsRequest(
            idempotency_key=key,
            to=message.recipient,
            sender=fallback.sender,
            text=fallback.text,
            title=fallback.title,
            kind=fallback.kind,
        )
        provider = next(iter(self.outbox.sms))
        queued = QueuedMessage(
            key=key,
            pbx=message.pbx,
            call_id=message.call_id,
            action=action,
            recipient=message.recipient,
            provider=provider,
            sms=sms,
        )
        ok = await self.enqueuer.enqueue("sms", queued)
        if not ok:
            # The worker raises so the Alimtalk job is retried later: Alimtalk answers the same,
            # and the admission is already claimed, so only the enqueue is attempted again.
            raise TemporaryFailure("SMS fallback could not be queued")
        self._report_sms(message, action, "queued")
        self._record_send(message, _SEND_STATE.get(outcome.result, "failed"), outcome, fallback_used=True)

    async def aclose(self) -> None:
        """Close what the actors opened on their loop: providers' HTTP sessions, the Redis client."""
        outbox, self._outbox, self._replies = self._outbox, None, None
        if outbox is None:
            return
        providers: list[Any] = [*outbox.alimtalk.values(), *outbox.sms.values()]
        for provider in providers:
            try:
                await provider.close()
            except Exception as exc:  # closing must not stop the others from closing
                log.warning("closing provider %s: %s", getattr(provider, "name", "?"), exc)
        close = getattr(outbox.store, "aclose", None)
        if close is not None:
            await close()

    def provider_report(self) -> dict[str, dict[str, Any]]:
        """Per provider: the circuit breaker's state and the recent answers (for /health)."""
        stats = self._outbox.providers.snapshot() if self._outbox is not None else {}
        report: dict[str, dict[str, Any]] = {}
        for name in set(stats) | set(self.breakers):
            breaker = self.breakers.get(name)
            report[name] = {
                **stats.get(name, {"recent": 0, "recent_errors": 0, "error_rate": 0.0}),
                "circuit": breaker.state if breaker else "closed",
            }
        return report

    def _report(self, message: QueuedMessage, result: str, reference: str, outcome: SendOutcome | None = None) -> None:
        channel = "alimtalk" if message.alimtalk is not None else (message.sms.kind if message.sms else "?")
        self._emit(
            {
                "event": "sent",
                "pbx": message.pbx,
                "call": message.call_id,
                "action": message.action,
                "channel": channel,
                "to": message.recipient,
                "provider": message.provider,
                "result": result,
                "reference": reference,
                "detail": outcome.detail if outcome else "",
            }
        )

    def _record_send(
        self, message: QueuedMessage, state: str, outcome: SendOutcome | None = None, *, fallback_used: bool = False
    ) -> None:
        """The send's state for the archive (the latest state of a key wins there)."""
        try:
            channel = "alimtalk" if message.alimtalk is not None else (message.sms.kind if message.sms else "")
            detail = outcome.detail if outcome else ""
            if outcome is not None and state == "failed":
                detail = f"{outcome.result.value}: {detail}" if detail else outcome.result.value
            self.records.record(
                SendFact(
                    key=message.key,
                    purpose=message.action.partition(":")[0],
                    channel=str(channel),
                    provider=outcome.provider if outcome else message.provider,
                    state=state,
                    at=time.time(),
                    party_hash=number_hash(self.outbox.hash_key, message.recipient),
                    reference=outcome.reference if outcome else "",
                    detail=detail[:128],
                    fallback_used=fallback_used,
                )
            )
        except Exception:  # the archive must never fail a send
            log.exception("send %s not recorded", message.action)

    def _record_auto_reply(self, tid: str, queue: str, payload: Mapping[str, Any], result: str) -> None:
        """The automatic reply's (or opt-out confirmation's) verdict for the message's record."""
        try:
            ref = message_ref(str(payload.get("provider", "")), str(payload["message_id"]))
            self.records.record(
                ThreadFact(
                    thread=tid,
                    kind=ThreadEventKind.AUTO_REPLIED.value,
                    at=time.time(),
                    ref=ref,
                    message=ref,
                    queue=queue,
                    detail=result[:64],
                )
            )
        except Exception:
            log.exception("automatic reply of thread %s not recorded", tid)

    def _report_sms(self, message: QueuedMessage, action: str, result: str) -> None:
        self._emit(
            {
                "event": "sms",
                "pbx": message.pbx,
                "call": message.call_id,
                "action": action,
                "to": message.recipient,
                "result": result,
            }
        )


class CloseRuntime(Middleware):
    """At worker shutdown, once every job finished and before dramatiq stops the actors' event
    loop (the AsyncIO middleware's after_worker_shutdown), close the runtime on that loop."""

    def __init__(self, runtime: WorkerRuntime, timeout_s: float = 5.0) -> None:
        self.runtime = runtime
        self.timeout_s = timeout_s

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.runtime.aclose(), loop_thread.loop).result(self.timeout_s)
        except Exception as exc:
            log.warning("worker runtime not closed cleanly: %s", exc)


def declare_actors(broker: RedisBroker, runtime: WorkerRuntime) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Bind one async actor per queue to `broker`, all delegating to `runtime`."""
    # dramatiq runs "after" hooks in reverse order: placed after AsyncIO, ours runs before AsyncIO
    # stops the loop.
    broker.add_middleware(CloseRuntime(runtime), after=AsyncIO)
    actors: dict[str, dramatiq.Actor[Any, Any]] = {}
    for queue in QUEUES:

        async def deliver(payload: dict[str, Any], _queue: str = queue) -> None:
            await runtime.handle(_queue, payload)

        deliver.__name__ = actor_name(queue)
        options = actor_options(queue)
        decorate = dramatiq.actor(
            broker=broker,
            actor_name=actor_name(queue),
            queue_name=queue,
            throws=(UnreadableJob, NotConfigured),
            **options,
        )
        actors[queue] = decorate(deliver)
    return actors
