"""Lettering policy: which outbound dials get caller-ID lettering, with what text, by whom.

Pure: an `ExternalDial` and the current `Rules` in, a `Letter` or a `Skip` out.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain.calls import ExternalDial
from gateway.domain.models import LetteringRequest
from gateway.domain.rules import Rules


@dataclass(frozen=True, slots=True)
class Letter:
    """Send this lettering request through the outbox to `provider`."""

    request: LetteringRequest
    provider: str


@dataclass(frozen=True, slots=True)
class Skip:
    """Deliberately not lettered, and why (a short stable reason code)."""

    pbx: str
    call_id: str
    reason: str
    to: str = ""


def decide(dial: ExternalDial, rules: Rules) -> Letter | Skip:
    policy = rules.lettering
    to = dial.number.e164
    if not policy.enabled:
        return Skip(dial.pbx, dial.call_id, "lettering_disabled", to)
    if dial.direction not in policy.directions:
        return Skip(dial.pbx, dial.call_id, dial.direction.value, to)
    if dial.number.kind not in policy.number_kinds:
        return Skip(dial.pbx, dial.call_id, dial.number.kind.value, to)
    department = rules.directory.lookup(dial.extension) if dial.extension else None
    if department is None:
        return Skip(dial.pbx, dial.call_id, "unknown_extension", to)
    try:
        provider = policy.provider_for(dial.pbx, dial.trunk)
    except LookupError:
        return Skip(dial.pbx, dial.call_id, "no_provider", to)
    text = policy.render(
        {
            "organisation": department.organisation,
            "department": department.name,
            "department_id": department.id,
            "guide": department.guide,
            "extension": dial.extension,
            "caller_number": department.caller_number,
        }
    )
    request = LetteringRequest(
        call_id=dial.call_id,
        to=to,
        caller_number=department.caller_number,
        organisation=department.organisation,
        department=department.name,
        text=text,
        extension=dial.extension,
        pbx=dial.pbx,
        trunk=dial.trunk,
    )
    return Letter(request, provider)
