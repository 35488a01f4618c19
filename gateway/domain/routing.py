"""Routing of citizen SMS (flow B): which queue gets a message, with which auto-reply.

Pure domain code: the rules arrive already validated (see ``gateway/rules/routing.py``), the
message arrives already parsed by its provider adapter, and `route` returns a `RouteDecision`.
The only "outside world" consulted is the public-holiday table of the ``holidays`` package,
which is pure computation (the lunar calendar and substitute-holiday law, no I/O).

Matching semantics (the telecom team's contract, also described in ``rules/routing.yaml``):

- Rules are tried top to bottom; the first rule whose conditions ALL hold wins. The last rule
  is a default (no conditions), so every message gets a queue.
- ``keywords`` match when ANY keyword occurs in the text as a substring, after Unicode NFC
  normalisation and case folding of both sides. Substring (not whole-word) matching is what
  Korean needs: particles attach to the noun ("가로등이", "가로등은", "가로등도" all contain
  "가로등"), and citizens' spacing is irregular. The price is that a short keyword can match
  inside a longer word ("불" is in "불편"), so prefer specific keywords. NFC matters because some
  phones send decomposed Hangul (jamo sequences) that would otherwise not equal the syllables.
- ``regex`` is a Python regular expression searched (not anchored) in the NFC text, without case
  folding; write ``(?i)`` for case-insensitive matching.
- ``time`` windows are local times (Asia/Seoul) ``HH:MM-HH:MM``, start included, end excluded;
  a window whose end is before its start crosses midnight ("18:00-09:00").
- ``days`` is the day type of the local calendar date the message was received on. Precedence:
  a declared workday is a weekday; otherwise a holiday (local override first, then the national
  calendar, substitute holidays included) is a holiday even on a weekend; then Saturday/Sunday
  are weekend; everything else is a weekday.
"""

from __future__ import annotations

import bisect
import functools
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from functools import cached_property
from zoneinfo import ZoneInfo

import ahocorasick
import holidays

from gateway.domain.numbers import display, mask
from gateway.domain.rules import template_problems

MINUTES_PER_DAY = 24 * 60
SECONDS_PER_DAY = 86400.0

# The action queue that sends a reply back to the department whose message the citizen answers.
THREAD_DEPARTMENT = "thread_department"
DEPARTMENT_QUEUE_PREFIX = "dept:"

# Variables an auto-reply template may use; `route` fills all of them for every message.
REPLY_VARIABLES = frozenset(
    {
        "organisation",  # 한빛시청
        "city_number",  # the number the citizen texted, local form: 031-900-2000
        "received_date",  # 9월 25일
        "received_time",  # 23:00
        "queue_name",  # 당직실
        "day_name",  # 평일 / 주말 / 공휴일
        "holiday_name",  # 추석, or "" when the day is not a holiday
    }
)


class DayType(StrEnum):
    """What kind of day a calendar date is for routing purposes."""

    WEEKDAY = "weekday"
    WEEKEND = "weekend"
    HOLIDAY = "holiday"


DAY_NAMES_KO = {DayType.WEEKDAY: "평일", DayType.WEEKEND: "주말", DayType.HOLIDAY: "공휴일"}


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


@dataclass(frozen=True, slots=True)
class InboundSms:
    """A citizen's SMS as the provider adapter parsed it."""

    message_id: str  # the provider's id: the idempotency key
    provider: str
    to: str  # E.164 of the city number the citizen texted
    sender: str  # E.164 of the citizen
    text: str
    received_at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class ThreadContext:
    """The last message a department sent to this citizen (looked up by the caller).

    ``department_id`` is the department's id (``tax``) or its queue (``dept:tax``).
    """

    department_id: str
    sent_at: float  # epoch seconds

    @property
    def queue(self) -> str:
        """The department's queue id: ``dept:<id>``."""
        if self.department_id.startswith(DEPARTMENT_QUEUE_PREFIX):
            return self.department_id
        return DEPARTMENT_QUEUE_PREFIX + self.department_id


# --------------------------------------------------------------------------------------------
# Calendar
# --------------------------------------------------------------------------------------------


