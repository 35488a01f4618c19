"""In-memory lettering carrier: the sandbox twin of `gateway.ports.LetteringCarrier`.

It answers per E.164 number from a table, records every request and every answer, and
never touches the network. The demo, `gateway replay` and the contract tests use it; the
contract tests run the same bodies against it and against the real HTTP adapter, so its
behaviour must stay what a carrier does (a typed result per number, a reference per answer).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from typing import Any

from gateway.domain.models import LetteringOutcome, LetteringRequest, LetteringResult
from gateway.errors import CarrierError

_SPEC_KEYS = frozenset({"kind", "outcomes", "default", "delay_ms"})


def _result(value: object, where: str) -> LetteringResult:
    """Parse a result name from config, naming the key and the accepted values on error."""
    if isinstance(value, str) and value in LetteringResult.__members__.values():
        return LetteringResult(value)
    accepted = ", ".join(r.value for r in LetteringResult)
    raise CarrierError(f"{where}: unknown lettering result {value!r} (expected one of {accepted})")


class SandboxCarrier:
    """A `LetteringCarrier` that answers from a per-number table.

    `outcomes` maps an E.164 number to the result given for it; any other number gets
    `default`. `delay_s` simulates the carrier's latency (the call still honours
    cancellation, like a real request would).
    """

    def __init__(
        self,
        name: str = "sandbox",
        outcomes: Mapping[str, LetteringResult] | None = None,
        default: LetteringResult = LetteringResult.DELIVERED,
        delay_s: float = 0.0,
    ) -> None:
        if delay_s < 0:
            raise CarrierError(f"sandbox carrier {name!r}: delay must not be negative, got {delay_s}")
        self.name = name
        # Accept plain strings too ("unsupported_device"), as YAML and tests give them.
        self.outcomes: dict[str, LetteringResult] = {
            number: _result(result, f"sandbox carrier {name!r}: outcomes.{number}")
            for number, result in (outcomes or {}).items()
        }
        self.default = _result(default, f"sandbox carrier {name!r}: default")
        self.delay_s = delay_s
        self.requests: list[LetteringRequest] = []
        self.outcomes_given: list[LetteringOutcome] = []
        self.closed = False
        self._counter = itertools.count(1)

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> SandboxCarrier:
        """Build from a gateway.yaml carrier entry.

        `{"kind": "sandbox", "outcomes": {"+821011112222": "unsupported_device"},
        "default": "delivered", "delay_ms": 0}`; every key is optional.
        """
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise CarrierError(f"sandbox carrier {name!r}: unknown key(s) {', '.join(unknown)}")
        outcomes = spec.get("outcomes") or {}
        if not isinstance(outcomes, Mapping):
            raise CarrierError(f"sandbox carrier {name!r}: outcomes must be a mapping of number to result")
        default = _result(spec.get("default", "delivered"), f"sandbox carrier {name!r}: default")
        delay_ms = spec.get("delay_ms", 0)
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, int | float) or delay_ms < 0:
            raise CarrierError(f"sandbox carrier {name!r}: delay_ms must be a number >= 0, got {delay_ms!r}")
        parsed = {
            str(number): _result(result, f"sandbox carrier {name!r}: outcomes.{number}")
            for number, result in outcomes.items()
        }
        return cls(name=name, outcomes=parsed, default=default, delay_s=delay_ms / 1000)

    async def letter(self, request: LetteringRequest) -> LetteringOutcome:
        """Record the request and answer with the configured result for `request.to`."""
        self.requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        result = self.outcomes.get(request.to, self.default)
        outcome = LetteringOutcome(
            result=result, provider=self.name, reference=f"sbx-{next(self._counter)}", detail="sandbox"
        )
        self.outcomes_given.append(outcome)
        return outcome

    async def close(self) -> None:
        """Nothing to release; kept so the sandbox is a drop-in `LetteringCarrier`."""
        self.closed = True
