"""Fuzzing the YAML rule loaders with mutations of the real rules/*.yaml.

The telecom team edits these files by hand; a reload that raises anything but `RulesError` would
escape `RulesHolder.reload` (which keeps the last good rules only on `RulesError`). So, for any
mutation: loading succeeds, or raises `RulesError` whose every problem reads `file:line: ...`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.errors import RulesError
from gateway.rules.lettering import load_rules
from gateway.rules.messaging import load_messaging
from gateway.rules.notify import load_notify
from gateway.rules.routing import ROUTING_FILE, load_routing
from tests.conftest import RULES

pytestmark = pytest.mark.fuzz

FILES = sorted(p.name for p in RULES.glob("*.yaml"))
SOURCES = {name: (RULES / name).read_bytes() for name in FILES}
PROBLEM = re.compile(r"^(?P<file>[^\n]+?\.yaml):(?P<line>\d+): \S")
SCALARS = [
    "",
    "~",
    "null",
    "true",
    "no",
    "0",
    "-1",
    "1.5",
    "[]",
    "{}",
    "[a, b]",
    "{a: 1}",
    "2026-02-30",
    "2026-13-45T99:99",
    "2026-11-23T18:00",
    "0x10",
    "0o17",
    "*nothing",
    "&anchor",
    "!!binary eA==",
    "!!python/object:os.system x",
    "'unclosed",
    '"\\x"',
    "é",
    "12345678901234567890123456789",
    ".inf",
    ".nan",
    "'24:00'",
    "'99:99'",
    "010-1234-5678",
    "'02-123-4567'",
    "https://",
    "http://x",
    "{organisation}",
    "{unknown}",
    "'{'",
    "[" * 50 + "]" * 50,
    "- item",
    "key: value",
    "? complex",
    "|",
    ">",
    "\t",
    "#",
]


CLEAN_DIRECTORY = load_rules(RULES).directory


def load_all(directory: Path, changed: set[str] | None = None) -> None:
    """What `gateway rules check` and a reload do: every loader over `directory` (or only those
    that read a file in `changed`: pure-Python YAML parsing is what a fuzz example costs)."""

    def touched(*names: str) -> bool:
        return changed is None or bool(changed & set(names))

    departments = CLEAN_DIRECTORY
    if touched("directory.yaml", "lettering.yaml"):
        departments = load_rules(directory).directory
    if touched("directory.yaml", "messaging.yaml"):
        load_messaging(directory, departments)
    if touched(ROUTING_FILE):
        load_routing(directory / ROUTING_FILE)
    if touched("notify.yaml"):
        load_notify(directory)


Mutation = tuple[str, int, int, str]


def mutate(text: bytes, mutations: list[Mutation]) -> bytes:
    lines = text.split(b"\n")
    for kind, a, b, scalar in mutations:
        i = a % len(lines)
        line = lines[i]
        key, colon, value = line.partition(b":")
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, line)
        elif kind == "indent":
            lines[i] = b" " * (b % 7) + line.lstrip(b" ")
        elif kind == "typo" and colon and key.strip():
            pos = len(key) - len(key.lstrip()) + b % max(1, len(key.strip()))
            lines[i] = key[:pos] + b"x" + key[pos + 1 :] + colon + value
        elif kind == "scalar" and colon:
            lines[i] = key + b": " + scalar.encode()
        elif kind == "block" and colon:
            # The value becomes a list or a mapping (a type change the schema must name).
            indent = b" " * (len(key) - len(key.lstrip()) + 2)
            lines[i : i + 1] = [key + b":", indent + (b"- " if b % 2 else b"k: ") + scalar.encode()]
        elif kind == "bytes":
            pos = b % (len(line) + 1)
            lines[i] = line[:pos] + [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\t", b"\x1b"][b % 6] + line[pos:]
        elif kind == "digit" and any(48 <= c <= 57 for c in line):
            # A slip of the finger in a date, a time, a number or an extension range.
            digits = [k for k, c in enumerate(line) if 48 <= c <= 57]
            pos = digits[b % len(digits)]
            lines[i] = line[:pos] + str((line[pos] - 48 + 1 + b % 9) % 10).encode() + line[pos + 1 :]
        elif kind == "truncate":
            del lines[i:]
            if not lines:
                lines = [b""]
        if not lines:
            lines = [b""]
    return b"\n".join(lines)


mutations = st.lists(
    st.tuples(
        st.sampled_from(
            ["delete", "duplicate", "indent", "typo", "scalar", "block", "bytes", "digit", "digit", "truncate"]
        ),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
        st.sampled_from(SCALARS),
    ),
    min_size=1,
    max_size=4,
)


def check(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-rules-") as tmp:
        directory = Path(tmp)
        for name in FILES:
            (directory / name).write_bytes(files.get(name, SOURCES[name]))
        try:
            load_all(directory, set(files))
        except RulesError as exc:
            assert exc.problems
            for problem in exc.problems:
                match = PROBLEM.match(problem)
                assert match, f"not file:line: ...: {problem!r}"
                name = Path(match["file"]).name
                assert name in FILES, problem
                assert 1 <= int(match["line"]) <= files.get(name, SOURCES[name]).count(b"\n") + 2, problem


def test_the_real_rules_load() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in FILES:
            shutil.copy(RULES / name, tmp)
        load_all(Path(tmp))


# A third of the profile's examples: every example parses YAML in pure Python (tens of ms).
fewer = settings(max_examples=max(10, settings().max_examples // 3))


@fewer
@given(name=st.sampled_from(FILES), edits=mutations)
@example(name="notify.yaml", edits=[("digit", 27, 15, "")])  # regression: from "2026-81-23T18:00" raised
@example(name="routing.yaml", edits=[("scalar", 40, 0, "[" * 50 + "]" * 50)])
def test_mutated_rules_load_or_fail_with_file_and_line(name: str, edits: list[Mutation]) -> None:
    check({name: mutate(SOURCES[name], edits)})


@fewer
@given(edits=st.dictionaries(st.sampled_from(FILES), mutations, min_size=2, max_size=len(FILES)))
# Regression: a mapping as extension_pattern reached re.compile through the directory check (TypeError).
@example(
    edits={
        "directory.yaml": [("delete", 0, 0, "")],
        "lettering.yaml": [("duplicate", 0, 0, ""), ("scalar", 5485, 0, "{organisation}")],
    }
)
def test_several_broken_files_at_once(edits: dict[str, list[Mutation]]) -> None:
    check({name: mutate(SOURCES[name], e) for name, e in edits.items()})


@fewer
@given(name=st.sampled_from(FILES), data=st.binary(max_size=300))
# Regressions: RecursionError out of PyYAML; a control character gave a problem without a line;
# a recursive alias made jsonschema recurse forever.
@example(name="routing.yaml", data=b"[" * 1200)
@example(name="lettering.yaml", data=b"a: " + b"[" * 1200)
@example(name="notify.yaml", data=b"[" * 45 + b"]" * 45)
@example(name="messaging.yaml", data=b"contents: \x00")
@example(name="directory.yaml", data=b"\xef\xbb\xbf")
@example(name="messaging.yaml", data=b"- 1\n- 2\n")
@example(name="notify.yaml", data=b"a: &a [*a]\n")
def test_any_bytes_in_a_rules_file(name: str, data: bytes) -> None:
    check({name: data})