class Calendar:
    """Day types in one time zone: national holidays of Korea plus the city's local overrides.

    National holidays come from ``holidays.country_holidays("KR")`` with Korean names (lunar
    holidays and substitute holidays included), computed lazily once per year and cached, as is
    the day type of every date asked for: routing asks for the same few dates all day long.
    """

    def __init__(
        self,
        overrides_holidays: Mapping[date, str],
        overrides_workdays: Iterable[date] = (),
        tz: str = "Asia/Seoul",
    ) -> None:
        self.overrides_holidays: Mapping[date, str] = dict(overrides_holidays)
        self.overrides_workdays: frozenset[date] = frozenset(overrides_workdays)
        self.tz = ZoneInfo(tz)
        self._national: dict[int, Mapping[date, str]] = {}
        self._days: dict[date, tuple[DayType, str | None]] = {}

    def national_holidays(self, year: int) -> Mapping[date, str]:
        """Korea's public holidays of ``year`` (date -> Korean name), from the holidays package."""
        table = self._national.get(year)
        if table is None:
            # dict() detaches the table from the package's lazily-growing HolidayBase.
            table = dict(holidays.country_holidays("KR", years=year, language="ko"))
            self._national[year] = table
        return table

    def holiday_name(self, d: date) -> str | None:
        """The name of the holiday the city observes on ``d``; None on a declared workday."""
        return self._lookup(d)[1]

    def day_type(self, when: datetime | date) -> DayType:
        """``holiday``, ``weekend`` or ``weekday`` of a date, or of a datetime's local date.

        An aware datetime is converted to the calendar's zone first; a naive one is taken as
        local time already.
        """
        return self._lookup(self.local_date(when))[0]

    def local_date(self, when: datetime | date) -> date:
        """The calendar's local date of ``when`` (see `day_type`)."""
        if isinstance(when, datetime):
            return (when.astimezone(self.tz) if when.tzinfo is not None else when).date()
        return when

    def local_time(self, epoch: float) -> datetime:
        """An epoch timestamp as an aware datetime in the calendar's zone."""
        return datetime.fromtimestamp(epoch, self.tz)

    def describe(self, d: date) -> tuple[DayType, str | None]:
        """(day type, holiday name) of ``d`` in one lookup."""
        return self._lookup(d)

    def _lookup(self, d: date) -> tuple[DayType, str | None]:
        found = self._days.get(d)
        if found is None:
            found = self._compute(d)
            self._days[d] = found
        return found

    def _compute(self, d: date) -> tuple[DayType, str | None]:
        if d in self.overrides_workdays:
            return DayType.WEEKDAY, None
        name = self.overrides_holidays.get(d) or self.national_holidays(d.year).get(d)
        if name:
            return DayType.HOLIDAY, name
        if d.weekday() >= 5:
            return DayType.WEEKEND, None
        return DayType.WEEKDAY, None


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------

