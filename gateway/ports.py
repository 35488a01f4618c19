"""Ports: the small interfaces between the gateway core and the outside world.

One `typing.Protocol` per port. Adapters implement them; only the composition root
(`gateway/app/gateway.py`) knows which implementation is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from gateway.domain.audit import AccessEntry
from gateway.domain.models import (
    AlimtalkRequest,
    LetteringOutcome,
    LetteringRequest,
    SendOutcome,
    SmsRequest,
)
from gateway.domain.records import Fact
from gateway.domain.staff import Account


class LetteringCarrier(Protocol):
    """A carrier (or app-push provider) that shows caller-ID lettering on a ringing phone.

    `letter` must return within the adapter's own deadline and never raise for carrier-side
    problems: timeouts, 5xx and garbage answers are `LetteringResult.TEMPORARY_ERROR`.
    It is only ever called by the outbox guard (`gateway/outbox/guard.py`).
    """

    name: str

    async def letter(self, request: LetteringRequest) -> LetteringOutcome: ...

    async def close(self) -> None: ...


class SessionKind(StrEnum):
    CONNECTED = "connected"  # TCP up, banner read
    AUTHENTICATED = "authenticated"  # Login accepted
    AUTH_FAILED = "auth_failed"  # Login rejected (wrong user/secret)
    RESYNC_STARTED = "resync_started"  # CoreShowChannels sent; events before this are older
    RESYNCED = "resynced"  # `channels` holds every live channel at the PBX
    PBX_RESTARTED = "pbx_restarted"  # FullyBooted Uptime shows Asterisk restarted since last session
    LOST = "lost"  # connection closed or replaced (EOF, error, silent peer)


@dataclass(frozen=True, slots=True)
class SessionChange:
    kind: SessionKind
    detail: str = ""
    channels: Sequence[Mapping[str, str]] = field(default=())  # CoreShowChannel events (RESYNCED)
    uptime: int | None = None  # FullyBooted Uptime, when known


class AmiListener(Protocol):
    """Receives what one PBX connection reads.

    Both methods are called from the event loop, synchronously, in the order the bytes
    arrived: they must not block (Asterisk drops a consumer that stalls for 100 ms).
    """

    def ami_event(self, pbx: str, event: Mapping[str, str], at: float) -> None:
        """One AMI event (header names as sent, first value of repeated headers).

        `at` is epoch seconds: the event's `Timestamp` header when the PBX sends one
        (manager.conf `timestampevents = yes`), else the time it was read.
        """
        ...

    def ami_session(self, pbx: str, change: SessionChange, at: float) -> None: ...


class OutboxStore(Protocol):
    """Shared state behind the outbox guard (Redis in production).

    `claim` decides atomically, for all gateways sharing the store, whether a message may
    be admitted: opt-out, dedupe key, optional frequency cap, per-recipient rate limit.
    `check_send`/`mark_sent` protect the moment a queued message is handed to a provider.
    Every method raises `StoreUnavailable` when the store cannot answer.
    """

    async def claim(
        self,
        *,
        dedupe_key: str,
        recipient_hash: str,
        ttl_s: float,
        rate_limit: int,
        rate_window_s: int,
        cap_key: str = "",
        cap_ttl_s: int = 0,
        check_no_lettering: bool = False,
        ignore_optout: bool = False,
        lease: bool = False,
        then: QueuePut | None = None,
    ) -> str:
        """ "ok", "ok_no_lettering", "duplicate", "leased" (held by a lease not yet settled),
        "opted_out", "capped" or "rate_limited". With `lease`, the claim is a lease for `ttl_s`.
        With `then`, an admitted claim also queues that job, in the same atomic step."""
        ...

    async def check_send(self, *, recipient_hash: str, idempotency_key: str) -> str:
        """ "ok", "opted_out" or "already_sent"."""
        ...

    async def mark_sent(self, *, idempotency_key: str, provider: str, reference: str, ttl_s: int = ...) -> None: ...

    async def settle(self, *, dedupe_key: str, ttl_s: int, audit: Mapping[str, Any] | None = None) -> None:
        """Make a claim taken as a short lease final (and write its audit entry)."""
        ...

    async def settle_many(self, items: Sequence[tuple[str, int, Mapping[str, Any] | None]]) -> None:
        """`settle` for several claims in one round trip."""
        ...

    async def begin_attempt(self, *, idempotency_key: str, ttl_s: int = ...) -> float | None:
        """Note that a send of this message starts now; the time of an earlier attempt whose
        outcome was never recorded (None on the first attempt)."""
        ...

    async def remember_no_lettering(self, recipient_hash: str, ttl_s: int) -> None: ...

    async def remember_contact(self, recipient_hash: str, department: str, ttl_s: int = ...) -> None: ...

    async def record(self, *, dedupe_key: str, fields: Mapping[str, Any]) -> None:
        """Append the outcome of a send to the audit trail. Best effort."""
        ...


class DecisionSink(Protocol):
    """Where the pipeline reports its decisions (replay JSON lines, demo console, logs)."""

    def decision(self, record: Mapping[str, Any]) -> None: ...


class AlimtalkProvider(Protocol):
    """Kakao Alimtalk through a Korean messaging provider (NHN Cloud, Solapi, ...).

    Like every adapter: never raises for provider problems, returns a typed `SendOutcome`,
    honours a hard deadline, and passes `idempotency_key` to the provider so that a retried
    or redelivered job never reaches the citizen twice. Called only by the outbox guard.
    """

    name: str

    async def send_alimtalk(self, request: AlimtalkRequest) -> SendOutcome: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class QueuePut:
    """A job ready to be put on a queue where dramatiq's broker puts it (`gateway.messaging.jobs`), and an
    optional stream entry: what `OutboxStore.claim(then=...)` does in the claim's atomic step."""

    msgs_key: str
    queue_key: str
    message_id: str
    data: bytes
    stream_key: str = ""
    stream_fields: tuple[tuple[str, str], ...] = ()


