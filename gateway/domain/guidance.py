"""Canned answers and the duty manual, per routing rule or tag (rules/console.yaml).

The telecom team keeps, beside the routing rules, what staff answer most often and what a duty
officer must do for each kind of message (Gimpo's duty system looks the manual up by itself).
A thread shows the entries of its routing rule and of each of its tags, rule first; entries
without `rules`/`tags` apply to every thread. Pure: the loader is `gateway.rules.console`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Canned:
    """A ready answer: `title` shown on its button, `text` put into the answer box (staff edit
    it before sending; nothing is sent by choosing it)."""

    title: str
    text: str
    rules: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ManualEntry:
    """What to do for a kind of message: a title and its steps, in order."""

    title: str
    steps: tuple[str, ...]
    rules: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Guidance:
    canned: tuple[Canned, ...] = ()
    manual: tuple[ManualEntry, ...] = ()


def _applies(rules: frozenset[str], tags: frozenset[str], rule: str, thread_tags: frozenset[str]) -> int:
    """0: not for this thread; 1: for every thread; 2: by tag; 3: by the thread's rule."""
    if not rules and not tags:
        return 1
    if rule in rules:
        return 3
    if tags & thread_tags:
        return 2
    return 0


@dataclass(frozen=True, slots=True)
class ConsoleRules:
    """rules/console.yaml, loaded (`version` as the rules' other files have one)."""

    canned: tuple[Canned, ...] = ()
    manual: tuple[ManualEntry, ...] = ()
    version: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def for_thread(self, rule: str, tags: Iterable[str]) -> Guidance:
        """The entries for a thread routed by `rule` with `tags`: the rule's first, then the
        tags', then the general ones (each group in file order)."""
        have = frozenset(tags)

        def pick(entries: Iterable[Canned | ManualEntry]) -> list[Canned | ManualEntry]:
            scored = [(_applies(e.rules, e.tags, rule, have), i, e) for i, e in enumerate(entries)]
            return [e for score, _, e in sorted((s for s in scored if s[0]), key=lambda s: (-s[0], s[1]))]

        canned = tuple(e for e in pick(self.canned) if isinstance(e, Canned))
        manual = tuple(e for e in pick(self.manual) if isinstance(e, ManualEntry))
        return Guidance(canned, manual)