_WINDOW = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\s*")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Local minutes of the day ``[start, end)``; ``start > end`` crosses midnight."""

    start: int  # 0..1439
    end: int  # 0..1440 (24:00)

    def contains(self, minute: int) -> bool:
        """True when ``minute`` (0..1439, local) falls in the window."""
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def parse_window(text: str) -> TimeWindow:
    """``"18:00-09:00"`` -> `TimeWindow`; `ValueError` with a message for the telecom team."""
    m = _WINDOW.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a time window; write HH:MM-HH:MM, like 09:00-18:00")
    (h1, m1, h2, m2) = (int(g) for g in m.groups())
    for hour, minute, what in ((h1, m1, "start"), (h2, m2, "end")):
        if hour > 24 or minute > 59 or (hour == 24 and minute != 0):
            raise ValueError(f"{text!r}: {what} {hour:02d}:{minute:02d} is not a time of day (00:00 to 24:00)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == MINUTES_PER_DAY:
        raise ValueError(f"{text!r}: a window cannot start at 24:00; write 00:00")
    if start == end:
        raise ValueError(f"{text!r} is empty; write 00:00-24:00 for the whole day")
    return TimeWindow(start, end)


def fold(text: str) -> str:
    """How keywords and texts are compared: Unicode NFC, then case folding."""
    return unicodedata.normalize("NFC", text).casefold()


@dataclass(frozen=True, slots=True)
class ThreadCondition:
    """``thread: true`` (a reply), ``{within_days: N}`` (a reply within N days), ``false`` (not one)."""

    reply: bool = True
    within_days: float | None = None  # only with reply=True; None: any age


@dataclass(frozen=True, slots=True)
class Conditions:
    """What a message must look like for a rule to match; None means "any"."""

    to: frozenset[str] | None = None  # E.164 city numbers
    senders: frozenset[str] | None = None  # E.164 citizen numbers ...
    sender_prefixes: tuple[str, ...] = ()  # ... or E.164 prefixes ("+8210")
    keywords: tuple[str, ...] | None = None
    regex: str | None = None
    time: tuple[TimeWindow, ...] | None = None
    days: frozenset[DayType] | None = None
    thread: ThreadCondition | None = None

    @property
    def is_empty(self) -> bool:
        """True for a default rule: no condition at all."""
        return (
            self.to is None
            and self.senders is None
            and not self.sender_prefixes
            and self.keywords is None
            and self.regex is None
            and self.time is None
            and self.days is None
            and self.thread is None
        )


@dataclass(frozen=True, slots=True)
class Action:
    """What happens to a matching message."""

    queue: str  # a queue id of RoutingRules.queues, or THREAD_DEPARTMENT
    auto_reply: str | None = None  # template of REPLY_VARIABLES
    priority: Priority = Priority.NORMAL
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    name: str  # unique in a rule set
    when: Conditions
    then: Action


@dataclass(frozen=True, slots=True)
class QueueInfo:
    id: str  # "duty", "complaint", "dept:transport"
    name: str  # what staff read: 당직실, 민원처리팀, 교통행정과


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def reply_template_problems(template: str) -> list[str]:
    """Human messages for everything wrong with an auto-reply template ([] when it is fine):
    the same checks as lettering texts, over `REPLY_VARIABLES`."""
    return template_problems(template, REPLY_VARIABLES)


# --------------------------------------------------------------------------------------------
# Compiled form: what `route` runs
# --------------------------------------------------------------------------------------------


class _Compiled:
    """One rule prepared for the hot loop: plain attributes, regexes compiled, keywords folded.

    The to / days / time conditions are not here: they are answered once per (city number, day
    type, time segment) by the candidate index of `_Engine`.
    """

    __slots__ = (
        "index",
        "indexed",
        "keywords",
        "keywords_only",
        "regex",
        "rule",
        "sender_prefixes",
        "senders",
        "thread_reply",
        "thread_within_s",
    )

    def __init__(self, index: int, rule: Rule) -> None:
        when = rule.when
        self.index = index
        self.rule = rule
        self.senders = when.senders
        self.sender_prefixes = when.sender_prefixes
        if when.senders is None and when.sender_prefixes:
            self.senders = frozenset()  # the prefixes alone decide
        self.keywords = None if when.keywords is None else tuple(dict.fromkeys(fold(k) for k in when.keywords))
        self.regex = None if when.regex is None else re.compile(when.regex)
        thread = when.thread
        self.thread_reply: bool | None = None if thread is None else thread.reply
        self.thread_within_s = (
            None if thread is None or thread.within_days is None else thread.within_days * SECONDS_PER_DAY
        )
        # Nothing but keywords left to check after the candidate index: `route` skips `_dynamic_ok`.
        self.keywords_only = (
            self.keywords is not None and self.senders is None and self.thread_reply is None and self.regex is None
        )
        # Keywords the keyword index looks up; None when the keyword condition always holds (no
        # keywords condition, or a blank keyword, which occurs in every text).
        self.indexed: tuple[str, ...] | None = None if self.keywords is None or "" in self.keywords else self.keywords


class _Facts:
    """Everything about one message that the conditions look at, computed once."""

    __slots__ = ("day", "folded", "holiday", "local", "minute", "msg", "nfc", "thread", "thread_age")

    def __init__(self, msg: InboundSms, calendar: Calendar, thread: ThreadContext | None) -> None:
        self.msg = msg
        self.local = calendar.local_time(msg.received_at)
        self.minute = self.local.hour * 60 + self.local.minute
        self.day, self.holiday = calendar.describe(self.local.date())
        self.nfc = unicodedata.normalize("NFC", msg.text)
        self.folded = self.nfc.casefold()
        self.thread = thread
        self.thread_age = None if thread is None else msg.received_at - thread.sent_at


class _Engine:
    """Two indexes over the rules plus the per-rule checks for the remaining conditions.

    For speed with hundreds of rules:

    * the conditions that depend only on (city number, day type, minute of day) are resolved
      per combination once and cached: the minute is mapped to a segment between consecutive
      window boundaries of all rules, so the cache stays small (numbers x 3 day types x
      segments). Each entry holds the rules still possible that have NO keyword condition, in
      rule order (usually a handful: duty, thread and default rules);
    * rules WITH keywords are found through one Aho-Corasick automaton over every keyword
      (pyahocorasick, in C): a single pass over the text finds every keyword it contains, however
      many rules there are. The keywords found give the rules whose keyword condition holds;
      their static conditions are then checked one by one.

    `route` merges the two, in rule order, and the first rule whose remaining conditions hold
    wins: exactly the first match of a top-to-bottom scan (tests compare it with a naive scan).
    """

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self.compiled = tuple(_Compiled(i, r) for i, r in enumerate(rules))
        self.numbers = frozenset(n for r in rules if r.when.to is not None for n in r.when.to)
        bounds = {0}
        for r in rules:
            for w in r.when.time or ():
                bounds.update((w.start, w.end % MINUTES_PER_DAY))
        self.bounds = tuple(sorted(bounds))
        self._candidates: dict[tuple[str, DayType, int], tuple[_Compiled, ...]] = {}
        self._interned: dict[tuple[int, ...], tuple[_Compiled, ...]] = {}
        # keyword -> the rules (in order) that list it; first two characters -> keywords.
        rules_of: dict[str, list[_Compiled]] = {}
        for c in self.compiled:
            for keyword in c.indexed or ():
                rules_of.setdefault(keyword, []).append(c)
        self.rules_of = {k: tuple(v) for k, v in rules_of.items()}
        self._automaton = ahocorasick.Automaton()
        for keyword, found in self.rules_of.items():
            if keyword:
                self._automaton.add_word(keyword, found)
        if len(self._automaton):
            self._automaton.make_automaton()

    def candidates(self, to: str, day: DayType, minute: int) -> tuple[_Compiled, ...]:
        """The rules without a keyword condition whose to/days/time conditions hold, in order."""
        number = to if to in self.numbers else ""  # every other number behaves alike
        segment = bisect.bisect_right(self.bounds, minute) - 1
        key = (number, day, segment)
        found = self._candidates.get(key)
        if found is None:
            start = self.bounds[segment]  # every minute of a segment gives the same answer
            indexes = tuple(
                c.index for c in self.compiled if c.indexed is None and _static_ok(c.rule.when, number, day, start)
            )
            found = self._interned.setdefault(indexes, tuple(self.compiled[i] for i in indexes))
            self._candidates[key] = found
        return found

    def keyword_hits(self, folded: str) -> list[_Compiled]:
        """The rules with a keyword condition that holds for ``folded``, in rule order."""
        if not len(self._automaton):
            return []
        hits: set[_Compiled] = set()
        for _, found in self._automaton.iter(folded):
            hits.update(found)
        if not hits:
            return []
        return sorted(hits, key=_index_of) if len(hits) > 1 else list(hits)


def _index_of(c: _Compiled) -> int:
    return c.index


def _static_ok(when: Conditions, to: str, day: DayType, minute: int) -> bool:
    if when.to is not None and to not in when.to:
        return False
    if when.days is not None and day not in when.days:
        return False
    return when.time is None or any(w.contains(minute) for w in when.time)


def _dynamic_ok(c: _Compiled, f: _Facts) -> bool:
    """The conditions of a candidate that depend on the sender, the thread and the text.

    Keywords are checked by `route` before this is called.
    """
    if c.senders is not None:
        sender = f.msg.sender
        if sender not in c.senders and not sender.startswith(c.sender_prefixes):
            return False
    if c.thread_reply is not None:
        age = f.thread_age
        if c.thread_reply:
            if age is None or (c.thread_within_s is not None and age > c.thread_within_s):
                return False
        elif age is not None:
            return False
    return c.regex is None or c.regex.search(f.nfc) is not None


def _why_not(c: _Compiled, f: _Facts) -> str | None:
    """Why rule ``c`` does not match (the first failing condition), or None when it matches.

    Evaluates the same conditions as the fast path (`_static_ok`, the keyword loop of `route`,
    `_dynamic_ok`) independently, in the order they are written in the YAML reference; only used
    to build explanations, so it may allocate. Tests check that the two paths agree.
    """
    when = c.rule.when
    if when.to is not None and f.msg.to not in when.to:
        wanted = ", ".join(display(n) for n in sorted(when.to))
        return f"to {display(f.msg.to)} not in {wanted}"
    if when.days is not None and f.day not in when.days:
        shown = f"{f.day.value} ({f.holiday})" if f.holiday else f.day.value
        wanted = ", ".join(d.value for d in DayType if d in when.days)
        return f"day is {shown}, not {wanted}"
    if when.time is not None and not any(w.contains(f.minute) for w in when.time):
        return f"time {_hhmm(f.minute)} not in {', '.join(str(w) for w in when.time)}"
    if c.senders is not None and f.msg.sender not in c.senders and not f.msg.sender.startswith(c.sender_prefixes):
        return f"sender {mask(f.msg.sender)} not in the rule's {len(c.senders) + len(c.sender_prefixes)} numbers"
    if c.thread_reply is not None:
        thread, age = f.thread, f.thread_age
        if c.thread_reply and (thread is None or age is None):
            return "not a reply to a department's message"
        within = c.thread_within_s
        if c.thread_reply and thread is not None and age is not None and within is not None and age > within:
            limit = within / SECONDS_PER_DAY
            return f"reply to {thread.queue} after {age / SECONDS_PER_DAY:.1f} days, more than {limit:g}"
        if not c.thread_reply and thread is not None:
            return f"is a reply to {thread.queue}"
    if c.keywords is not None and not any(k in f.folded for k in c.keywords):
        shown = ", ".join(c.keywords[:6]) + (", …" if len(c.keywords) > 6 else "")
        return f"no keyword of {shown}"
    if c.regex is not None and c.regex.search(f.nfc) is None:
        return f"text does not match regex {c.regex.pattern}"
    return None


# --------------------------------------------------------------------------------------------
# Rule set and decision
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingRules:
    """One consistent, validated routing rule set; swapped as a whole on reload."""

    rules: tuple[Rule, ...]
    queues: Mapping[str, QueueInfo]
    calendar: Calendar
    version: str  # first 12 hex digits of the sha256 of routing.yaml
    organisation: str = ""
    # E.164 of routing.yaml's city_numbers: the only numbers the intake takes messages for (empty:
    # none listed, any number is taken).
    city_numbers: frozenset[str] = frozenset()
    _engine: _Engine = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Invariants `route` relies on; the loader reports them with file:line before this.
        if not self.rules or not self.rules[-1].when.is_empty:
            raise ValueError("the last routing rule must be a default rule (no conditions)")
        for rule in self.rules:
            thread = rule.when.thread
            if rule.then.queue == THREAD_DEPARTMENT and (thread is None or not thread.reply):
                raise ValueError(f"rule {rule.name!r}: queue {THREAD_DEPARTMENT} needs a thread condition")
        object.__setattr__(self, "_engine", _Engine(self.rules))

    def queue_name(self, queue: str) -> str:
        """The Korean name staff know the queue by; the id itself when the queue is not listed."""
        info = self.queues.get(queue)
        return info.name if info is not None else queue


@dataclass(frozen=True)
class RouteDecision:
    """Where a message goes and why.

    ``explain`` (for each rule before the winning one: its name and why it did not match) is
    computed on first access, not in `route`, so routing stays fast when nobody asks.
    """

    rule: str
    queue: str
    queue_name: str
    auto_reply: str | None  # rendered; None when the rule sends none
    priority: Priority
    tags: tuple[str, ...]
    day_type: DayType
    holiday_name: str | None
    local_time: datetime  # when the message was received, in the calendar's zone
    rules_version: str
    _facts: _Facts = field(repr=False, compare=False)
    _compiled: tuple[_Compiled, ...] = field(repr=False, compare=False)  # every rule (shared, not copied)
    _winner: int = field(repr=False, compare=False)  # the winning rule's index in `_compiled`

    @cached_property
    def explain(self) -> tuple[tuple[str, str], ...]:
        """(rule name, why it did not match) for every rule tried before the winning one."""
        out: list[tuple[str, str]] = []
        for c in self._compiled[: self._winner]:
            reason = _why_not(c, self._facts)
            out.append((c.rule.name, reason or "matches (bug: should have won)"))
        return tuple(out)


def route(msg: InboundSms, rules: RoutingRules, thread: ThreadContext | None = None) -> RouteDecision:
    """Decide the queue, priority, tags and auto-reply of ``msg``: the first matching rule wins.

    ``thread`` is the last message a department sent to this citizen, when the caller knows one;
    it feeds the ``thread`` condition and the ``thread_department`` queue.
    """
    engine = rules._engine
    facts = _Facts(msg, rules.calendar, thread)
    winner: _Compiled | None = None
    # Rules with keywords whose keyword condition holds (usually none or a few), merged in rule
    # order with the rules without keywords still possible at this number, day and time.
    hits = engine.keyword_hits(facts.folded)
    h = 0
    for c in engine.candidates(msg.to, facts.day, facts.minute):
        while h < len(hits) and hits[h].index < c.index:
            hit = hits[h]
            h += 1
            if _static_ok(hit.rule.when, msg.to, facts.day, facts.minute) and (
                hit.keywords_only or _dynamic_ok(hit, facts)
            ):
                winner = hit
                break
        if winner is not None:
            break
        if _dynamic_ok(c, facts):
            winner = c
            break
    if winner is None:  # unreachable: the last rule has no conditions; kept for type safety
        winner = engine.compiled[-1]
    action = winner.rule.then
    queue = action.queue
    if queue == THREAD_DEPARTMENT and thread is not None:
        # Always the case: RoutingRules only allows thread_department on rules requiring a thread.
        queue = thread.queue
    queue_name = rules.queue_name(queue)
    reply = None
    if action.auto_reply is not None:
        reply = _render(action.auto_reply, rules, facts, queue_name)
    # The frozen dataclass's generated __init__ sets each of the 13 fields through
    # object.__setattr__, which costs as much as the whole routing; filling the instance
    # dict directly gives the same object (every field set, `explain` computed lazily).
    decision = object.__new__(RouteDecision)
    decision.__dict__.update(
        rule=winner.rule.name,
        queue=queue,
        queue_name=queue_name,
        auto_reply=reply,
        priority=action.priority,
        tags=action.tags,
        day_type=facts.day,
        holiday_name=facts.holiday,
        local_time=facts.local,
        rules_version=rules.version,
        _facts=facts,
        _compiled=engine.compiled,
        _winner=winner.index,
    )
    return decision


@functools.lru_cache(maxsize=256)
def _display(e164: str) -> str:
    """`display` of a city number, cached: a phonenumbers parse costs more than the whole routing."""
    return display(e164)


@functools.lru_cache(maxsize=1024)
def _template_variables(template: str) -> frozenset[str]:
    """The `REPLY_VARIABLES` a template refers to (computing the others would be wasted)."""
    names = set()
    for _, name, _, _ in string.Formatter().parse(template):
        if name:
            names.add(re.split(r"[.\[]", name, maxsplit=1)[0])
    return frozenset(names & REPLY_VARIABLES)


def _render(template: str, rules: RoutingRules, f: _Facts, queue_name: str) -> str:
    local = f.local
    variables = _Blank()
    for name in _template_variables(template):
        if name == "organisation":
            variables[name] = rules.organisation
        elif name == "city_number":
            variables[name] = _display(f.msg.to)
        elif name == "received_date":
            variables[name] = f"{local.month}월 {local.day}일"
        elif name == "received_time":
            variables[name] = f"{local.hour:02d}:{local.minute:02d}"
        elif name == "queue_name":
            variables[name] = queue_name
        elif name == "day_name":
            variables[name] = DAY_NAMES_KO[f.day]
        elif name == "holiday_name":
            variables[name] = f.holiday or ""
    return template.format_map(variables).strip()


def local_datetime(calendar: Calendar, text: str) -> datetime:
    """An ISO date-time as the calendar's aware local time; a naive one is local already."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=calendar.tz)
    return parsed.astimezone(calendar.tz)


__all__ = [
    "DAY_NAMES_KO",
    "REPLY_VARIABLES",
    "THREAD_DEPARTMENT",
    "Action",
    "Calendar",
    "Conditions",
    "DayType",
    "InboundSms",
    "Priority",
    "QueueInfo",
    "RouteDecision",
    "RoutingRules",
    "Rule",
    "ThreadCondition",
    "ThreadContext",
    "TimeWindow",
    "fold",
    "local_datetime",
    "parse_window",
    "reply_template_problems",
    "route",
]
