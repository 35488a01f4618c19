"""``rules/directory.yaml``: the departments, their desk extensions and caller numbers.

Read by `read_directory` and built by `build_directory`; `gateway.rules.lettering.load_rules`
combines it with ``lettering.yaml`` (the extension ranges are checked against that file's
``extension_pattern``). Problems are ``file:line: key.path: message`` (`gateway.infra.yamldoc`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import phonenumbers

from gateway.domain.directory import Department, Directory, find_overlaps, parse_extension_range
from gateway.infra.yamldoc import Digest, Doc, KeyPath, Located, format_path, line_of, load_doc

DIRECTORY_FILE = "directory.yaml"
#: Named in the cross-file problem; the file itself is read by `gateway.rules.lettering`.
LETTERING_FILE = "lettering.yaml"

_EXTENSION_TEXT = re.compile(r"[0-9]+(-[0-9]+)?")

_EXTENSION = {
    "type": "string",
    "pattern": "^" + _EXTENSION_TEXT.pattern + "$",
    "x-message": {
        "pattern": "{value!r} is not an extension or range",
        "type": 'extensions are quoted text, like "2010" or "2001-2099" (got {value!r})',
    },
}

_TEXT = {"type": "string", "minLength": 1}

DEPARTMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "name", "guide", "extensions"],
    "properties": {
        "id": {
            "type": "string",
            "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$",
            "x-message": {"pattern": "{value!r} is not an id: use lower-case letters, digits and dashes"},
        },
        "name": _TEXT,
        "organisation": _TEXT,
        "guide": _TEXT,
        "caller_number": {"type": ["string", "null"]},
        "postcall": {
            "type": ["string", "null"],
            "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$",
            "x-message": {"pattern": "{value!r} is not a content id: use lower-case letters, digits and dashes"},
        },
        "extensions": {"type": "array", "minItems": 1, "items": _EXTENSION},
    },
}

DIRECTORY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["organisation", "departments"],
    "properties": {
        "organisation": _TEXT,
        "departments": {"type": "array", "minItems": 1, "items": DEPARTMENT_SCHEMA},
    },
}


def read_directory(directory: Path, digest: Digest | None = None) -> tuple[Doc | None, list[Located]]:
    """Parse and schema-check ``directory/directory.yaml`` (see `gateway.infra.yamldoc.load_doc`)."""
    return load_doc(directory / DIRECTORY_FILE, DIRECTORY_SCHEMA, digest)


def normalise_caller_number(text: str) -> str:
    """E.164 of a Korean phone number written any usual way; `ValueError` when it is not one."""
    try:
        number = phonenumbers.parse(text, "KR")
    except phonenumbers.NumberParseException:
        raise ValueError(f"{text!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(number) or phonenumbers.region_code_for_number(number) != "KR":
        raise ValueError(f"{text!r} is not a valid Korean phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class _Range(NamedTuple):
    first: str
    last: str
    department: int  # index in departments
    item: int  # index in that department's extensions


def build_directory(doc: Doc, extension_pattern: str | None) -> tuple[Directory | None, list[Located]]:
    data = doc.data if isinstance(doc.data, Mapping) else {}
    default_org = data.get("organisation")
    raw_departments = data.get("departments")
    if not isinstance(raw_departments, list):
        return None, []
    looks_like_extension = _compile(extension_pattern)
    problems: list[Located] = []
    departments: dict[int, Department] = {}
    ranges: list[_Range] = []
    first_with_id: dict[str, int] = {}

    for i, raw in enumerate(raw_departments):
        if not isinstance(raw, Mapping):
            continue
        dept_id = raw.get("id")
        if isinstance(dept_id, str):
            if dept_id in first_with_id:
                j = first_with_id[dept_id]
                problems.append(
                    doc.problem(
                        (*("departments", i), "id"),
                        f"duplicate department id {dept_id!r} (first at departments[{j}], "
                        f"line {line_of(doc.lines, ('departments', j, 'id'))})",
                    )
                )
            else:
                first_with_id[dept_id] = i

        caller_number = ""
        raw_number = raw.get("caller_number")
        if isinstance(raw_number, str) and raw_number.strip():
            try:
                caller_number = normalise_caller_number(raw_number)
            except ValueError as exc:
                problems.append(doc.problem(("departments", i, "caller_number"), str(exc)))

        extensions = raw.get("extensions")
        for j, text in enumerate(extensions if isinstance(extensions, list) else []):
            if not isinstance(text, str) or not _EXTENSION_TEXT.fullmatch(text):
                continue  # reported by the schema
            path: KeyPath = ("departments", i, "extensions", j)
            try:
                first, last = parse_extension_range(text)
            except ValueError as exc:
                problems.append(doc.problem(path, str(exc)))
                continue
            for end in dict.fromkeys((first, last)):
                if looks_like_extension is not None and not looks_like_extension.search(end):
                    message = (
                        f"{end!r} does not look like a desk extension (extension_pattern "
                        f"{extension_pattern!r} in {LETTERING_FILE}), so it would never get lettering"
                    )
                    problems.append(doc.problem(path, message))
            ranges.append(_Range(first, last, i, j))

        organisation = raw.get("organisation", default_org)
        fields = (dept_id, organisation, raw.get("name"), raw.get("guide"))
        postcall = raw.get("postcall")
        if all(isinstance(f, str) for f in fields) and (postcall is None or isinstance(postcall, str)):
            departments[i] = Department(
                id=str(dept_id),
                organisation=str(organisation),
                name=str(raw["name"]),
                guide=str(raw["guide"]),
                caller_number=caller_number,
                postcall=postcall or None,
            )

    problems += _overlap_problems(doc, ranges, raw_departments)
    if problems or len(departments) != len(raw_departments):
        return None, problems
    return Directory((r.first, r.last, departments[r.department]) for r in ranges), []


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    if not isinstance(pattern, str):  # None, or a wrong type the schema reports in lettering.yaml
        return None
    try:
        return re.compile(pattern)
    except re.error:
        return None  # reported against lettering.yaml


def _overlap_problems(doc: Doc, ranges: list[_Range], raw_departments: list[Any]) -> list[Located]:
    def name(r: _Range) -> str:
        raw = raw_departments[r.department]
        dept_id = raw.get("id") if isinstance(raw, Mapping) else None
        return repr(dept_id) if isinstance(dept_id, str) else f"departments[{r.department}]"

    def shown(r: _Range) -> str:
        return r.first if r.first == r.last else f"{r.first}-{r.last}"

    problems = []
    for a, b in find_overlaps([(r.first, r.last) for r in ranges]):
        here, other = ranges[a], ranges[b]
        other_path = ("departments", other.department, "extensions", other.item)
        problems.append(
            doc.problem(
                ("departments", here.department, "extensions", here.item),
                f"extensions {shown(here)} of {name(here)} overlap {shown(other)} of {name(other)} "
                f"({format_path(other_path)}, line {line_of(doc.lines, other_path)})",
            )
        )
    return problems
