"""Loading ``rules/routing.yaml`` into `RoutingRules`, and ``gateway rules test``.

Same contract as the other rule files (see `gateway.infra.yamldoc`): every problem reads
``file:line: key.path: message`` and all problems of a load are reported at once, schema
problems and semantic ones (duplicate rule names, unknown queues, bad regexes and time windows,
template variables, the default rule, calendar dates, city numbers) alike.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfoNotFoundError

import phonenumbers
import yaml

from gateway.domain.numbers import NumberPlan, display
from gateway.domain.routing import (
    DAY_NAMES_KO,
    THREAD_DEPARTMENT,
    Action,
    Calendar,
    Conditions,
    DayType,
    InboundSms,
    Priority,
    QueueInfo,
    RouteDecision,
    RoutingRules,
    Rule,
    ThreadCondition,
    ThreadContext,
    TimeWindow,
    fold,
    local_datetime,
    parse_window,
    reply_template_problems,
    route,
)
from gateway.errors import RulesError
from gateway.infra.yamldoc import (
    Doc,
    KeyPath,
    Lines,
    file_label,
    format_path,
    parse_yaml,
    read_file,
    unique_sorted,
    validate_located,
)
from gateway.rules.directory import normalise_caller_number

ROUTING_FILE = "routing.yaml"

# Keys of a rule that are conditions: a rule without any of them is the default rule.
CONDITION_KEYS = ("to", "sender", "keywords", "regex", "time", "days", "thread")
_NOT_CONDITIONS = frozenset({"name", "description", "queue", "auto_reply", "priority", "tags"})

_QUEUE_ID = re.compile(r"[a-z][a-z0-9_-]*(:[a-z0-9][a-z0-9_-]*)?")
_SEPARATORS = re.compile(r"[\s\-().]")
_TEXT: dict[str, Any] = {"type": "string", "minLength": 1}


def _text_list(what: str) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "string",
            "minLength": 1,
            "x-message": {"type": f"{what} are quoted text (got {{value!r}})", "minLength": "must not be empty"},
        },
    }


RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "queue"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": "^[a-z0-9]+([_-][a-z0-9]+)*$",
            "x-message": {"pattern": "{value!r} is not a rule name: use lower-case letters, digits and dashes"},
        },
        "description": _TEXT,
        # conditions
        "to": _text_list("city numbers"),
        "sender": _text_list("sender numbers"),
        "keywords": _text_list("keywords"),
        "regex": _TEXT,
        "time": _text_list('time windows (like "09:00-18:00")'),
        "days": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {
                "enum": [d.value for d in DayType],
                "x-message": "{value!r} is not a day type: use weekday, weekend or holiday",
            },
        },
        "thread": {
            "type": ["boolean", "object"],
            "additionalProperties": False,
            "required": ["within_days"],
            "properties": {
                "within_days": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "x-message": "within_days is a number of days above 0 (got {value!r})",
                }
            },
            "x-message": {"type": "thread is true, false or {{within_days: N}} (got {value!r})"},
        },
        # actions
        "queue": _TEXT,
        "auto_reply": _TEXT,
        "priority": {
            "enum": [p.value for p in Priority],
            "x-message": "{value!r} is not a priority: use " + ", ".join(p.value for p in Priority),
        },
        "tags": _text_list("tags"),
    },
}

ROUTING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["queues", "rules"],
    "properties": {
        "organisation": _TEXT,
        "city_numbers": {
            "type": "object",
            "additionalProperties": {
                "type": "string",
                "x-message": 'city numbers are quoted text, like "031-900-2000" (got {value!r})',
            },
        },
        "queues": {"type": "object", "minProperties": 1, "additionalProperties": _TEXT},
        "calendar": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "holidays": {"type": ["object", "null"], "additionalProperties": _TEXT},
                "workdays": {"type": ["array", "null"], "items": {"type": "string"}},
            },
        },
        "rules": {"type": "array", "minItems": 1, "items": RULE_SCHEMA},
    },
}


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def load_routing(path: Path) -> RoutingRules:
    """Read, validate and build ``routing.yaml``; `RulesError` lists every problem found.

    ``version`` is the first 12 hex digits of the sha256 of the file's bytes.
    """
    label = file_label(path)
    rules = parse_routing(read_file(path, label), label)
    # The national holidays are computed on first use: about half a second the first time in a
    # process (the holidays package loads its Korean calendar). Pay it here, when the rules are
    # loaded, rather than on the first citizen's message (which would wait for it).
    today = datetime.now(rules.calendar.tz).date()
    rules.calendar.describe(today)
    return rules


def parse_routing(source: bytes | str, label: str) -> RoutingRules:
    """`load_routing` for text already read; ``label`` names the file in problems."""
    raw = source.encode("utf-8") if isinstance(source, str) else source
    data, lines = _parse(raw, label)
    data = _plain(data)
    doc = Doc(data, lines, label)
    doc.problems += validate_located(data, ROUTING_SCHEMA, lines, label)
    rules = _build(doc, hashlib.sha256(raw).hexdigest()[:12])
    if doc.problems or rules is None:
        ordered = unique_sorted(doc.problems)
        raise RulesError([p.text for p in ordered] or [f"{label}: routing rules could not be loaded"])
    return rules


def load_routing_rules(directory: Path) -> RoutingRules | None:
    """``directory/routing.yaml`` loaded (`load_routing`), or None when the file is absent (it is optional)."""
    path = directory / ROUTING_FILE
    return load_routing(path) if path.exists() else None


def routing_problems(directory: Path) -> list[str]:
    """Every problem of ``directory/routing.yaml`` for ``gateway rules check``; [] when absent or fine."""
    try:
        load_routing_rules(directory)
    except RulesError as exc:
        return exc.problems
    return []


# --------------------------------------------------------------------------------------------
# Parsing helpers
# --------------------------------------------------------------------------------------------


def _parse(raw: bytes, label: str) -> tuple[Any, Lines]:
    try:
        return parse_yaml(raw, label)
    except ValueError:
        # PyYAML builds unquoted 2026-02-30 as a date and raises a bare ValueError without a line:
        # find the culprits ourselves so the telecom team sees where.
        raise RulesError(_bad_timestamps(raw, label) or [f"{label}: invalid date"]) from None


def _bad_timestamps(raw: bytes, label: str) -> list[str]:
    problems: list[str] = []
    constructor = yaml.SafeLoader("")

    def walk(node: yaml.Node, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                walk(key_node, path)
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))
        elif isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:timestamp":
            try:
                constructor.construct_object(node)
            except ValueError as exc:
                where = format_path(path)
                prefix = f"{label}:{node.start_mark.line + 1}: " + (f"{where}: " if where else "")
                problems.append(f"{prefix}{node.value!r} is not a valid date ({exc})")

    try:
        root = yaml.compose(raw.decode("utf-8-sig"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError):
        return []
    if root is not None:
        walk(root, ())
    return problems


def _plain(value: Any) -> Any:
    """Dates YAML built from unquoted 2026-10-15 become ISO text again, so one code path checks them."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, date):  # datetime too
        return value.isoformat()
    return value


