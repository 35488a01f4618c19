"""Every rules file at once: `load_all` (``gateway run`` start-up, the hot reload, the worker) and
`check` / `cmd_rules_check` (``gateway rules check``).

The files and the order they load in are listed once, in `_load`. Adding another rules file
``rules/X.yaml`` touches two places:

1. its module, ``gateway/rules/X.py``: schema, checks and ``load_X(directory) -> XRules`` raising
   `RulesError` with ``file:line: key.path: message`` problems (build them with
   `gateway.infra.yamldoc`);
2. this module: a field of `RuleSet` and one ``loading.take(...)`` line in `_load`, side by side.

`load_all`, `check`, the reload path and ``gateway rules check`` then all know the new file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

from gateway.domain.guidance import ConsoleRules
from gateway.domain.notify import NotifyRules
from gateway.domain.postcall import MessagingRules
from gateway.domain.routing import RoutingRules
from gateway.domain.rules import Rules
from gateway.errors import RulesError
from gateway.infra.yamldoc import file_label
from gateway.rules.console import load_console
from gateway.rules.lettering import load_rules
from gateway.rules.messaging import load_messaging
from gateway.rules.notify import load_notify
from gateway.rules.routing import ROUTING_FILE, load_routing_rules

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of one directory, loaded together so that a reload swaps them together."""

    rules: Rules  # directory.yaml + lettering.yaml (the call flow)
    messaging: MessagingRules  # messaging.yaml (optional)
    routing: RoutingRules | None  # routing.yaml (optional: None without it)
    notify: NotifyRules  # notify.yaml (optional)
    # console.yaml (optional: empty without it): canned answers and the duty manual of the console
    console: ConsoleRules = field(default_factory=ConsoleRules)

    def summary(self) -> str:
        """What ``gateway rules check`` prints after ``rules OK: ``."""
        return (
            f"version {self.rules.version}, {len(self.rules.directory.departments)} departments, "
            f"{self.rules.directory.extension_count()} extensions, "
            f"{len(self.messaging.contents)} post-call contents"
        )


@dataclass
class _Loading:
    """One pass over the files: either the first `RulesError` stops it (`load_all`), or every
    file's problems are collected and the pass goes on (`check`)."""

    stop_at_first: bool
    problems: list[str] = field(default_factory=list)

    def take(self, load: Callable[[], T]) -> T | None:
        try:
            return load()
        except RulesError as exc:
            if self.stop_at_first:
                raise
            self.problems += exc.problems
            return None


def _load(directory: Path, loading: _Loading) -> RuleSet | None:
    """THE list of rules files, in load order; None when any of them has a problem."""
    rules = loading.take(lambda: load_rules(directory))
    # messaging.yaml's postcall ids are checked against the directory: only once that loaded.
    messaging = loading.take(lambda: load_messaging(directory, rules.directory)) if rules is not None else None
    routing = loading.take(lambda: load_routing_rules(directory))
    notify = loading.take(lambda: load_notify(directory))
    # console.yaml names routing.yaml's rules and tags: checked only once that loaded (or is absent).
    routing_failed = routing is None and (directory / ROUTING_FILE).exists()
    console = ConsoleRules() if routing_failed else loading.take(lambda: load_console(directory, routing))
    if loading.problems or rules is None or messaging is None or notify is None or console is None:
        return None
    return RuleSet(rules=rules, messaging=messaging, routing=routing, notify=notify, console=console)


def load_all(directory: Path) -> RuleSet:
    """Every rules file in ``directory``; the first file with problems raises its `RulesError`."""
    ruleset = _load(directory, _Loading(stop_at_first=True))
    if ruleset is None:  # pragma: no cover - with stop_at_first a problem has raised already
        raise RulesError([f"{file_label(directory)}: rules could not be loaded"])
    return ruleset


def load_and_check(directory: Path) -> tuple[RuleSet | None, list[str]]:
    """Every rules file in ``directory`` and every problem of all of them (the rules when none)."""
    loading = _Loading(stop_at_first=False)
    ruleset = _load(directory, loading)
    return ruleset, loading.problems


def check(directory: Path) -> list[str]:
    """Every problem of every rules file in ``directory`` (``file:line: key.path: message``); [] when fine."""
    return load_and_check(directory)[1]


def cmd_rules_check(directory: Path, out: TextIO) -> int:
    """``gateway rules check [DIR]``: print every problem, or a one-line summary; exit 0 / 1."""
    ruleset, problems = load_and_check(directory)
    for problem in problems:
        print(problem, file=out)
    if problems or ruleset is None:
        print(
            f"rules NOT OK: {len(problems)} problem{'s' if len(problems) != 1 else ''} in {file_label(directory)}",
            file=out,
        )
        return 1
    print(f"rules OK: {ruleset.summary()}", file=out)
    return 0
