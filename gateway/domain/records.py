"""What the records store keeps: facts about ended calls, citizens' threads and sends.

Facts are written once, off the hot path, into the SQL archive (`gateway.records`). Each has a
stable `key` so that a redelivered fact (a worker restarted between writing and acknowledging)
is recognised and counted once. No fact holds a phone number: a citizen is the number's keyed
hash (`party_hash`), texts are sealed (AES-GCM, bound to the thread id) as Redis keeps them.

`to_wire` / `from_wire` turn a fact into plain dicts (msgpack'd by the emitter) and back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

SEOUL = ZoneInfo("Asia/Seoul")


def seoul_day(epoch: float) -> date:
    """The calendar day in Seoul of an epoch time: reports and roll-ups count by it."""
    return datetime.fromtimestamp(epoch, SEOUL).date()


class LetteringKind(StrEnum):
    """What lettering did for a call, as the answer-rate report splits it."""

    DELIVERED = "delivered"  # shown on the citizen's screen while it rang
    UNSUPPORTED_DEVICE = "unsupported_device"  # the phone cannot show it: Kakao Alimtalk instead
    NOT_SUBSCRIBED = "not_subscribed"  # no lettering contract for this subscriber
    FAILED = "failed"  # the carrier rejected it or did not answer in time
    SKIPPED = "skipped"  # not asked for; `lettering_reason` says why (landline, opted_out, ...)


class ThreadEventKind(StrEnum):
    """A step in a citizen's message's life in a staff queue."""

    RECEIVED = "received"  # accepted and routed (queue, rule, tags)
    AUTO_REPLIED = "auto_replied"  # the queue's automatic reply was sent (or suppressed: detail)
    CLAIMED = "claimed"  # a staff member took the thread
    ANSWERED = "answered"  # a staff member's answer was queued for the citizen
    CLOSED = "closed"  # the thread was closed by staff


@dataclass(frozen=True, slots=True)
class CallFact:
    """One ended call, with what lettering, the call notice and the post-call content did."""

    pbx: str
    call_id: str
    direction: str  # models.Direction
    extension: str
    department: str  # the directory's department id, "" when the extension is not in it
    party_hash: str  # keyed hash of the citizen's E.164 number ("" for internal calls)
    party_kind: str  # models.NumberKind
    disposition: str  # models.Disposition
    cause: str
    started_at: float
    answered_at: float | None
    ended_at: float
    ring_seconds: float  # until answered, or until the call ended unanswered
    talk_seconds: float
    lettering: str  # LetteringKind
    lettering_reason: str = ""  # why skipped, or the carrier's detail when failed
    call_notice: str = ""  # the Alimtalk call notice's verdict ("" when none was tried)
    postcall: str = ""  # the post-call content's verdict ("" when none was tried)
    transfers: int = 0
    recovered: bool = False

    @property
    def key(self) -> str:
        return f"{self.pbx}:{self.call_id}"


@dataclass(frozen=True, slots=True)
class ThreadFact:
    """One step of a thread's lifecycle (`ThreadEventKind`)."""

    thread: str
    kind: str  # ThreadEventKind
    at: float
    ref: str  # what makes the step unique in the thread: message id, reply reference, staff id
    message: str = ""  # RECEIVED / AUTO_REPLIED: the message's key (provider:message id digest)
    queue: str = ""
    rule: str = ""
    tags: tuple[str, ...] = ()
    day_type: str = ""  # routing.DayType at receipt
    after_hours: bool = False  # received outside office hours (or on a weekend or holiday)
    staff: str = ""
    detail: str = ""  # e.g. an auto-reply's verdict ("sent", "opted_out", "superseded")
    party_hash: str = ""
    sealed_text: str = ""  # the message or answer, sealed as the thread keeps it

    @property
    def key(self) -> str:
        return f"{self.thread}:{self.kind}:{self.ref}"


@dataclass(frozen=True, slots=True)
class SendFact:
    """A citizen-bound send's state: written when it changes, the latest state wins."""

    key: str  # the send's idempotency key
    purpose: str  # postcall, call_notice, auto_reply, reply, optout_confirm, ...
    channel: str  # alimtalk, sms, lms
    provider: str
    state: str  # queued, sent, delivered, failed, or a guard verdict (opted_out, duplicate, ...)
    at: float
    party_hash: str = ""
    reference: str = ""  # the provider's message id
    detail: str = ""
    fallback_used: bool = False


Fact = CallFact | ThreadFact | SendFact

_KINDS: dict[str, type[CallFact] | type[ThreadFact] | type[SendFact]] = {
    "call": CallFact,
    "thread": ThreadFact,
    "send": SendFact,
}
_NAMES = {cls: name for name, cls in _KINDS.items()}


class BadFact(ValueError):
    """A wire record that is not a fact of this release (logged and skipped by the writer)."""


def to_wire(fact: Fact) -> dict[str, Any]:
    """A plain dict (str keys; str, float, int, bool, None and lists) with the kind in `t`."""
    data = asdict(fact)
    if isinstance(fact, ThreadFact):
        data["tags"] = list(fact.tags)
    data["t"] = _NAMES[type(fact)]
    return data


def from_wire(data: dict[str, Any]) -> Fact:
    """The fact `to_wire` made; unknown fields (a newer release's) are ignored."""
    cls = _KINDS.get(str(data.get("t", "")))
    if cls is None:
        raise BadFact(f"unknown fact kind {data.get('t')!r}")
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in data.items() if k in names}
    if cls is ThreadFact and "tags" in values:
        values["tags"] = tuple(str(t) for t in values["tags"])
    try:
        return cls(**values)
    except TypeError as exc:
        raise BadFact(f"{data.get('t')} fact: {exc}") from exc