def _mapping(value: Any) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(value: Any) -> list[tuple[int, str]]:
    """(index, text) of the string items of a list; other items were reported by the schema."""
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)] if isinstance(value, list) else []


def _suggest(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(known)


# --------------------------------------------------------------------------------------------
# Semantic checks and building
# --------------------------------------------------------------------------------------------


def _build(doc: Doc, version: str) -> RoutingRules | None:
    data = _mapping(doc.data)
    numbers = _city_numbers(doc, _mapping(data.get("city_numbers")))
    queues = _queues(doc, _mapping(data.get("queues")))
    calendar = _calendar(doc, _mapping(data.get("calendar")))
    raw_rules = data.get("rules")
    rules = _rules(doc, raw_rules if isinstance(raw_rules, list) else [], numbers, queues)
    if doc.problems or rules is None or calendar is None:
        return None
    organisation = data.get("organisation")
    return RoutingRules(
        rules=rules,
        queues=queues,
        calendar=calendar,
        version=version,
        organisation=organisation if isinstance(organisation, str) else "",
        city_numbers=frozenset(numbers.values()),
    )


def _city_numbers(doc: Doc, raw: Mapping[Any, Any]) -> dict[str, str]:
    """Alias -> E.164 of the city's numbers."""
    out: dict[str, str] = {}
    for alias, text in raw.items():
        if not isinstance(text, str):
            continue
        try:
            out[str(alias)] = normalise_caller_number(text)
        except ValueError as exc:
            doc.add(("city_numbers", alias), str(exc))
    return out


def _queues(doc: Doc, raw: Mapping[Any, Any]) -> dict[str, QueueInfo]:
    out: dict[str, QueueInfo] = {}
    for queue_id, name in raw.items():
        key = str(queue_id)
        if key == THREAD_DEPARTMENT:
            doc.add(("queues", queue_id), f"{THREAD_DEPARTMENT!r} is reserved: it routes back to a department")
        elif not _QUEUE_ID.fullmatch(key):
            doc.add(("queues", queue_id), f"{key!r} is not a queue id: use lower-case, like duty or dept:tax")
        elif isinstance(name, str):
            out[key] = QueueInfo(key, name)
    return out


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text) else None
    except ValueError:
        return None