@runtime_checkable
class SentLookup(Protocol):
    """A provider that can tell whether it already took a message (by its idempotency key).

    Used only when an earlier attempt's outcome is unknown (a worker killed mid-request, an
    answer after the deadline) and the provider has no idempotency key of its own: asking
    first keeps a redelivered job from putting a second SMS on a citizen's phone."""

    async def find_sent(self, request: SmsRequest, since: float) -> SendOutcome | None:
        """ACCEPTED (with the reference) if taken since `since` (epoch s), None if not,
        TEMPORARY_ERROR if the provider cannot tell now."""
        ...


class SmsProvider(Protocol):
    """SMS/LMS from the city's registered sender numbers. Same rules as `AlimtalkProvider`."""

    name: str

    async def send_sms(self, request: SmsRequest) -> SendOutcome: ...

    async def close(self) -> None: ...


class RecordSink(Protocol):
    """Where the flows hand facts for the SQL archive (`gateway.records`).

    `record` never blocks and never raises: it is called on the event loop, after the
    real-time work (a lettering, an accept) is done, and the archive must not slow or fail
    that work. Implementations buffer (bounded, counting what they drop) and write in batches
    elsewhere: the gateway's emitter to a Redis stream the worker drains, replay's straight
    into a store."""

    def record(self, fact: Fact) -> None: ...


class NoRecords:
    """The sink when nothing is archived (unit tests, tools)."""

    def record(self, fact: Fact) -> None:
        return None


# ------------------------------------------------------------------ staff (issue #16)
@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """A login attempt's result: `account` when it succeeded; else `reason` ("unknown",
    "wrong_password", "disabled", "locked") and, when locked, until when."""

    account: Account | None
    reason: str = ""
    locked_until: float | None = None


class StaffDirectory(Protocol):
    """The people who may use the console and the staff API (`gateway.staff.accounts`).

    Every method raises `StoreUnavailable` when the records database cannot be reached: the
    console then answers 503, never lets anyone in unchecked."""

    async def login(self, username: str, password: str, *, ip: str) -> LoginOutcome:
        """Check a password: counts failures, locks the account after the policy's limit (and
        records the failure and the lock as access records)."""
        ...

    async def account(self, account_id: int) -> Account | None:
        """An account by id (None: no such account). A disabled one is returned disabled."""
        ...

    async def by_username(self, username: str) -> Account | None: ...

    async def accounts(self) -> Sequence[Account]: ...

    async def account_for_token(self, token: str) -> Account | None:
        """The person a staff-API bearer token belongs to (None: unknown, revoked, or the account
        is disabled)."""
        ...


class AccessLog(Protocol):
    """The access records (접속기록, `gateway.staff.audit`): append-only, hash-chained.

    `record` returns once the record is durable, or raises `StoreUnavailable`: what cannot be
    recorded is not done (a thread is not shown when its view cannot be recorded)."""

    async def record(self, entry: AccessEntry) -> None: ...


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in console session: whose, its CSRF token, when it began and from where."""

    id: str
    account_id: int
    csrf: str
    created_at: float
    ip: str


class SessionStore(Protocol):
    """Console sessions (`gateway.staff.sessions`, in Redis): an idle timeout refreshed on every
    request and a maximum age, both enforced here; the id is stored only as a hash."""

    async def create(self, account_id: int, *, ip: str) -> ConsoleSession: ...

    async def get(self, session_id: str) -> ConsoleSession | None:
        """The session, its idle timer restarted; None when unknown, idle too long or too old."""
        ...

    async def destroy(self, session_id: str) -> None: ...

    async def destroy_all(self, account_id: int) -> int:
        """End every session of an account (disabled, password reset); returns how many."""
        ...
