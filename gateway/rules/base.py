"""Loading ``rules/*.yaml``: YAML with line numbers, schema validation, semantic checks.

The telecom team edits these files by hand, so every problem names the file, the line and the key
path (``rules/directory.yaml:14: departments[3].extensions[0]: '20a0' is not an extension or
range``), and all problems of a load are reported at once instead of one per attempt.

The generic half (`parse_yaml`, `load_yaml`, `validate`) knows nothing about lettering and is meant
to be reused for other rule files (e.g. ``rules/routing.yaml``).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import phonenumbers
import yaml
from jsonschema import Draft202012Validator, ValidationError

from gateway.domain.directory import Department, Directory, find_overlaps, parse_extension_range
from gateway.domain.models import Direction, NumberKind
from gateway.domain.rules import LetteringRules, ProviderRoute, Rules, template_problems
from gateway.errors import RulesError

KeyPath = tuple[str | int, ...]
Lines = dict[KeyPath, int]  # key path -> 1-based line of that key / sequence item

DIRECTORY_FILE = "directory.yaml"
LETTERING_FILE = "lettering.yaml"

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: Deeper nesting is refused: no rules file needs it, and PyYAML, jsonschema and our own walkers
#: all recurse (a file of "[[[[..." would otherwise end in RecursionError, not in a problem).
MAX_DEPTH = 40


# --------------------------------------------------------------------------------------------
# Generic: YAML with line numbers
# --------------------------------------------------------------------------------------------


def file_label(path: Path) -> str:
    """How a file is named in problems: relative to the working directory when it is below it."""
    if not path.is_absolute():
        return path.as_posix()
    cwd = Path.cwd()
    for base, target in ((cwd, path), (cwd.resolve(), path.resolve())):
        try:
            return target.relative_to(base).as_posix()
        except ValueError:
            continue
    return path.as_posix()


def format_path(path: Sequence[str | int]) -> str:
    """``("departments", 3, "extensions", 0)`` -> ``departments[3].extensions[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def line_of(lines: Mapping[KeyPath, int], path: Sequence[str | int]) -> int:
    """Line of the deepest element of ``path`` that has one (1 when nothing has)."""
    key = tuple(path)
    while key:
        if key in lines:
            return lines[key]
        key = key[:-1]
    return lines.get((), 1)


def _problem(label: str, line: int, path: Sequence[str | int], message: str) -> str:
    where = format_path(path)
    return f"{label}:{line}: {where}: {message}" if where else f"{label}:{line}: {message}"


class _Loader(yaml.SafeLoader):
    """SafeLoader whose impossible dates (`2026-02-30`) are errors with a line, not a crash."""


def _timestamp(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)  # type: ignore[arg-type]
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(None, None, f"{node.value!r} is not a valid date ({exc})",
                                                node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


def parse_yaml(source: bytes | str, label: str) -> tuple[Any, Lines]:
    """Parse one YAML document (SafeLoader) and map every key / sequence item path to its line.

    Raises `RulesError` for text that is not UTF-8, for YAML syntax errors
    (``file:line: YAML syntax error: ...``) and for duplicate keys in a mapping (all of them, each
    at the line of the repeated key), because YAML loaders silently keep the last one.
    """
    if isinstance(source, bytes):
        try:
            text = source.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = source[: exc.start].count(b"\n") + 1
            raise RulesError([f"{label}:{line}: not UTF-8 text (byte {exc.start})"]) from None
    else:
        text = source
    try:
        node = yaml.compose(text, Loader=_Loader)
        walker = _Walker(label)
        if node is not None:
            walker.walk(node, ())
        if walker.duplicates:
            raise RulesError(walker.duplicates)
        lines = walker.lines
        data = None if node is None else _Loader("").construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise RulesError([_syntax_problem(exc, label)]) from None
    except yaml.reader.ReaderError as exc:  # a control character: no mark, only a position
        line = text[: exc.position].count("\n") + 1
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise RulesError([f"{label}:{line}: YAML syntax error: unacceptable character {what} ({exc.reason})"]) from None
    except RecursionError:
        raise RulesError([f"{label}:{_deep_line(text)}: nested more than {MAX_DEPTH} levels deep"]) from None
    except yaml.YAMLError as exc:
        raise RulesError([f"{label}: YAML error: {exc}"]) from None
    return data, lines


def load_yaml(path: Path, label: str | None = None) -> tuple[Any, Lines]:
    """Read and parse ``path`` (see `parse_yaml`); a missing file is ``file: file not found``."""
    label = label or file_label(path)
    return parse_yaml(_read(path, label), label)


def _read(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RulesError([f"{label}: file not found"]) from None
    except OSError as exc:
        raise RulesError([f"{label}: cannot read: {exc.strerror or exc}"]) from None


def _deep_line(text: str) -> int:
    """The first line nested deeper than MAX_DEPTH (by brackets or indentation), else 1."""
    depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        depth += line.count("[") + line.count("{") - line.count("]") - line.count("}")
        if max(depth, (len(line) - len(line.lstrip(" "))) // 2) > MAX_DEPTH:
            return number
    return 1


def _syntax_problem(exc: yaml.MarkedYAMLError, label: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    line = f":{mark.line + 1}" if mark is not None else ""
    message = exc.problem or "invalid YAML"
    if exc.context:
        # e.g. "expected <block end>, but found '-' (while parsing a block mapping from line 3)"
        ctx_line = f" from line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
        message = f"{message} ({exc.context}{ctx_line})"
    return f"{label}{line}: YAML syntax error: {message}"


def _key_of(node: yaml.Node) -> str | int:
    """The key a mapping key node stands for, as it will appear in the loaded data."""
    if isinstance(node, yaml.ScalarNode):
        value = yaml.SafeLoader("").construct_object(node)
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        return str(value)
    return f"<{type(node).__name__}>"  # a list or mapping used as a key: rare, only for messages


@dataclass
class _Walker:
    """Collects the line of every key path and the duplicate keys of one composed document."""

    label: str
    lines: Lines = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    open: set[int] = field(default_factory=set)  # the nodes being walked (the current path)

    def walk(self, node: yaml.Node, path: KeyPath) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self.open or len(path) > MAX_DEPTH:
            # An alias inside its own anchor would make every later step recurse forever.
            why = ("an alias used inside its own anchor" if id(node) in self.open
                   else f"nested more than {MAX_DEPTH} levels deep")
            self.duplicates.append(_problem(self.label, node.start_mark.line + 1, path, why))
            return
        if id(node) in self.seen:  # an alias: walked once already
            return
        self.seen.add(id(node))
        self.open.add(id(node))
        if isinstance(node, yaml.MappingNode):
            self._mapping(node, path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, (*path, index))
        self.open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> None:
        first_line: dict[str | int, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # merged keys keep the lines of the anchor they come from
            key = _key_of(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                message = f"duplicate key {key!r} (first on line {first_line[key]})"
                self.duplicates.append(_problem(self.label, line, (*path, key), message))
                continue
            first_line[key] = line
            self.lines[(*path, key)] = line
            self.walk(value_node, (*path, key))


# --------------------------------------------------------------------------------------------
# Generic: JSON Schema validation with friendly, located messages
# --------------------------------------------------------------------------------------------

_TYPE_NAMES = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping of keys",
    "null": "nothing",
}


class _Located(NamedTuple):
    line: int
    text: str


def validate(
    data: Any, schema: Mapping[str, Any], lines: Mapping[KeyPath, int], file_label: str
) -> list[str]:
    """Every schema problem of ``data`` as ``file:line: key.path: message``, sorted by line.

    Draft 2020-12. A schema node may carry ``"x-message"``: a string (or a dict keyed by failing
    keyword, e.g. ``{"pattern": ..., "type": ...}``) formatted with ``{value}`` (the offending
    value) to replace jsonschema's technical wording. Unknown keys (``additionalProperties:
    false``) are reported one by one, at their own line, with a did-you-mean suggestion.
    """
    return [p.text for p in _validate(data, schema, lines, file_label)]


def _validate(
    data: Any, schema: Mapping[str, Any], lines: Mapping[KeyPath, int], label: str
) -> list[_Located]:
    validator = Draft202012Validator(schema)
    found: list[_Located] = []
    for error in validator.iter_errors(data):
        for path, line_path, message in _describe(error):
            line = line_of(lines, line_path)
            found.append(_Located(line, _problem(label, line, path, message)))
    return _unique_sorted(found)


def _unique_sorted(found: list[_Located]) -> list[_Located]:
    unique = dict.fromkeys(found)  # one error can be reported by several keywords
    return sorted(unique, key=lambda p: p.line)


def _describe(error: ValidationError) -> Iterator[tuple[KeyPath, KeyPath, str]]:
    """(path shown, path whose line is used, message) for one jsonschema error."""
    path: KeyPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    value = error.instance
    keyword = error.validator
    if keyword == "additionalProperties" and isinstance(value, Mapping):
        allowed = list(schema.get("properties", {}))
        patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
        for key in value:
            if key in allowed or any(p.search(str(key)) for p in patterns):
                continue
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(allowed)
            # Shown under the parent mapping (the key is in the message), on the key's own line.
            yield path, (*path, key), f"unknown key {key!r} ({hint})"
        return
    custom = schema.get("x-message")
    if isinstance(custom, Mapping):
        custom = custom.get(str(keyword))
    if isinstance(custom, str):
        try:
            yield path, path, custom.format(value=value)
            return
        except (KeyError, IndexError, ValueError):
            pass  # a broken x-message must not hide the problem itself
    yield path, path, _default_message(error)


def _default_message(error: ValidationError) -> str:
    value: Any = error.instance
    expected: Any = error.validator_value
    match error.validator:
        case "required":
            missing = [k for k in expected if isinstance(value, Mapping) and k not in value]
            return "missing required key " + ", ".join(repr(k) for k in missing)
        case "type":
            types = expected if isinstance(expected, list) else [expected]
            wanted = " or ".join(_TYPE_NAMES.get(str(t), str(t)) for t in types)
            return f"expected {wanted}, got {_show(value)}"
        case "enum":
            return f"{value!r} is not one of: " + ", ".join(str(v) for v in expected)
        case "minLength" if expected == 1:
            return "must not be empty"
        case "minLength":
            return f"must be at least {expected} characters"
        case "maxLength":
            return f"is {len(value)} characters, at most {expected} allowed"
        case "minimum":
            return f"{value!r} is too small (minimum {expected})"
        case "maximum":
            return f"{value!r} is too large (maximum {expected})"
        case "minItems":
            return f"needs at least {expected} item{'s' if expected != 1 else ''}"
        case "uniqueItems":
            return "has duplicate items"
        case "pattern":
            return f"{value!r} does not match {expected}"
        case _:
            return error.message


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


# --------------------------------------------------------------------------------------------
# The lettering rules: schemas
# --------------------------------------------------------------------------------------------

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
            "x-message": {
                "pattern": "{value!r} is not a content id: use lower-case letters, digits and dashes"
            },
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


# --------------------------------------------------------------------------------------------
# The lettering rules: semantic checks and building the domain values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Doc:
    data: Any
    lines: Lines
    label: str

    def problem(self, path: KeyPath, message: str) -> _Located:
        line = line_of(self.lines, path)
        return _Located(line, _problem(self.label, line, path, message))


def normalise_caller_number(text: str) -> str:
    """E.164 of a Korean phone number written any usual way; `ValueError` when it is not one."""
    try:
        number = phonenumbers.parse(text, "KR")
    except phonenumbers.NumberParseException:
        raise ValueError(f"{text!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(number) or phonenumbers.region_code_for_number(number) != "KR":
        raise ValueError(f"{text!r} is not a valid Korean phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _lettering(doc: _Doc) -> tuple[LetteringRules | None, list[_Located]]:
    data = doc.data if isinstance(doc.data, Mapping) else {}
    problems: list[_Located] = []
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


class _Range(NamedTuple):
    first: str
    last: str
    department: int  # index in departments
    item: int  # index in that department's extensions


def _directory(doc: _Doc, extension_pattern: str | None) -> tuple[Directory | None, list[_Located]]:
    data = doc.data if isinstance(doc.data, Mapping) else {}
    default_org = data.get("organisation")
    raw_departments = data.get("departments")
    if not isinstance(raw_departments, list):
        return None, []
    looks_like_extension = _compile(extension_pattern)
    problems: list[_Located] = []
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


def _overlap_problems(doc: _Doc, ranges: list[_Range], raw_departments: list[Any]) -> list[_Located]:
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


def _load_doc(path: Path, schema: Mapping[str, Any], digest: Any) -> tuple[_Doc | None, list[_Located]]:
    label = file_label(path)
    try:
        raw = _read(path, label)
        digest.update(raw)
        data, lines = parse_yaml(raw, label)
    except RulesError as exc:
        return None, [_Located(0, p) for p in exc.problems]
    doc = _Doc(data, lines, label)
    return doc, _validate(data, schema, lines, label)


def load_rules(directory: Path) -> Rules:
    """Load, validate and build the rules in ``directory`` (``directory.yaml``, ``lettering.yaml``).

    Raises `RulesError` with every problem found in both files (schema and semantic checks:
    extension ranges, overlaps, duplicate ids, caller numbers, template variables, provider
    routes, the extension regex). ``version`` is the first 12 hex digits of the sha256 over the
    files' bytes, so a log line can say which rules decided.
    """
    digest = hashlib.sha256()
    lettering_doc, lettering_problems = _load_doc(directory / LETTERING_FILE, LETTERING_SCHEMA, digest)
    directory_doc, directory_problems = _load_doc(directory / DIRECTORY_FILE, DIRECTORY_SCHEMA, digest)

    lettering: LetteringRules | None = None
    if lettering_doc is not None:
        lettering, found = _lettering(lettering_doc)
        lettering_problems = _unique_sorted(lettering_problems + found)
    result: Directory | None = None
    if directory_doc is not None:
        # The cross-file check needs a lettering.yaml that is itself fine.
        pattern = lettering.extension_pattern if lettering is not None else None
        result, found = _directory(directory_doc, pattern)
        directory_problems = _unique_sorted(directory_problems + found)

    problems = [p.text for p in directory_problems + lettering_problems]
    if problems or result is None or lettering is None:
        raise RulesError(problems or [f"{file_label(directory)}: rules could not be loaded"])
    return Rules(
        directory=result, lettering=lettering, version=digest.hexdigest()[:12], source=str(directory)
    )


def cmd_rules_check(directory: Path, out: TextIO) -> int:
    """``gateway rules check [DIR]``: print every problem, or a one-line summary; exit 0 / 1."""
    try:
        rules = load_rules(directory)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=out)
        count = len(exc.problems)
        print(
            f"rules NOT OK: {count} problem{'s' if count != 1 else ''} in {file_label(directory)}", file=out
        )
        return 1
    print(
        f"rules OK: version {rules.version}, {len(rules.directory.departments)} departments, "
        f"{rules.directory.extension_count()} extensions",
        file=out,
    )
    return 0