def _calendar(doc: Doc, raw: Mapping[Any, Any]) -> Calendar | None:
    holidays: dict[date, str] = {}
    for key, name in _mapping(raw.get("holidays")).items():
        day = _date(str(key))
        if day is None:
            doc.add(("calendar", "holidays", key), f'{key!r} is not a date: write YYYY-MM-DD, like "2026-10-15"')
        elif isinstance(name, str):
            holidays[day] = name
    workdays: list[date] = []
    for i, text in _strings(raw.get("workdays")):
        day = _date(text)
        if day is None:
            doc.add(("calendar", "workdays", i), f'{text!r} is not a date: write YYYY-MM-DD, like "2026-11-07"')
        elif day in holidays:
            doc.add(("calendar", "workdays", i), f"{text} is also listed under calendar.holidays ({holidays[day]})")
        else:
            workdays.append(day)
    try:
        return Calendar(holidays, workdays)
    except ZoneInfoNotFoundError as exc:  # no time zone database installed: say so, not a traceback
        doc.add(("calendar",), f"cannot build the calendar: {exc}")
        return None


def _rules(
    doc: Doc, raw_rules: list[Any], numbers: Mapping[str, str], queues: Mapping[str, QueueInfo]
) -> tuple[Rule, ...] | None:
    built: list[Rule] = []
    first_named: dict[str, int] = {}
    shadowing_reported = False
    last = len(raw_rules) - 1
    for i, raw in enumerate(raw_rules):
        if not isinstance(raw, Mapping):
            continue
        base: KeyPath = ("rules", i)
        name = raw.get("name")
        if isinstance(name, str):
            if name in first_named:
                j = first_named[name]
                first = f"first at rules[{j}], line {doc.line(('rules', j))}"
                doc.add((*base, "name"), f"duplicate rule name {name!r} ({first})")
            else:
                first_named[name] = i
        # Unknown keys count as conditions here: a misspelt condition is reported as unknown key,
        # not a second time as "no conditions".
        conditions = [str(k) for k in raw if k not in _NOT_CONDITIONS]
        known_conditions = [k for k in CONDITION_KEYS if k in raw]
        if i == last and known_conditions:
            doc.add(
                base,
                "the last rule must be a default rule without conditions, so that every message "
                f"gets a queue (rule {name!r} has: {', '.join(known_conditions)})",
            )
        elif i != last and not conditions and not shadowing_reported:
            shadowing_reported = True  # once: the rules after it are all unreachable anyway
            after = last - i
            doc.add(
                base,
                f"rule {name!r} has no conditions, so it matches every message: "
                f"the {after} rule{'s' if after != 1 else ''} after it would never be used",
            )
        rule = _rule(doc, base, raw, numbers, queues)
        if rule is not None:
            built.append(rule)
    if doc.problems or len(built) != len(raw_rules):
        return None
    return tuple(built)


