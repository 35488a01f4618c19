"""Loading `rules/messaging.yaml` (post-call content, Alimtalk templates, quiet hours).

The file is optional: without it the defaults of `MessagingRules` apply and no department
has post-call content. Problems are reported as `file:line: key: message` through the shared
helper (`gateway.infra.yamldoc`), all at once.
"""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Any

from gateway.domain.directory import Directory
from gateway.domain.models import Button
from gateway.domain.optout import OptoutWords, compact
from gateway.domain.postcall import Content, MessagingRules
from gateway.errors import RulesError
from gateway.infra.yamldoc import Lines, file_label, line_of, load_yaml, problem, validate

FILE = "messaging.yaml"
_HHMM = {
    "type": "string",
    "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$",
    "x-message": '{value!r} is not a time of day like "21:00"',
}
_URL = {"type": "string", "pattern": "^https://", "x-message": "{value!r} must be an https:// link"}
_TEXT = {"type": "string", "minLength": 1}
_WORDS = {"type": "array", "items": _TEXT}
# The opt-out word lists (see gateway.domain.optout): a list given replaces the built-in one.
_OPTOUT_LISTS = {
    "keywords": "optout",
    "optin_keywords": "optin",
    "leads": "leads",
    "endings": "endings",
    "undo": "undo",
    "mentions": "mentions",
    "carrier_tags": "carrier_tags",
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "min_talk_seconds": {"type": "integer", "minimum": 0},
        "frequency_cap_days": {"type": "integer", "minimum": 0},
        "device_memory_days": {"type": "integer", "minimum": 1},
        "quiet_hours": {
            "type": "object",
            "additionalProperties": False,
            "required": ["start", "end"],
            "properties": {"start": _HHMM, "end": _HHMM},
        },
        "alimtalk": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "call_notice_template": _TEXT,
                "postcall_template": _TEXT,
                "provider_resend": {"type": "boolean"},
            },
        },
        "optout": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "keywords": {**_WORDS, "minItems": 1},
                "optin_keywords": {**_WORDS, "minItems": 1},
                "leads": _WORDS,
                "endings": _WORDS,
                "undo": _WORDS,
                "mentions": _WORDS,
                "carrier_tags": _WORDS,
                "confirmation": _TEXT,
                "optin_confirmation": _TEXT,
                "help": _TEXT,
            },
        },
        "contents": {
            "type": "object",
            "propertyNames": {"pattern": "^[a-z0-9][a-z0-9-]*$"},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["title", "text"],
                "properties": {
                    "title": {"type": "string", "minLength": 1, "maxLength": 50},
                    "text": {"type": "string", "minLength": 1, "maxLength": 1000},
                    "image": _URL,
                    "buttons": {
                        "type": "array",
                        "maxItems": 5,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "url"],
                            "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 14}, "url": _URL},
                        },
                    },
                },
            },
        },
    },
}


def _time(text: str) -> time:
    hour, minute = text.split(":")
    return time(int(hour), int(minute))


def load_messaging(directory: Path, departments: Directory | None = None) -> MessagingRules:
    """Load and check messaging.yaml; `departments` lets it check every `postcall:` id exists."""
    path = directory / FILE
    if not path.exists():
        return MessagingRules()
    label = file_label(path)
    data, lines = load_yaml(path, label)
    data = {} if data is None else data
    problems = validate(data, SCHEMA, lines, label)
    if problems:
        raise RulesError(problems)
    contents = {
        cid: Content(
            id=cid,
            title=c["title"],
            text=" ".join(c["text"].split()),
            image=c.get("image", ""),
            buttons=tuple(Button(b["name"], b["url"]) for b in c.get("buttons", ())),
        )
        for cid, c in (data.get("contents") or {}).items()
    }
    if departments is not None:
        missing = sorted({d.postcall for d in departments.departments if d.postcall and d.postcall not in contents})
        if missing:
            line = line_of(lines, ("contents",)) if "contents" in data else 1
            raise RulesError(
                [
                    problem(
                        label,
                        line,
                        ("contents",),
                        f"no content for {', '.join(map(repr, missing))} (named by postcall: in directory.yaml)",
                    )
                ]
            )
    optout = data.get("optout") or {}
    optout_words = _optout_words(optout, lines, label)
    quiet = data.get("quiet_hours") or {}
    alimtalk = data.get("alimtalk") or {}
    defaults = MessagingRules()
    return MessagingRules(
        min_talk_seconds=data.get("min_talk_seconds", defaults.min_talk_seconds),
        frequency_cap_days=data.get("frequency_cap_days", defaults.frequency_cap_days),
        quiet_start=_time(quiet["start"]) if quiet else defaults.quiet_start,
        quiet_end=_time(quiet["end"]) if quiet else defaults.quiet_end,
        device_memory_days=data.get("device_memory_days", defaults.device_memory_days),
        call_notice_template=alimtalk.get("call_notice_template", defaults.call_notice_template),
        postcall_template=alimtalk.get("postcall_template", defaults.postcall_template),
        provider_resend=alimtalk.get("provider_resend", defaults.provider_resend),
        contents=contents,
        optout_words=optout_words,
        optout_confirmation=optout.get("confirmation", defaults.optout_confirmation),
        optin_confirmation=optout.get("optin_confirmation", defaults.optin_confirmation),
        optout_help=optout.get("help", defaults.optout_help),
    )


def _optout_words(optout: dict[str, Any], lines: Lines, label: str) -> OptoutWords:
    """The `optout:` word lists over the built-in ones. Words are compared compacted (NFKC,
    case-folded, letters and digits only), so a word with no letter could never match: an error,
    as is a word that would be both an opt-out and an opt-in keyword."""
    problems: list[str] = []
    given: dict[str, tuple[str, ...]] = {}
    for key, name in _OPTOUT_LISTS.items():
        if key not in optout:
            continue
        for i, word in enumerate(optout[key]):
            if not compact(word):
                path = ("optout", key, i)
                problems.append(
                    problem(
                        label,
                        line_of(lines, path),
                        path,
                        f"{word!r} has no letter or digit (spaces, punctuation and emoji are ignored when matching)",
                    )
                )
        given[name] = tuple(optout[key])
    if problems:
        raise RulesError(problems)
    words = OptoutWords(**given)
    both = sorted(set(words.optout) & set(words.optin))
    if both:
        key = "optin_keywords" if "optin_keywords" in optout else "keywords"
        where = ("optout", key)
        raise RulesError(
            [
                problem(
                    label,
                    line_of(lines, where),
                    where,
                    f"{', '.join(map(repr, both))} would be both an opt-out and an opt-in keyword",
                )
            ]
        )
    return words
