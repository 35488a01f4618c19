"""The extension directory: which department owns a desk extension.

Pure domain code: the directory is built from already-parsed entries (the YAML side lives in
``gateway/rules/directory.py``). Lookups run on every ``DialBegin``, so they are a binary search over sorted
ranges instead of a dict of every extension (4,000 phones today, the whole 5-digit space tomorrow).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_DIGITS = re.compile(r"[0-9]+")
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")


@dataclass(frozen=True, slots=True)
class Department:
    """A department as the citizen sees it on the lettering screen."""

    id: str  # stable id, e.g. "civil-passport"; survives renames of `name`
    organisation: str  # e.g. "한빛시청"
    name: str  # e.g. "민원여권과"
    guide: str  # short guide text for lettering, e.g. "여권 발급 관련 안내 전화입니다"
    caller_number: str  # E.164 of the department's real public number, "" if none
    postcall: str | None  # post-call content id, None if none


class DirectoryConflict(ValueError):
    """Two entries of a directory claim the same extension.

    ``index`` and ``other_index`` are positions in the entry sequence given to `Directory`
    (``other_index`` is the earlier one), so a caller can point at the offending lines.
    """

    def __init__(self, message: str, index: int, other_index: int) -> None:
        super().__init__(message)
        self.index = index
        self.other_index = other_index


def parse_extension_range(text: str) -> tuple[str, str]:
    """Parse ``"2001"`` or ``"2001-2099"`` into ``(first, last)``.

    Raises `ValueError` with a human message when the text is not an extension or a range, when
    first > last, or when both ends do not have the same number of digits ("999-1000" would mix
    3- and 4-digit extensions, which the PBX dials as different numbers).
    """
    match = _RANGE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an extension or range")
    first = match.group(1)
    last = match.group(2) or first
    _check_bounds(first, last)
    return first, last


def _check_bounds(first: str, last: str) -> None:
    if not (_DIGITS.fullmatch(first) and _DIGITS.fullmatch(last)):
        raise ValueError(f"'{first}-{last}': extensions are digits only")
    if len(first) != len(last):
        raise ValueError(f"'{first}-{last}': both ends must have the same number of digits")
    if int(first) > int(last):
        raise ValueError(f"'{first}-{last}': first extension is greater than the last")


def _label(first: str, last: str) -> str:
    return first if first == last else f"{first}-{last}"


# A range key is (digit count, int value): "0123" and "123" are different extensions on a PBX.
_Key = tuple[int, int]


def find_overlaps(ranges: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
    """Every pair ``(index, other_index)`` of overlapping ranges, ``other_index`` the earlier entry.

    Ranges must already be valid (see `parse_extension_range`). Each overlapping range is reported
    once, against the range that reaches furthest among those starting before it; that is enough
    to show the telecom team every line to fix without a quadratic list of pairs.
    """
    order = sorted(
        range(len(ranges)),
        key=lambda i: (len(ranges[i][0]), int(ranges[i][0]), i),
    )
    pairs: list[tuple[int, int]] = []
    reach: int | None = None  # index of the range with the largest end seen so far (same width)
    for i in order:
        width, start = len(ranges[i][0]), int(ranges[i][0])
        if reach is not None and len(ranges[reach][0]) == width and int(ranges[reach][1]) >= start:
            pairs.append((max(i, reach), min(i, reach)))
            if int(ranges[i][1]) > int(ranges[reach][1]):
                reach = i
        else:
            reach = i
    pairs.sort()
    return pairs


class Directory:
    """Maps desk extensions to departments using sorted, non-overlapping ranges."""

    __slots__ = ("_departments", "_ends", "_owners", "_starts")

    def __init__(self, entries: Iterable[tuple[str, str, Department]]) -> None:
        """Build from ``(first_ext, last_ext, department)``; a single extension has first == last.

        Raises `DirectoryConflict` when two entries overlap and `ValueError` when an entry is not a
        valid range (non-digits, first > last, different digit counts).
        """
        items = list(entries)
        for first, last, _ in items:
            _check_bounds(first, last)
        pairs = find_overlaps([(first, last) for first, last, _ in items])
        if pairs:
            index, other = pairs[0]
            a, b = items[index], items[other]
            raise DirectoryConflict(
                f"extensions {_label(a[0], a[1])} ({a[2].id}) overlap {_label(b[0], b[1])} ({b[2].id})",
                index,
                other,
            )
        seen: dict[str, Department] = {}
        for _, _, dept in items:
            seen.setdefault(dept.id, dept)
        self._departments = tuple(seen.values())
        items.sort(key=lambda item: (len(item[0]), int(item[0])))
        self._starts: list[_Key] = [(len(first), int(first)) for first, _, _ in items]
        self._ends: list[_Key] = [(len(last), int(last)) for _, last, _ in items]
        self._owners: list[Department] = [dept for _, _, dept in items]

    def lookup(self, extension: str) -> Department | None:
        """The department owning ``extension``, or None (unknown extension or not digits)."""
        if not _DIGITS.fullmatch(extension):
            return None
        key = (len(extension), int(extension))
        i = bisect_right(self._starts, key) - 1
        if i >= 0 and self._ends[i] >= key:  # ends share the width of their start
            return self._owners[i]
        return None

    def extension_count(self) -> int:
        """How many distinct extensions the directory maps."""
        return sum(end[1] - start[1] + 1 for start, end in zip(self._starts, self._ends, strict=True))

    @property
    def departments(self) -> tuple[Department, ...]:
        """Departments owning at least one extension, once each, in the order of the entries."""
        return self._departments

    def __len__(self) -> int:
        """Number of ranges (not extensions); see `extension_count`."""
        return len(self._starts)
