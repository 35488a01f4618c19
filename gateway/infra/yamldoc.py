"""YAML with line numbers and JSON-schema validation, for every hand-edited YAML file.

The telecom team edits ``rules/*.yaml`` and operators edit ``gateway.yaml`` by hand, so every
problem names the file, the line and the key path (``rules/directory.yaml:14:
departments[3].extensions[0]: '20a0' is not an extension or range``) and all problems of a load are
reported at once instead of one per attempt.

This module knows nothing about any particular file: the rules loaders (``gateway.rules``) and the
configuration loader (``gateway.infra.config``) both build on it. It lives in ``infra`` so that the
configuration can use it without importing the rules package. A loader formats its own (semantic)
problems with `problem`, or records them on a `Doc`, so that schema and semantic problems read alike.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import yaml
from jsonschema import Draft202012Validator, ValidationError

from gateway.errors import RulesError

KeyPath = tuple[str | int, ...]
Lines = dict[KeyPath, int]  # key path -> 1-based line of that key / sequence item

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: Deeper nesting is refused: no rules file needs it, and PyYAML, jsonschema and our own walkers
#: all recurse (a file of "[[[[..." would otherwise end in RecursionError, not in a problem).
MAX_DEPTH = 40


# --------------------------------------------------------------------------------------------
# YAML with line numbers
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


def problem(label: str, line: int, path: Sequence[str | int], message: str, where: str | None = None) -> str:
    """One problem as ``file:line: key.path: message`` (``file:line: message`` at the top level).

    ``where`` replaces the key path shown, for the few messages whose wording predates this helper.
    """
    shown = format_path(path) if where is None else where
    return f"{label}:{line}: {shown}: {message}" if shown else f"{label}:{line}: {message}"


class _Loader(yaml.SafeLoader):
    """SafeLoader whose impossible dates (`2026-02-30`) are errors with a line, not a crash."""


def _timestamp(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)  # type: ignore[arg-type]
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(
            None, None, f"{node.value!r} is not a valid date ({exc})", node.start_mark
        ) from None


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
    return parse_yaml(read_file(path, label), label)


def read_file(path: Path, label: str) -> bytes:
    """The bytes of ``path``; `RulesError` ``file: file not found`` / ``file: cannot read: ...``."""
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
            why = (
                "an alias used inside its own anchor"
                if id(node) in self.open
                else f"nested more than {MAX_DEPTH} levels deep"
            )
            self.duplicates.append(problem(self.label, node.start_mark.line + 1, path, why))
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
                self.duplicates.append(problem(self.label, line, (*path, key), message))
                continue
            first_line[key] = line
            self.lines[(*path, key)] = line
            self.walk(value_node, (*path, key))


# --------------------------------------------------------------------------------------------
# JSON Schema validation with friendly, located messages
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


class Located(NamedTuple):
    """One problem and its line, so that problems of one file can be sorted by line."""

    line: int
    text: str


def validate(data: Any, schema: Mapping[str, Any], lines: Mapping[KeyPath, int], file_label: str) -> list[str]:
    """Every schema problem of ``data`` as ``file:line: key.path: message``, sorted by line.

    Draft 2020-12. A schema node may carry ``"x-message"``: a string (or a dict keyed by failing
    keyword, e.g. ``{"pattern": ..., "type": ...}``) formatted with ``{value}`` (the offending
    value) to replace jsonschema's technical wording. Unknown keys (``additionalProperties:
    false``) are reported one by one, at their own line, with a did-you-mean suggestion.
    """
    return [p.text for p in validate_located(data, schema, lines, file_label)]


def validate_located(data: Any, schema: Mapping[str, Any], lines: Mapping[KeyPath, int], label: str) -> list[Located]:
    """`validate` with each problem's line kept beside its text."""
    validator = Draft202012Validator(schema)
    found: list[Located] = []
    for error in validator.iter_errors(data):
        for path, line_path, message in _describe(error):
            line = line_of(lines, line_path)
            found.append(Located(line, problem(label, line, path, message)))
    return unique_sorted(found)


def unique_sorted(found: list[Located]) -> list[Located]:
    """Each problem once, by line (stable: on one line, the order found)."""
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
# One parsed document and the problems found in it
# --------------------------------------------------------------------------------------------


@dataclass
class Doc:
    """A parsed file (data, the line of every key path, its label) and the problems found in it.

    Loaders report their own (semantic) problems through `add` or `problem`, so that every message
    has the ``file:line: key.path: message`` form of the schema problems.
    """

    data: Any
    lines: Lines
    label: str
    problems: list[Located] = field(default_factory=list)

    def line(self, path: Sequence[str | int]) -> int:
        """The line of ``path`` (or of its deepest ancestor that has one)."""
        return line_of(self.lines, path)

    def problem(self, path: Sequence[str | int], message: str, where: str | None = None) -> Located:
        """A located problem at ``path``, not recorded (for loaders that keep their own lists)."""
        line = self.line(path)
        return Located(line, problem(self.label, line, path, message, where))

    def add(self, path: Sequence[str | int], message: str, where: str | None = None) -> None:
        """Record a problem at ``path``."""
        self.problems.append(self.problem(path, message, where))

    def texts(self) -> list[str]:
        """The recorded problems' texts, in the order found."""
        return [p.text for p in self.problems]


class Digest(Protocol):
    """What `load_doc` needs of a hash (``hashlib.sha256()``): the rules version covers the bytes read."""

    def update(self, data: bytes, /) -> None: ...


def load_doc(path: Path, schema: Mapping[str, Any], digest: Digest | None = None) -> tuple[Doc | None, list[Located]]:
    """Read, parse and schema-check ``path``: (the document, or None when it cannot be parsed; problems).

    Never raises `RulesError`: a missing file or a syntax error is the one problem returned, so the
    caller can go on checking the other files and report everything at once. ``digest`` is fed the
    file's bytes when they could be read.
    """
    label = file_label(path)
    try:
        raw = read_file(path, label)
        if digest is not None:
            digest.update(raw)
        data, lines = parse_yaml(raw, label)
    except RulesError as exc:
        return None, [Located(0, p) for p in exc.problems]
    return Doc(data, lines, label), validate_located(data, schema, lines, label)
