"""In-memory Alimtalk and SMS providers: the sandbox twins of the NHN adapters.

They answer per E.164 number from a table, record every request, and keep `deliveries`:
the messages that actually reached a citizen, once each. The contract tests run the same
bodies over these twins and over the NHN adapters against the fake NHN server, so they
behave like the real provider:

- Alimtalk: a repeated `idempotency_key` returns the first answer and delivers nothing
  new (NHN refuses a repeated X-NC-API-IDEMPOTENCY-KEY for 10 minutes; the NHN adapter
  reports that as ACCEPTED too). When Kakao cannot deliver (NOT_KAKAO_USER, BLOCKED) and
  the request has a fallback, the provider sends the fallback itself: the answer is
  ACCEPTED and the delivery is on the fallback's channel ("sms-fallback"/"lms-fallback").
- SMS: by default a repeated key is deduplicated the same way. NHN's SMS API has no
  idempotency key, so `honour_keys=False` makes the twin send every request, like NHN.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

from gateway.domain.models import AlimtalkRequest, SendOutcome, SendResult, SmsRequest
from gateway.errors import CarrierError

_SPEC_KEYS = frozenset({"kind", "outcomes", "default", "delay_ms", "honour_keys"})
_FALLBACK_FIXES = frozenset({SendResult.NOT_KAKAO_USER, SendResult.BLOCKED})
RequestT = TypeVar("RequestT", AlimtalkRequest, SmsRequest)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message that reached a citizen's phone."""

    channel: str  # "alimtalk", "sms", "lms", "sms-fallback", "lms-fallback"
    to: str  # E.164
    idempotency_key: str
    reference: str


def _result(value: object, where: str) -> SendResult:
    if isinstance(value, str) and value in SendResult.__members__.values():
        return SendResult(value)
    accepted = ", ".join(r.value for r in SendResult)
    raise CarrierError(f"{where}: unknown send result {value!r} (expected one of {accepted})")


class _Twin(Generic[RequestT]):
    """What both twins share: the outcome table, the key memory and the records."""

    prefix = "sbx"

    def __init__(
        self,
        name: str = "sandbox",
        outcomes: Mapping[str, SendResult | str] | None = None,
        default: SendResult | str = SendResult.ACCEPTED,
        delay_s: float = 0.0,
        honour_keys: bool = True,
    ) -> None:
        where = f"sandbox provider {name!r}"
        if delay_s < 0:
            raise CarrierError(f"{where}: delay must not be negative, got {delay_s}")
        self.name = name
        self.outcomes = {str(n): _result(r, f"{where}: outcomes.{n}") for n, r in (outcomes or {}).items()}
        self.default = _result(default, f"{where}: default")
        self.delay_s = delay_s
        self.honour_keys = honour_keys
        self.deliveries: list[Delivery] = []
        self.requests: list[RequestT] = []
        self.closed = False
        self._answers: dict[str, SendOutcome] = {}
        self._counter = itertools.count(1)

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> Self:
        """`{"kind": "sandbox", "outcomes": {"+821011112222": "not_kakao_user"}, "default": "accepted",
        "delay_ms": 0, "honour_keys": true}`; every key is optional."""
        return cls(name, **cls._kwargs(name, spec))

    @classmethod
    def _kwargs(cls, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        where = f"sandbox provider {name!r}"
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise CarrierError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
        if spec.get("kind", "sandbox") != "sandbox":
            raise CarrierError(f"{where}: kind must be 'sandbox', got {spec.get('kind')!r}")
        outcomes = spec.get("outcomes") or {}
        if not isinstance(outcomes, Mapping):
            raise CarrierError(f"{where}: outcomes must be a mapping of E.164 number to result")
        delay_ms = spec.get("delay_ms", 0)
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, int | float) or delay_ms < 0:
            raise CarrierError(f"{where}: delay_ms must be a number >= 0, got {delay_ms!r}")
        honour_keys = spec.get("honour_keys", True)
        if not isinstance(honour_keys, bool):
            raise CarrierError(f"{where}: honour_keys must be true or false")
        return {
            "outcomes": {str(n): _result(r, f"{where}: outcomes.{n}") for n, r in outcomes.items()},
            "default": _result(spec.get("default", "accepted"), f"{where}: default"),
            "delay_s": delay_ms / 1000,
            "honour_keys": honour_keys,
        }

    async def _answer(self, key: str, to: str, channel: str, fallback_channel: str | None) -> SendOutcome:
        if self.closed:
            return SendOutcome(SendResult.TEMPORARY_ERROR, self.name, detail="provider closed")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.honour_keys and key in self._answers:
            return self._answers[key]
        result = self.outcomes.get(to, self.default)
        reference = f"{self.prefix}-{next(self._counter)}"
        detail = "sandbox"
        if result in _FALLBACK_FIXES and fallback_channel is not None:
            detail = f"sandbox {result.value}; {fallback_channel} sent by the provider"
            result, channel = SendResult.ACCEPTED, fallback_channel
        outcome = SendOutcome(result=result, provider=self.name, reference=reference, detail=detail)
        if result is SendResult.ACCEPTED:
            self.deliveries.append(Delivery(channel, to, key, reference))
        # Only considered answers are remembered: a temporary error may be retried.
        if result is not SendResult.TEMPORARY_ERROR:
            self._answers[key] = outcome
        return outcome

    async def close(self) -> None:
        self.closed = True


class SandboxAlimtalk(_Twin[AlimtalkRequest]):
    """An `AlimtalkProvider` answering from a per-number table (see the module docstring)."""

    prefix = "sbx-at"

    async def send_alimtalk(self, request: AlimtalkRequest) -> SendOutcome:
        self.requests.append(request)
        fallback = f"{request.fallback.kind}-fallback" if request.fallback is not None else None
        return await self._answer(request.idempotency_key, request.to, "alimtalk", fallback)


class SandboxSms(_Twin[SmsRequest]):
    """An `SmsProvider` answering from a per-number table (see the module docstring)."""

    prefix = "sbx-sms"

    async def send_sms(self, request: SmsRequest) -> SendOutcome:
        self.requests.append(request)
        if request.kind not in ("sms", "lms"):
            return SendOutcome(SendResult.REJECTED, self.name, detail="kind must be 'sms' or 'lms'")
        return await self._answer(request.idempotency_key, request.to, request.kind, None)