def _rule(
    doc: Doc, base: KeyPath, raw: Mapping[Any, Any], numbers: Mapping[str, str], queues: Mapping[str, QueueInfo]
) -> Rule | None:
    """One rule, or None after reporting why it cannot be built."""
    before = len(doc.problems)
    to = _to_numbers(doc, base, raw.get("to"), numbers) if "to" in raw else None
    senders, prefixes = _senders(doc, base, raw.get("sender")) if "sender" in raw else (None, ())

    keywords: tuple[str, ...] | None = None
    if "keywords" in raw:
        items = _strings(raw.get("keywords"))
        for j, word in items:
            if not fold(word).strip():
                doc.add((*base, "keywords", j), "a blank keyword would match every message")
        keywords = tuple(word for _, word in items)

    regex = raw.get("regex")
    if isinstance(regex, str):
        try:
            re.compile(regex)
        except re.error as exc:
            doc.add((*base, "regex"), f"not a valid regular expression: {exc}")

    windows: list[TimeWindow] = []
    for j, text in _strings(raw.get("time")):
        try:
            windows.append(parse_window(text))
        except ValueError as exc:
            doc.add((*base, "time", j), str(exc))

    days = raw.get("days")
    thread = _thread(raw.get("thread")) if "thread" in raw else None

    queue = raw.get("queue")
    if isinstance(queue, str):
        if queue == THREAD_DEPARTMENT:
            if thread is None or not thread.reply:
                doc.add(
                    (*base, "queue"),
                    f"queue {THREAD_DEPARTMENT} needs a thread condition (thread: {{within_days: N}} or thread: true)",
                )
        elif queue not in queues:
            known = [*queues, THREAD_DEPARTMENT]
            doc.add((*base, "queue"), f"unknown queue {queue!r}: not listed under queues ({_suggest(queue, known)})")

    reply = raw.get("auto_reply")
    if isinstance(reply, str):
        for message in reply_template_problems(reply):
            doc.add((*base, "auto_reply"), message)

    if len(doc.problems) != before:
        return None
    try:
        return Rule(
            name=str(raw["name"]),
            when=Conditions(
                to=to,
                senders=senders,
                sender_prefixes=prefixes,
                keywords=keywords,
                regex=regex if isinstance(regex, str) else None,
                time=tuple(windows) if "time" in raw else None,
                days=frozenset(DayType(d) for d in days) if isinstance(days, list) else None,
                thread=thread,
            ),
            then=Action(
                queue=str(queue),
                auto_reply=reply if isinstance(reply, str) else None,
                priority=Priority(raw.get("priority", Priority.NORMAL.value)),
                tags=tuple(str(t) for t in raw.get("tags", ())),
            ),
        )
    except (KeyError, TypeError, ValueError):
        return None  # the shape is wrong: the schema has said where


def _thread(value: Any) -> ThreadCondition | None:
    if isinstance(value, bool):
        return ThreadCondition(reply=value)
    within = _mapping(value).get("within_days")
    if isinstance(within, int | float) and not isinstance(within, bool) and within > 0:
        return ThreadCondition(reply=True, within_days=float(within))
    return None  # reported by the schema


def _to_numbers(doc: Doc, base: KeyPath, value: Any, numbers: Mapping[str, str]) -> frozenset[str]:
    out: set[str] = set()
    known = set(numbers.values())
    for j, text in _strings(value):
        if text in numbers:
            out.add(numbers[text])
            continue
        try:
            e164 = normalise_caller_number(text)
        except ValueError:
            hint = f" ({_suggest(text, list(numbers))})" if numbers else ""
            doc.add((*base, "to", j), f"{text!r} is neither a name from city_numbers nor a phone number{hint}")
            continue
        if numbers and e164 not in known:
            listed = ", ".join(f"{a} {display(n)}" for a, n in numbers.items())
            doc.add((*base, "to", j), f"{text} is not one of the city_numbers ({listed})")
            continue
        out.add(e164)
    return frozenset(out)


