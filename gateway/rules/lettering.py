"""``rules/lettering.yaml`` (which calls get lettering, the template, provider routes) and
`load_rules`, the call flow's rules: this file plus the ``directory.yaml`` it letters.

Problems are ``file:line: key.path: message`` (`gateway.infra.yamldoc`), all of both files at once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.domain.directory import Directory
from gateway.domain.models import Direction, NumberKind
from gateway.domain.rules import LetteringRules, ProviderRoute, Rules, template_problems
from gateway.errors import RulesError
from gateway.infra.yamldoc import Digest, Doc, Located, file_label, load_doc, unique_sorted
from gateway.rules.directory import build_directory, read_directory

LETTERING_FILE = "lettering.yaml"
_TEXT = {"type": "string", "minLength": 1}


def _enum_list(values: Sequence[str], what: str) -> dict[str, Any]:
    return {
        "type": "array",
        "uniqueItems": True,
        "items": {
            "enum": list(values),
            "x-message": f"{{value!r}} is not a {what}: use one of " + ", ".join(values),
        },
    }


LETTERING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean"},
        "directions": _enum_list([d.value for d in Direction], "call direction"),
        "number_kinds": _enum_list([k.value for k in NumberKind], "number kind"),
        "outside_line_prefixes": {
            "type": "array",
            "items": {
                "type": "string",
                "pattern": "^[0-9]{1,4}$",
                "x-message": {
                    "pattern": "outside-line prefix {value!r} must be 1 to 4 digits",
                    "type": 'outside-line prefixes are quoted digits, like "9" (got {value!r})',
                },
            },
        },
        "extension_pattern": _TEXT,
        "providers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["provider"],
                "properties": {
                    "provider": {
                        "type": "string",
                        "pattern": "^[a-z][a-z0-9_-]*$",
                        "x-message": {"pattern": "{value!r} is not a provider name (lower-case, like 'skt')"},
                    },
                    "pbx": _TEXT,
                    "trunk": _TEXT,
                },
            },
        },
        "template": _TEXT,
        "max_text_chars": {"type": "integer", "minimum": 1, "maximum": 200},
        "rate_limit": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "count": {"type": "integer", "minimum": 1},
                "window_seconds": {"type": "integer", "minimum": 1},
            },
        },
    },
}


def read_lettering(directory: Path, digest: Digest | None = None) -> tuple[Doc | None, list[Located]]:
    """Parse and schema-check ``directory/lettering.yaml`` (see `gateway.infra.yamldoc.load_doc`)."""
    return load_doc(directory / LETTERING_FILE, LETTERING_SCHEMA, digest)


def build_lettering(doc: Doc) -> tuple[LetteringRules | None, list[Located]]:
    data = doc.data if isinstance(doc.data, Mapping) else {}
    problems: list[Located] = []
    default = LetteringRules()

    template = data.get("template", default.template)
    if isinstance(template, str):
        problems += [doc.problem(("template",), p) for p in template_problems(template)]

    pattern = data.get("extension_pattern", default.extension_pattern)
    if isinstance(pattern, str):
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(doc.problem(("extension_pattern",), f"not a valid regular expression: {exc}"))

    routes: list[ProviderRoute] = []
    raw_routes = data.get("providers")
    if isinstance(raw_routes, list):
        catch_all: int | None = None  # index of the first route matching every call
        for i, item in enumerate(raw_routes):
            if not isinstance(item, Mapping) or not isinstance(item.get("provider"), str):
                continue  # reported by the schema
            route = ProviderRoute(item["provider"], _opt_str(item.get("pbx")), _opt_str(item.get("trunk")))
            if catch_all is not None:
                message = f"never used: providers[{catch_all}] already matches every call"
                problems.append(doc.problem(("providers", i), message))
            elif route.pbx is None and route.trunk is None:
                catch_all = i
            routes.append(route)
        last = routes[-1] if routes else None
        if last is not None and (last.pbx is not None or last.trunk is not None):
            problems.append(
                doc.problem(
                    ("providers", len(raw_routes) - 1),
                    "the last route must be a catch-all (no pbx, no trunk) so that every call has a provider",
                )
            )

    if problems:
        return None, problems
    try:
        rate = data.get("rate_limit", {})
        rules = LetteringRules(
            enabled=data.get("enabled", default.enabled),
            directions=frozenset(Direction(d) for d in data.get("directions", default.directions)),
            number_kinds=frozenset(NumberKind(k) for k in data.get("number_kinds", default.number_kinds)),
            outside_line_prefixes=tuple(data.get("outside_line_prefixes", default.outside_line_prefixes)),
            extension_pattern=pattern,
            providers=tuple(routes) or default.providers,
            template=template,
            max_text_chars=data.get("max_text_chars", default.max_text_chars),
            rate_limit_count=rate.get("count", default.rate_limit_count),
            rate_limit_window_s=rate.get("window_seconds", default.rate_limit_window_s),
        )
    except (TypeError, ValueError, AttributeError):
        return None, []  # the shape is wrong: the schema has already said where
    return rules, []


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def load_rules(directory: Path) -> Rules:
    """Load, validate and build the rules in ``directory`` (``directory.yaml``, ``lettering.yaml``).

    Raises `RulesError` with every problem found in both files (schema and semantic checks:
    extension ranges, overlaps, duplicate ids, caller numbers, template variables, provider
    routes, the extension regex). ``version`` is the first 12 hex digits of the sha256 over the
    files' bytes, so a log line can say which rules decided.
    """
    digest = hashlib.sha256()
    lettering_doc, lettering_problems = read_lettering(directory, digest)
    directory_doc, directory_problems = read_directory(directory, digest)

    lettering: LetteringRules | None = None
    if lettering_doc is not None:
        lettering, found = build_lettering(lettering_doc)
        lettering_problems = unique_sorted(lettering_problems + found)
    result: Directory | None = None
    if directory_doc is not None:
        # The cross-file check needs a lettering.yaml that is itself fine.
        pattern = lettering.extension_pattern if lettering is not None else None
        result, found = build_directory(directory_doc, pattern)
        directory_problems = unique_sorted(directory_problems + found)

    problems = [p.text for p in directory_problems + lettering_problems]
    if problems or result is None or lettering is None:
        raise RulesError(problems or [f"{file_label(directory)}: rules could not be loaded"])
    return Rules(directory=result, lettering=lettering, version=digest.hexdigest()[:12], source=str(directory))
