"""Loading ``rules/console.yaml``: canned answers and the duty manual, per routing rule or tag.

Optional: an older deployment without the file gets empty `ConsoleRules`. Same contract as the
other rule files (`gateway.infra.yamldoc`): every problem reads ``file:line: key.path: message``
and all problems of a load are reported at once. Besides the schema (unknown keys, types), the
semantic checks are:

* each entry's ``rules`` are rule names of routing.yaml and its ``tags`` are tags some routing
  rule gives (a misspelt name would silently never show the entry): an error with a
  did-you-mean, as routing.yaml's own unknown queues are;
* a canned answer fits one LMS (`gateway.domain.smstext`: at most 2,000 EUC-KR bytes) and has no
  character an SMS cannot carry (it would reach the citizen replaced);
* titles are unique within ``canned`` and within ``manual`` (staff pick by title).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.domain.guidance import Canned, ConsoleRules, ManualEntry
from gateway.domain.routing import RoutingRules
from gateway.domain.smstext import LMS_MAX_BYTES, encoded_length, euckr_safe
from gateway.errors import RulesError
from gateway.infra.yamldoc import Doc, KeyPath, file_label, parse_yaml, read_file, unique_sorted, validate_located

CONSOLE_FILE = "console.yaml"

_TEXT: dict[str, Any] = {"type": "string", "minLength": 1}


def _names(what: str) -> dict[str, Any]:
    return {
        "type": "array",
        "uniqueItems": True,
        "items": {
            "type": "string",
            "minLength": 1,
            "x-message": {"type": f"{what} are quoted text (got {{value!r}})", "minLength": "must not be empty"},
        },
    }


CANNED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["title", "text"],
    "properties": {"title": _TEXT, "text": _TEXT, "rules": _names("rule names"), "tags": _names("tags")},
}
MANUAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["title", "steps"],
    "properties": {
        "title": _TEXT,
        "steps": {"type": "array", "minItems": 1, "items": _TEXT},
        "rules": _names("rule names"),
        "tags": _names("tags"),
    },
}
CONSOLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "canned": {"type": ["array", "null"], "items": CANNED_SCHEMA},
        "manual": {"type": ["array", "null"], "items": MANUAL_SCHEMA},
    },
}


def load_console(directory: Path, routing: RoutingRules | None) -> ConsoleRules:
    """``directory/console.yaml`` checked against ``routing`` (None: no routing.yaml, so no entry
    may name a rule or a tag); empty `ConsoleRules` when the file is absent."""
    path = directory / CONSOLE_FILE
    if not path.exists():
        return ConsoleRules()
    label = file_label(path)
    return parse_console(read_file(path, label), label, routing)


def parse_console(source: bytes | str, label: str, routing: RoutingRules | None) -> ConsoleRules:
    """`load_console` for text already read; ``label`` names the file in problems."""
    raw = source.encode("utf-8") if isinstance(source, str) else source
    data, lines = parse_yaml(raw, label)
    data = {} if data is None else data
    doc = Doc(data, lines, label)
    doc.problems += validate_located(data, CONSOLE_SCHEMA, lines, label)
    if doc.problems:  # the shapes are wrong: the semantic checks would only repeat them
        raise RulesError([p.text for p in unique_sorted(doc.problems)])
    known = _Known.of(routing)
    canned = tuple(_canned(doc, known, i, entry) for i, entry in enumerate(data.get("canned") or []))
    manual = tuple(_manual(doc, known, i, entry) for i, entry in enumerate(data.get("manual") or []))
    _unique_titles(doc, "canned", [c.title for c in canned])
    _unique_titles(doc, "manual", [m.title for m in manual])
    if doc.problems:
        raise RulesError([p.text for p in unique_sorted(doc.problems)])
    return ConsoleRules(canned=canned, manual=manual, version=hashlib.sha256(raw).hexdigest()[:12])


class _Known:
    """The rule names and tags of routing.yaml that entries may refer to."""

    def __init__(self, rules: Sequence[str], tags: Sequence[str], have_routing: bool) -> None:
        self.rules, self.tags, self.have_routing = list(rules), list(tags), have_routing

    @classmethod
    def of(cls, routing: RoutingRules | None) -> _Known:
        if routing is None:
            return cls([], [], False)
        tags = sorted({t for rule in routing.rules for t in rule.then.tags})
        return cls([rule.name for rule in routing.rules], tags, True)

    def check(self, doc: Doc, base: KeyPath, key: str, values: Sequence[str]) -> None:
        if key == "rules":
            known, what = self.rules, "rule"
        else:
            known, what = self.tags, "tag"
        for j, value in enumerate(values):
            if value in known:
                continue
            if not self.have_routing:
                doc.add((*base, key, j), f"{what} {value!r}: there is no routing.yaml to take it from")
                continue
            close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(known)
            where = "a rule name of routing.yaml" if key == "rules" else "a tag any routing.yaml rule gives"
            doc.add((*base, key, j), f"unknown {what} {value!r}: not {where} ({hint})")


def _refs(doc: Doc, known: _Known, base: KeyPath, entry: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
    rules = [str(r) for r in entry.get("rules") or []]
    tags = [str(t) for t in entry.get("tags") or []]
    known.check(doc, base, "rules", rules)
    known.check(doc, base, "tags", tags)
    return frozenset(rules), frozenset(tags)


def _canned(doc: Doc, known: _Known, i: int, entry: Mapping[str, Any]) -> Canned:
    base: KeyPath = ("canned", i)
    rules, tags = _refs(doc, known, base, entry)
    text = str(entry["text"])
    size = encoded_length(text)
    if size > LMS_MAX_BYTES:
        doc.add(
            (*base, "text"),
            f"is {size} bytes in EUC-KR: an answer is at most {LMS_MAX_BYTES} bytes (one LMS); shorten it",
        )
    changed = sorted({ch for ch in text.replace("\r\n", "\n") if euckr_safe(ch) != ch and ch not in "\r"})
    if changed:
        shown = ", ".join(f"{ch!r} -> {euckr_safe(ch)!r}" for ch in changed[:5])
        doc.add((*base, "text"), f"has characters a text message cannot carry: {shown}")
    return Canned(title=str(entry["title"]), text=text, rules=rules, tags=tags)


def _manual(doc: Doc, known: _Known, i: int, entry: Mapping[str, Any]) -> ManualEntry:
    rules, tags = _refs(doc, known, ("manual", i), entry)
    steps = tuple(str(s) for s in entry["steps"])
    return ManualEntry(title=str(entry["title"]), steps=steps, rules=rules, tags=tags)


def _unique_titles(doc: Doc, section: str, titles: Sequence[str]) -> None:
    first: dict[str, int] = {}
    for i, title in enumerate(titles):
        if title in first:
            j = first[title]
            doc.add(
                (section, i, "title"),
                f"duplicate title {title!r} (first at {section}[{j}], line {doc.line((section, j))})",
            )
        else:
            first[title] = i
