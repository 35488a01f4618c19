"""Loading `rules/notify.yaml` (queue sinks, duty roster). Optional: absent means inbox only.

Problems are ``file:line: key.path: message`` through the shared helper (`gateway.infra.yamldoc`):
the schema's first, else every semantic one in the order found.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.domain.models import NumberKind
from gateway.domain.notify import NotifyRules, Officer, QueueSinks, Shift
from gateway.domain.numbers import NumberPlan
from gateway.errors import RulesError
from gateway.infra.yamldoc import Doc, file_label, load_yaml, validate

FILE = "notify.yaml"
SEOUL = ZoneInfo("Asia/Seoul")
_OFFICER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "phone"],
    "properties": {"name": {"type": "string", "minLength": 1}, "phone": {"type": "string"}},
}
_WHEN = {
    "type": "string",
    "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d$",
    "x-message": '{value!r} is not a local time like "2026-11-23T18:00"',
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sender": {"type": "string", "minLength": 1},
        "queues": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "webhook": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["url", "secret_env"],
                        "properties": {
                            "url": {
                                "type": "string",
                                "pattern": "^https?://",
                                "x-message": "{value!r} is not an http(s) URL",
                            },
                            "secret_env": {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$"},
                        },
                    },
                    "notify_duty_officer": {"type": "boolean"},
                },
            },
        },
        "duty_roster": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "fallback": _OFFICER,
                "shifts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "phone", "from", "to"],
                        "properties": {
                            "name": {"type": "string"},
                            "phone": {"type": "string"},
                            "from": _WHEN,
                            "to": _WHEN,
                        },
                    },
                },
            },
        },
    },
}


def load_notify(directory: Path) -> NotifyRules:
    path = directory / FILE
    if not path.exists():
        return NotifyRules()
    label = file_label(path)
    data, lines = load_yaml(path, label)
    data = data or {}
    problems = validate(data, SCHEMA, lines, label)
    if problems:
        raise RulesError(problems)
    doc = Doc(data, lines, label)
    plan = NumberPlan()

    def officer(raw: dict[str, str], where: tuple[str | int, ...]) -> Officer:
        number = plan.classify(raw["phone"])
        if number.kind is not NumberKind.MOBILE:
            # The key path is shown dotted (duty_roster.shifts.0.phone): the wording predates the helper.
            doc.add(
                (*where, "phone"),
                f"{raw['phone']!r} is not a mobile number (the officer gets an SMS)",
                where=".".join(map(str, (*where, "phone"))),
            )
        return Officer(raw["name"], number.e164)

    roster = data.get("duty_roster") or {}
    shifts = []
    for i, raw in enumerate(roster.get("shifts") or []):
        try:
            start = datetime.fromisoformat(raw["from"]).replace(tzinfo=SEOUL).timestamp()
            end = datetime.fromisoformat(raw["to"]).replace(tzinfo=SEOUL).timestamp()
        except ValueError as exc:  # the schema checks the shape only: "2026-13-45T99:99" gets here
            doc.add(("duty_roster", "shifts", i), f"not a real local time ({exc})")
            continue
        if end <= start:
            doc.add(("duty_roster", "shifts", i), f"'to' {raw['to']} is not after 'from' {raw['from']}")
        shifts.append(Shift(officer(raw, ("duty_roster", "shifts", i)), start, end))
    fallback = officer(roster["fallback"], ("duty_roster", "fallback")) if roster.get("fallback") else None
    queues = {
        name: QueueSinks(
            webhook_url=(q.get("webhook") or {}).get("url", ""),
            webhook_secret_env=(q.get("webhook") or {}).get("secret_env", ""),
            notify_duty_officer=bool(q.get("notify_duty_officer", False)),
        )
        for name, q in (data.get("queues") or {}).items()
    }
    sender = ""
    if "sender" in data:
        sender = plan.classify(str(data["sender"])).e164
        if not sender.startswith("+"):
            doc.add(("sender",), f"{data['sender']!r} is not a phone number")
    if doc.problems:
        raise RulesError(doc.texts())
    return NotifyRules(queues, tuple(shifts), fallback, sender)
