"""The call pipeline: AMI events -> tracker -> lettering policy -> outbox -> decisions.

Implements `AmiListener` for any number of PBXes (one tracker each). Everything on the
event path is synchronous and pure except the outbox call, which runs as a task so the
AMI reader is never held up by Redis or a carrier.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.calls.pbx.mapping import channel_listed, to_leg_event
from gateway.domain.calls import CallEnded, CallTracker, ExternalDial, TrackerOutput
from gateway.domain.lettering import Letter, Skip, decide
from gateway.domain.models import (
    AlimtalkRequest,
    CallRecord,
    Direction,
    Disposition,
    LetteringRequest,
    LetteringResult,
    NumberKind,
    SmsRequest,
)
from gateway.domain.numbers import NumberPlan, display, mask
from gateway.domain.postcall import (
    MessagingRules,
    PostcallPlan,
    call_notice_sms,
    call_notice_variables,
    plan_postcall,
    postcall_sms,
    postcall_variables,
)
from gateway.domain.records import CallFact, LetteringKind
from gateway.domain.rules import Rules
from gateway.domain.smstext import choose
from gateway.messaging.jobs import Enqueuer
from gateway.outbox.guard import Admission, Outbox, Outgoing, QueuedMessage, Verdict
from gateway.outbox.store import number_hash
from gateway.ports import DecisionSink, NoRecords, RecordSink, SessionChange, SessionKind

log = logging.getLogger(__name__)

# How long an ended call's record waits for its lettering (and call notice) and post-call
# decision to finish: in replay's fast mode a call ends before the carrier answered.
RECORD_WAIT_S = 30.0
# Calls noted (dialled, lettering in flight) at most: the tracker ends every call it tracks,
# so this only bounds memory against a bug or a tracker that loses calls.
MAX_NOTED_CALLS = 100_000

# A call that dialled more than one outside number keeps the best of what lettering did.
_RANK = {
    LetteringKind.SKIPPED: 0,
    LetteringKind.FAILED: 1,
    LetteringKind.NOT_SUBSCRIBED: 2,
    LetteringKind.UNSUPPORTED_DEVICE: 3,
    LetteringKind.DELIVERED: 4,
}
_RESULT_KIND = {
    LetteringResult.DELIVERED: LetteringKind.DELIVERED,
    LetteringResult.UNSUPPORTED_DEVICE: LetteringKind.UNSUPPORTED_DEVICE,
    LetteringResult.NOT_SUBSCRIBED: LetteringKind.NOT_SUBSCRIBED,
    LetteringResult.REJECTED: LetteringKind.FAILED,
    LetteringResult.TEMPORARY_ERROR: LetteringKind.FAILED,
}


@dataclass(slots=True)
class _CallNotes:
    """What the flow decided for one call before and after it ended, for its `CallFact`."""

    lettering: LetteringKind | None = None
    reason: str = ""
    call_notice: str = ""
    postcall: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # lettering (with its call notice)

    def lettered(self, kind: LetteringKind, reason: str) -> None:
        if self.lettering is None or _RANK[kind] > _RANK[self.lettering]:
            self.lettering, self.reason = kind, reason


def plan_of(rules: Rules) -> NumberPlan:
    return NumberPlan(
        outside_line_prefixes=rules.lettering.outside_line_prefixes, extension_pattern=rules.lettering.extension_pattern
    )


class CallPipeline:
    """Turns the AMI streams of several PBXes into lettering and call records."""

    def __init__(
        self,
        rules: Callable[[], Rules],
        outbox: Outbox,
        sink: DecisionSink,
        *,
        trunks: Mapping[str, tuple[str, ...]],
        expire_every_s: float = 60.0,
        messaging: Callable[[], MessagingRules] | None = None,
        enqueuer: Enqueuer | None = None,
        alimtalk_provider: str = "",
        lease_s: float | None = None,
        on_latency: Callable[[float], None] | None = None,
        records: RecordSink | None = None,
    ) -> None:
        self._rules = rules
        self._messaging = messaging or MessagingRules
        self.enqueuer = enqueuer
        self.alimtalk_provider = alimtalk_provider
        self.outbox = outbox
        self.sink = sink
        self._trunks = dict(trunks)
        self._trackers: dict[str, CallTracker] = {}
        self._plan_for: Rules | None = None
        self._plan = plan_of(rules())
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_expiry = time.monotonic()
        self._expire_every_s = expire_every_s
        self.events_handled = 0
        self.dial_latencies_ms: list[float] = []  # AMI receipt -> adapter call, bounded below
        self.on_latency = on_latency  # the /metrics histogram, in seconds
        self.calls_by: dict[tuple[str, str, str], int] = {}
        # Lettering claims are leases this long until the carrier answered (Outgoing.lease_s);
        # None: claims are final at once. Given by the composition root from the carriers' deadlines.
        self.lease_s = lease_s
        # The SQL archive's sink: one CallFact per ended call (nothing noted when there is none).
        self.records: RecordSink = records if records is not None else NoRecords()
        self._recording = not isinstance(self.records, NoRecords)
        self._notes: dict[tuple[str, str], _CallNotes] = {}
        self.records_waits_timed_out = 0

    # -------------------------------------------------------------- listener
    def tracker(self, pbx: str) -> CallTracker:
        tracker = self._trackers.get(pbx)
        rules = self._rules()
        if rules is not self._plan_for:
            self._plan_for, self._plan = rules, plan_of(rules)
            for existing in self._trackers.values():
                existing.plan = self._plan
        if tracker is None:
            tracker = CallTracker(pbx, self._plan, self._trunks.get(pbx, ()))
            self._trackers[pbx] = tracker
        return tracker

    def ami_event(self, pbx: str, event: Mapping[str, str], at: float) -> None:
        self.events_handled += 1
        received = time.perf_counter()
        leg_event = to_leg_event(event, at)
        if leg_event is not None:
            self._apply(self.tracker(pbx).handle(leg_event), received)
        elif event.get("Event") == "Shutdown":
            log.warning("pbx %s is shutting down (restart=%s)", pbx, event.get("Restart", "?"))
        now = time.monotonic()
        if now - self._last_expiry > self._expire_every_s:
            self._last_expiry = now
            self._apply(self.tracker(pbx).expire(at), received)

    def ami_session(self, pbx: str, change: SessionChange, at: float) -> None:
        tracker = self.tracker(pbx)
        received = time.perf_counter()
        if change.kind is SessionKind.RESYNC_STARTED:
            tracker.resync_started()
        elif change.kind is SessionKind.RESYNCED:
            listed = [item for item in (channel_listed(c, at) for c in change.channels) if item is not None]
            log.info("pbx %s resynced: %d live channels, %d calls tracked", pbx, len(listed), tracker.live_calls)
            self._apply(tracker.resynced(at, listed), received)
        elif change.kind is SessionKind.PBX_RESTARTED:
            log.warning(
                "pbx %s restarted (uptime %s): ending its %d tracked calls", pbx, change.uptime, tracker.live_calls
            )
            self._apply(tracker.pbx_restarted(at), received)
        elif change.kind is SessionKind.LOST:
            tracker.connection_lost(at)  # calls found gone after the reconnect ended by then
        self.sink.decision({"event": "pbx", "pbx": pbx, "state": change.kind.value, "detail": change.detail})

    # -------------------------------------------------------------- decisions
    def _apply(self, outputs: list[TrackerOutput], received: float) -> None:
        for output in outputs:
            if isinstance(output, ExternalDial):
                self._on_dial(output, received)
            elif isinstance(output, CallEnded):
                self._on_ended(output)

    def _on_dial(self, dial: ExternalDial, received: float) -> None:
        decision = decide(dial, self._rules())
        if isinstance(decision, Skip):
            self._skipped(decision.pbx, decision.call_id, decision.reason, decision.to)
            return
        task = self._spawn(self._letter(decision, received))
        if self._recording:
            self._note(dial.pbx, dial.call_id).tasks.append(task)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -------------------------------------------------------------- records
    def _note(self, pbx: str, call_id: str) -> _CallNotes:
        """The notes of a call, made on its first decision."""
        key = (pbx, call_id)
        notes = self._notes.get(key)
        if notes is None:
            if len(self._notes) >= MAX_NOTED_CALLS:
                del self._notes[next(iter(self._notes))]  # the oldest: a call the tracker never ended
            notes = self._notes[key] = _CallNotes()
        return notes

    def _noted(self, pbx: str, call_id: str) -> _CallNotes | None:
        """The notes of a call still waiting for its record (None once recorded: nothing new is made)."""
        return self._notes.get((pbx, call_id)) if self._recording else None

    async def _record_call(self, r: CallRecord, waits: list[asyncio.Task[None]]) -> None:
        """The call's `CallFact`, once its lettering and post-call decision are made (bounded)."""
        pending = [t for t in waits if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=RECORD_WAIT_S)
            if still:
                self.records_waits_timed_out += 1
        notes = self._notes.pop((r.pbx, r.call_id), None) or _CallNotes()
        try:
            self.records.record(self._call_fact(r, notes))
        except Exception:  # the archive must never break the flow; a bug is logged
            log.exception("call %s on %s not recorded", r.call_id, r.pbx)

    def _call_fact(self, r: CallRecord, notes: _CallNotes) -> CallFact:
        department = self._rules().directory.lookup(r.extension) if r.extension else None
        external = bool(r.party) and r.party_kind is not NumberKind.EXTENSION
        return CallFact(
            pbx=r.pbx,
            call_id=r.call_id,
            direction=r.direction.value,
            extension=r.extension,
            department=department.id if department is not None else "",
            party_hash=number_hash(self.outbox.hash_key, r.party) if external else "",
            party_kind=r.party_kind.value,
            disposition=r.disposition.value,
            cause=r.cause,
            started_at=r.started_at,
            answered_at=r.answered_at,
            ended_at=r.ended_at,
            ring_seconds=max(0.0, (r.answered_at or r.ended_at) - r.started_at),
            talk_seconds=r.talk_seconds,
            lettering=(notes.lettering or LetteringKind.SKIPPED).value,
            lettering_reason=notes.reason if notes.lettering is not None else "unknown",
            call_notice=notes.call_notice,
            postcall=notes.postcall,
            transfers=len(r.transfers),
            recovered=r.recovered,
        )

    async def _letter(self, letter: Letter, received: float) -> None:
        request = letter.request
        policy = self._rules().lettering
        outgoing = Outgoing(
            pbx=request.pbx,
            call_id=request.call_id,
            action="lettering",
            recipient=request.to,
            provider=letter.provider,
            payload=request,
            rate_limit=policy.rate_limit_count,
            rate_window_s=policy.rate_limit_window_s,
            lease_s=self.lease_s,
        )
        tracker = self.tracker(request.pbx)
        try:
            # A peer gateway holding the call's lease is watched while the phone rings: if it
            # dies, this gateway takes the call over (Outbox.deliver).
            delivery = await self.outbox.deliver(outgoing, ringing=lambda: tracker.ringing(request.call_id))
        except Exception:  # a bug must not kill the AMI reader; it is logged with its traceback
            log.exception("lettering for call %s failed", request.call_id)
            if (notes := self._noted(request.pbx, request.call_id)) is not None:
                notes.lettered(LetteringKind.FAILED, "error")
            return
        if delivery.verdict is Verdict.KNOWN_NO_LETTERING:
            # This phone answered `unsupported_device` before: straight to the Alimtalk call notice.
            self._skipped(request.pbx, request.call_id, delivery.verdict.value, request.to)
            await self._call_notice(request)
            return
        if delivery.verdict is not Verdict.SENT or delivery.outcome is None:
            self._skipped(request.pbx, request.call_id, delivery.verdict.value, request.to)
            return
        latency_ms = (delivery.started - received) * 1000
        if len(self.dial_latencies_ms) < 100_000:
            self.dial_latencies_ms.append(latency_ms)
        if self.on_latency is not None:
            self.on_latency(latency_ms / 1000)  # seconds: Prometheus's base unit
        if (notes := self._noted(request.pbx, request.call_id)) is not None:
            result = delivery.outcome.result
            notes.lettered(_RESULT_KIND[result], "" if result is LetteringResult.DELIVERED else result.value)
        self.sink.decision(
            {
                "event": "lettering",
                "pbx": request.pbx,
                "call": request.call_id,
                "extension": request.extension,
                "to": request.to,
                "provider": delivery.outcome.provider,
                "organisation": request.organisation,
                "department": request.department,
                "text": request.text,
                "result": delivery.outcome.result.value,
                "detail": delivery.outcome.detail,
            }
        )
        if delivery.outcome.result is LetteringResult.UNSUPPORTED_DEVICE:
            await self._call_notice(request)

    def _skipped(self, pbx: str, call_id: str, reason: str, to: str = "") -> None:
        log.info("call %s on %s not lettered: %s %s", call_id, pbx, reason, mask(to))
        if self._recording:
            self._note(pbx, call_id).lettered(LetteringKind.SKIPPED, reason)
        record: dict[str, Any] = {"event": "skipped", "pbx": pbx, "call": call_id, "reason": reason}
        if to:
            record["to"] = to
        self.sink.decision(record)

    def _on_ended(self, ended: CallEnded) -> None:
        r = ended.record
        key = (r.pbx, r.direction.value, r.disposition.value)
        self.calls_by[key] = self.calls_by.get(key, 0) + 1
        log.info(
            "call %s on %s ended: %s %s -> %s %s (%s) talk %.1fs",
            r.call_id,
            r.pbx,
            r.direction,
            r.extension,
            mask(r.party),
            r.disposition,
            r.cause,
            r.talk_seconds,
        )
        if ended.external_dials == 0:
            self._skipped(r.pbx, r.call_id, self._unlettered_reason(r))
        waits: list[asyncio.Task[None]] = []
        if self._recording:
            waits.extend(self._note(r.pbx, r.call_id).tasks)
        if (
            r.direction is Direction.OUTBOUND
            and r.disposition is Disposition.ANSWERED
            and r.party_kind is NumberKind.MOBILE
            and self.enqueuer is not None
        ):
            waits.append(self._spawn(self._postcall(r)))
        if self._recording:
            self._spawn(self._record_call(r, waits))
        self.sink.decision(
            {
                "event": "call",
                "pbx": r.pbx,
                "call": r.call_id,
                "direction": r.direction.value,
                "extension": r.extension,
                "party": r.party,
                "disposition": r.disposition.value,
                "talk_seconds": round(r.talk_seconds),
                "cause": r.cause,
                "started_at": round(r.started_at, 3),
                "answered_at": round(r.answered_at, 3) if r.answered_at else None,
                "ended_at": round(r.ended_at, 3),
                "transfers": [{"kind": t.kind, "to": t.to} for t in r.transfers],
                "recovered": r.recovered,
            }
        )

    def _unlettered_reason(self, r: CallRecord) -> str:
        """Why a call that never rang an outside number here was not lettered."""
        if r.direction is not Direction.OUTBOUND:
            return r.direction.value if r.party else "not_dialed"
        if r.recovered and r.party and r.answered_at is not None:
            # Already answered when this gateway first saw it (rebuilt from CoreShowChannels after a
            # gateway restart or reconnect): too late for lettering; whoever saw it ring decided then.
            # The policy's own reason (landline, internal, ...) still comes first.
            plan = self.tracker(r.pbx).plan
            dial = ExternalDial(
                r.pbx,
                r.call_id,
                r.started_at,
                r.extension,
                plan.classify(r.party),
                r.trunk,
                r.direction,
                recovered=True,
            )
            decision = decide(dial, self._rules())
            return decision.reason if isinstance(decision, Skip) else "recovered"
        return "not_dialed"  # the desk phone never reached the outside number

    # -------------------------------------------------------- durable messages
    async def _call_notice(self, request: LetteringRequest) -> None:
        """The lettering an iPhone cannot show, as a Kakao Alimtalk (SMS/LMS as fallback)."""
        rules = self._messaging()
        record: dict[str, Any] = {
            "event": "alimtalk",
            "pbx": request.pbx,
            "call": request.call_id,
            "to": request.to,
            "purpose": "call_notice",
            "template": rules.call_notice_template,
        }
        notes = self._noted(request.pbx, request.call_id)
        if self.enqueuer is None or not self.alimtalk_provider:
            if notes is not None:
                notes.call_notice = "not_configured"
            self.sink.decision({**record, "result": "not_configured"})
            return
        policy = self._rules().lettering
        key = self.outbox.key_for(request.pbx, request.call_id, "call_notice", request.to)
        shown = display(request.caller_number) if request.caller_number else ""
        # The SMS/LMS text goes along either way: the provider sends it itself (대체발송) when asked
        # to, otherwise the worker queues it when Alimtalk cannot reach the citizen.
        fallback = None
        if request.caller_number:
            kind, text = choose(call_notice_sms(request.text, shown))
            fallback = SmsRequest(key, request.to, request.caller_number, text, f"[{request.organisation}]", kind)
        alimtalk = AlimtalkRequest(
            key,
            request.to,
            rules.call_notice_template,
            call_notice_variables(request.organisation, request.department, request.text, request.caller_number, shown),
            fallback=fallback if rules.provider_resend else None,
        )
        message = QueuedMessage(
            key,
            request.pbx,
            request.call_id,
            "call_notice",
            request.to,
            self.alimtalk_provider,
            alimtalk=alimtalk,
            sms=fallback,
        )
        # Admitted and queued in one atomic step: never admitted-but-lost (a retry would find it
        # a duplicate) nor queued past the guard.
        verdict = await self.outbox.admit(
            Admission(
                request.pbx,
                request.call_id,
                "call_notice",
                request.to,
                rate_limit=policy.rate_limit_count,
                rate_window_s=policy.rate_limit_window_s,
            ),
            then=self.enqueuer.prepare_message("call_notice", message),
        )
        if verdict is Verdict.ADMITTED:
            self.enqueuer.enqueued += 1
        result = "queued" if verdict is Verdict.ADMITTED else verdict.value
        if notes is not None:
            notes.call_notice = result
        self.sink.decision({**record, "result": result})

    async def _postcall(self, r: CallRecord) -> None:
        department = self._rules().directory.lookup(r.extension) if r.extension else None
        rules = self._messaging()
        plan = plan_postcall(r, department, rules, r.ended_at)
        record: dict[str, Any] = {
            "event": "postcall",
            "pbx": r.pbx,
            "call": r.call_id,
            "to": r.party,
            "content": department.postcall if department else None,
        }
        notes = self._noted(r.pbx, r.call_id)
        if not isinstance(plan, PostcallPlan):
            if notes is not None:
                notes.postcall = plan.reason
            self.sink.decision({**record, "result": plan.reason})
            return
        assert self.enqueuer is not None
        key = self.outbox.key_for(r.pbx, r.call_id, "postcall", r.party)
        dept, content = plan.department, plan.content
        fallback = None
        if dept.caller_number:
            kind, text = choose(postcall_sms(content, dept))
            fallback = SmsRequest(key, r.party, dept.caller_number, text, content.title, kind)
        alimtalk = AlimtalkRequest(
            key,
            r.party,
            rules.postcall_template,
            postcall_variables(content, dept),
            content.buttons,
            fallback if rules.provider_resend else None,
        )
        # Quiet hours are judged on the call's own clock (the PBX's), the delay applied from now.
        delay = (plan.not_before - r.ended_at) if plan.not_before else 0.0
        message = QueuedMessage(
            key, r.pbx, r.call_id, "postcall", r.party, self.alimtalk_provider, alimtalk=alimtalk, sms=fallback
        )
        # Admitted (opt-out, dedupe, frequency cap) and queued in one atomic step.
        verdict = await self.outbox.admit(
            Admission(
                r.pbx,
                r.call_id,
                "postcall",
                r.party,
                cap_key=f"postcall:{plan.department.id}",
                cap_ttl_s=rules.frequency_cap_days * 86400,
            ),
            then=self.enqueuer.prepare_message("postcall", message, delay_s=delay),
        )
        if verdict is not Verdict.ADMITTED:
            if notes is not None:
                notes.postcall = verdict.value
            self.sink.decision({**record, "result": verdict.value})
            return
        self.enqueuer.enqueued += 1
        # The citizen may text back: route that to the department that wrote.
        await self.outbox.store.remember_contact(number_hash(self.outbox.hash_key, r.party), dept.id)
        result = "deferred" if delay > 0 else "queued"
        if notes is not None:
            notes.postcall = result
        self.sink.decision({**record, "result": result, **({"delay_s": round(delay)} if delay > 0 else {})})

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for in-flight lettering (graceful shutdown, end of a replay)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def status(self) -> dict[str, Any]:
        return {
            "events_handled": self.events_handled,
            "in_flight": len(self._tasks),
            "calls": {pbx: t.live_calls for pbx, t in self._trackers.items()},
            "outbox": dict(self.outbox.counts),
        }