def _senders(doc: Doc, base: KeyPath, value: Any) -> tuple[frozenset[str], tuple[str, ...]]:
    """Exact E.164 numbers and E.164 prefixes ("010*" -> "+8210") of a ``sender`` condition."""
    exact: set[str] = set()
    prefixes: list[str] = []
    for j, text in _strings(value):
        if text.endswith("*"):
            prefix = _e164_prefix(text[:-1])
            if prefix is None:
                doc.add((*base, "sender", j), f'{text!r} is not a number prefix: write digits then *, like "010*"')
            else:
                prefixes.append(prefix)
            continue
        try:
            number = phonenumbers.parse(text, "KR")
            if not phonenumbers.is_valid_number(number):
                raise ValueError(text)
        except (phonenumbers.NumberParseException, ValueError):
            doc.add((*base, "sender", j), f"{text!r} is not a valid phone number (end with * for a prefix)")
            continue
        exact.add(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    return frozenset(exact), tuple(prefixes)


def _e164_prefix(text: str) -> str | None:
    digits = _SEPARATORS.sub("", text)
    if digits.startswith("+") and digits[1:].isdigit() and len(digits) > 1:
        return digits
    if digits.startswith("0") and digits.isdigit() and len(digits) > 1:
        return "+82" + digits[1:]  # national form: the leading trunk 0 is not part of E.164
    return None


# --------------------------------------------------------------------------------------------
# gateway rules test
# --------------------------------------------------------------------------------------------

_WEEKDAYS_KO = "월화수목금토일"
_PLAN = NumberPlan(outside_line_prefixes=())


def cmd_rules_test(  # noqa: PLR0917 - positional order is the CLI wiring's contract
    directory: Path,
    to: str,
    sender: str,
    at: str,
    text: str,
    out: TextIO,
    thread_department: str | None = None,
) -> int:
    """``gateway rules test --to N --from N --at ISO [--thread DEPT[@ISO]] TEXT``.

    Routes one made-up message with ``directory/routing.yaml`` and prints the day type, the
    winning rule, the queue, the rendered auto-reply and why each earlier rule did not match.
    ``at`` without a zone is Korean time. ``thread_department`` pretends the department sent the
    citizen a message, at the time after ``@`` or else one hour before ``at``.
    Exit 0 when routed, 1 when the rules do not load, 2 for a bad argument.
    """
    path = directory / ROUTING_FILE
    try:
        rules = load_routing(path)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=out)
        print(f"routing rules NOT OK: {len(exc.problems)} problem(s) in {file_label(path)}", file=out)
        return 1
    to_e164, sender_e164 = _PLAN.classify(to).e164, _PLAN.classify(sender).e164
    for option, raw, e164 in (("--to", to, to_e164), ("--from", sender, sender_e164)):
        if not e164.startswith("+"):
            print(f"{option}: {raw!r} is not a phone number", file=out)
            return 2
    try:
        when = local_datetime(rules.calendar, at)
    except ValueError:
        print(f"--at: {at!r} is not an ISO date-time, like 2026-09-25T23:00", file=out)
        return 2
    thread: ThreadContext | None = None
    if thread_department:
        department, _, sent = thread_department.partition("@")
        try:
            sent_at = local_datetime(rules.calendar, sent) if sent else when - timedelta(hours=1)
        except ValueError:
            print(f"--thread: {sent!r} is not an ISO date-time", file=out)
            return 2
        thread = ThreadContext(department, sent_at.timestamp())

    msg = InboundSms("rules-test", "cli", to_e164, sender_e164, text, when.timestamp())
    decision = route(msg, rules, thread)
    _print_decision(out, path=path, rules=rules, msg=msg, decision=decision, thread=thread)
    return 0


def _print_decision(
    out: TextIO,
    *,
    path: Path,
    rules: RoutingRules,
    msg: InboundSms,
    decision: RouteDecision,
    thread: ThreadContext | None,
) -> None:
    local = decision.local_time
    day = decision.day_type
    print(f"rules:      {file_label(path)} (version {rules.version})", file=out)
    print(
        f"message:    to {display(msg.to)}, from {display(msg.sender)}, "
        f"at {local:%Y-%m-%d %H:%M} ({_WEEKDAYS_KO[local.weekday()]}) {rules.calendar.tz.key}",
        file=out,
    )
    holiday = f" ({decision.holiday_name})" if decision.holiday_name else ""
    print(f"day:        {day.value} / {DAY_NAMES_KO[day]}{holiday}", file=out)
    if thread is not None:
        sent = datetime.fromtimestamp(thread.sent_at, rules.calendar.tz)
        age = (msg.received_at - thread.sent_at) / 86400
        print(f"thread:     reply to {thread.queue} (sent {sent:%Y-%m-%d %H:%M}, {age:.1f} days before)", file=out)
    else:
        print("thread:     none", file=out)
    if decision.explain:
        print("not matched:", file=out)
        width = max(len(name) for name, _ in decision.explain)
        for name, reason in decision.explain:
            print(f"  {name:<{width}}  {reason}", file=out)
    print(f"matched:    {decision.rule}", file=out)
    print(f"queue:      {decision.queue} ({decision.queue_name})", file=out)
    print(f"priority:   {decision.priority.value}", file=out)
    print(f"tags:       {', '.join(decision.tags) or '-'}", file=out)
    print(f"auto-reply: {decision.auto_reply if decision.auto_reply is not None else '(none)'}", file=out)
