"""Citizen SMS routing: the pure engine, the sample rules/routing.yaml, the loader and `rules test`."""

from __future__ import annotations

import io
import random
import re
import unicodedata
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import strategies as st

from gateway.domain.routing import (
    Action,
    Calendar,
    Conditions,
    DayType,
    InboundSms,
    Priority,
    QueueInfo,
    RoutingRules,
    Rule,
    ThreadCondition,
    ThreadContext,
    TimeWindow,
    fold,
    parse_window,
    reply_template_problems,
    route,
)
from gateway.errors import RulesError
from gateway.rules.routing import cmd_rules_test, load_routing, parse_routing, routing_problems
from tests.conftest import RULES

KST = ZoneInfo("Asia/Seoul")
CIVIL = "+82319002000"  # 031-900-2000
DUTY_LINE = "+82319000119"  # 031-900-0119
CITIZEN = "+821012345678"


@pytest.fixture(scope="module")
def sample() -> RoutingRules:
    return load_routing(RULES / "routing.yaml")


def epoch(at: str) -> float:
    return datetime.fromisoformat(at).replace(tzinfo=KST).timestamp()


def sms(at: str, text: str, to: str = CIVIL, sender: str = CITIZEN) -> InboundSms:
    return InboundSms("m-1", "sandbox", to, sender, text, epoch(at))


# --------------------------------------------------------------------------------------------
# The sample rules, as a table
# --------------------------------------------------------------------------------------------

# (case, local time, text, city number, rule, queue, priority, day type, holiday name)
Case = tuple[str, str, str, str, str, str, str, str, str | None]
CASES: list[Case] = [
    (
        "weekday streetlight",
        "2026-03-10T10:00",
        "가로등 고장",
        CIVIL,
        "streetlight-road",
        "complaint",
        "normal",
        "weekday",
        None,
    ),
    (
        "particle attached",
        "2026-03-10T10:00",
        "집 앞 가로등이 꺼졌어요",
        CIVIL,
        "streetlight-road",
        "complaint",
        "normal",
        "weekday",
        None,
    ),
    (
        "weekday general",
        "2026-03-10T10:00",
        "민원 문의드립니다",
        CIVIL,
        "default-complaint",
        "complaint",
        "normal",
        "weekday",
        None,
    ),
    (
        "weekday noise",
        "2026-03-10T15:30",
        "층간 소음이 심해요",
        CIVIL,
        "noise-garbage",
        "dept:environment",
        "normal",
        "weekday",
        None,
    ),
    (
        "car plate",
        "2026-03-10T11:00",
        "12가3456 차량이 입구를 막고 있어요",
        CIVIL,
        "illegal-parking",
        "dept:transport",
        "normal",
        "weekday",
        None,
    ),
    (
        "office starts 09:00",
        "2026-03-10T09:00",
        "가로등 고장",
        CIVIL,
        "streetlight-road",
        "complaint",
        "normal",
        "weekday",
        None,
    ),
    ("before 09:00", "2026-03-10T08:59", "가로등 고장", CIVIL, "night-duty", "duty", "normal", "weekday", None),
    ("office ends 18:00", "2026-03-10T18:00", "가로등 고장", CIVIL, "night-duty", "duty", "normal", "weekday", None),
    ("weekday 20:00", "2026-03-10T20:00", "민원 문의", CIVIL, "night-duty", "duty", "normal", "weekday", None),
    (
        "saturday 14:00",
        "2026-03-07T14:00",
        "가로등 고장",
        CIVIL,
        "weekend-holiday-duty",
        "duty",
        "normal",
        "weekend",
        None,
    ),
    (
        "chuseok 10:00",
        "2026-09-25T10:00",
        "가로등 고장",
        CIVIL,
        "weekend-holiday-duty",
        "duty",
        "normal",
        "holiday",
        "추석",
    ),
    (
        "chuseok eve 23:00",
        "2026-09-24T23:00",
        "쓰레기 불법 투기",
        CIVIL,
        "night-duty",
        "duty",
        "normal",
        "holiday",
        "추석 전날",
    ),
    (
        "chuseok on saturday",
        "2026-09-26T14:00",
        "민원",
        CIVIL,
        "weekend-holiday-duty",
        "duty",
        "normal",
        "holiday",
        "추석 다음날",
    ),
    ("seollal", "2026-02-17T11:00", "도로 파손", CIVIL, "weekend-holiday-duty", "duty", "normal", "holiday", "설날"),
    (
        "substitute holiday 삼일절",
        "2026-03-02T10:00",
        "가로등 고장",
        CIVIL,
        "weekend-holiday-duty",
        "duty",
        "normal",
        "holiday",
        "삼일절 대체 휴일",
    ),
    (
        "substitute holiday 개천절",
        "2026-10-05T10:00",
        "가로등 고장",
        CIVIL,
        "weekend-holiday-duty",
        "duty",
        "normal",
        "holiday",
        "개천절 대체 휴일",
    ),
    (
        "local foundation day",
        "2026-10-15T10:00",
        "가로등 고장",
        CIVIL,
        "weekend-holiday-duty",
        "duty",
        "normal",
        "holiday",
        "한빛시 개청기념일",
    ),
    (
        "emergency in office hours",
        "2026-03-10T10:00",
        "도로에서 교통사고가 났어요",
        CIVIL,
        "emergency",
        "duty",
        "urgent",
        "weekday",
        None,
    ),
    (
        "emergency at night",
        "2026-03-10T02:00",
        "지하 주차장 침수",
        CIVIL,
        "emergency",
        "duty",
        "urgent",
        "weekday",
        None,
    ),
    ("duty line", "2026-03-10T10:00", "가로등 고장", DUTY_LINE, "duty-line", "duty", "normal", "weekday", None),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_sample_rules_route(sample: RoutingRules, case: Case) -> None:
    _, at, text, to, rule, queue, priority, day, holiday = case
    decision = route(sms(at, text, to=to), sample)
    assert (decision.rule, decision.queue, decision.priority, decision.day_type, decision.holiday_name) == (
        rule,
        queue,
        priority,
        day,
        holiday,
    )
    assert decision.rules_version == sample.version
    # Every rule before the winner really does not match, and says why.
    assert all(reason and not reason.startswith("matches") for _, reason in decision.explain)


def test_sample_holidays_come_from_the_holidays_package(sample: RoutingRules) -> None:
    import holidays

    kr = holidays.country_holidays("KR", years=2026, language="ko")
    chuseok = sorted(d for d, name in kr.items() if "추석" in name)
    assert chuseok == [date(2026, 9, 24), date(2026, 9, 25), date(2026, 9, 26)]
    seollal = sorted(d for d, name in kr.items() if "설날" in name)
    assert seollal == [date(2026, 2, 16), date(2026, 2, 17), date(2026, 2, 18)]
    assert kr.get(date(2026, 3, 2)) == "삼일절 대체 휴일"
    for d in [*chuseok, *seollal, date(2026, 3, 2)]:
        assert sample.calendar.day_type(d) is DayType.HOLIDAY


def test_auto_replies_are_rendered(sample: RoutingRules) -> None:
    night = route(sms("2026-03-10T23:05", "민원"), sample)
    assert night.auto_reply == "[한빛시청] 근무시간 외(23:05) 문자가 당직실에 접수되었습니다."
    holiday = route(sms("2026-09-25T10:00", "민원"), sample)
    assert holiday.auto_reply == "[한빛시청] 공휴일에 보내신 문자가 당직실에 접수되었습니다."
    office = route(sms("2026-03-10T10:00", "가로등 고장"), sample)
    assert (office.auto_reply, office.queue_name) == ("[한빛시청] 민원처리팀에 접수되었습니다.", "민원처리팀")
    assert office.tags == ("road", "transport")


def test_explain_lists_why_each_earlier_rule_did_not_match(sample: RoutingRules) -> None:
    decision = route(sms("2026-03-10T10:00", "민원 문의"), sample)
    assert decision.rule == "default-complaint"
    assert decision.explain == (
        ("emergency", "no keyword of 화재, 불이 났, 불이났, 불났, 교통사고, 사고가 났, …"),
        ("reply-to-department", "not a reply to a department's message"),
        ("duty-line", "to 031-900-2000 not in 031-900-0119"),
        ("night-duty", "time 10:00 not in 18:00-09:00"),
        ("weekend-holiday-duty", "day is weekday, not weekend, holiday"),
        ("streetlight-road", "no keyword of 가로등, 신호등, 도로, 포트홀, 보도블록, 맨홀"),
        ("illegal-parking", "text does not match regex [0-9]{2,3}\\s?[가-힣]\\s?[0-9]{4}"),
        ("noise-garbage", "no keyword of 소음, 쓰레기, 악취, 무단투기, 층간"),
    )
    first = route(sms("2026-03-10T10:00", "화재 발생"), sample)
    assert (first.rule, first.explain) == ("emergency", ())


# --------------------------------------------------------------------------------------------
# Threads: replies to a department's message
# --------------------------------------------------------------------------------------------


def test_reply_within_three_days_goes_back_to_the_department(sample: RoutingRules) -> None:
    msg = sms("2026-03-12T10:00", "납부 기한을 연기할 수 있나요?")
    sent = ThreadContext("tax", msg.received_at - 2 * 86400)
    decision = route(msg, sample, sent)
    assert (decision.rule, decision.queue, decision.queue_name) == ("reply-to-department", "dept:tax", "세무과")
    # Also at night: the department that wrote knows the case best.
    night = sms("2026-03-12T22:00", "네 확인했습니다")
    assert route(night, sample, ThreadContext("dept:welfare", night.received_at - 3600)).queue == "dept:welfare"
    # An emergency still goes to the duty office first.
    fire = route(sms("2026-03-12T10:00", "화재가 났어요"), sample, sent)
    assert (fire.queue, fire.priority) == ("duty", Priority.URGENT)


def test_reply_after_four_days_is_routed_like_a_new_message(sample: RoutingRules) -> None:
    msg = sms("2026-03-12T10:00", "납부 문의")
    decision = route(msg, sample, ThreadContext("tax", msg.received_at - 4 * 86400))
    assert (decision.rule, decision.queue) == ("default-complaint", "complaint")
    assert ("reply-to-department", "reply to dept:tax after 4.0 days, more than 3") in decision.explain


# --------------------------------------------------------------------------------------------
# Local calendar overrides
# --------------------------------------------------------------------------------------------


def _sample_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (RULES / "routing.yaml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "routing.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_declared_workday_routes_like_an_office_day(tmp_path: Path) -> None:
    rules = load_routing(_sample_with(tmp_path, "workdays: []", 'workdays: ["2026-09-25", "2026-03-07"]'))
    chuseok = route(sms("2026-09-25T10:00", "가로등 고장"), rules)
    assert (chuseok.rule, chuseok.day_type, chuseok.holiday_name) == ("streetlight-road", "weekday", None)
    saturday = route(sms("2026-03-07T14:00", "민원 문의"), rules)
    assert (saturday.queue, saturday.day_type) == ("complaint", "weekday")
    assert route(sms("2026-09-25T19:00", "가로등 고장"), rules).queue == "duty"  # still after hours
    assert route(sms("2026-09-24T10:00", "가로등 고장"), rules).queue == "duty"  # the other days stay holidays


def test_temporary_holiday_override(tmp_path: Path) -> None:
    rules = load_routing(_sample_with(tmp_path, '    # "2026-12-24": 임시공휴일', '    "2026-12-24": 임시공휴일'))
    decision = route(sms("2026-12-24T10:00", "가로등 고장"), rules)
    assert (decision.queue, decision.holiday_name) == ("duty", "임시공휴일")


def test_calendar_precedence_and_time_zone() -> None:
    cal = Calendar({date(2026, 3, 7): "시민의 날", date(2026, 9, 25): "지역 축제"}, [date(2026, 9, 26)])
    assert cal.describe(date(2026, 3, 7)) == (DayType.HOLIDAY, "시민의 날")  # a holiday on a Saturday
    assert cal.holiday_name(date(2026, 9, 25)) == "지역 축제"  # the local name wins
    assert cal.describe(date(2026, 9, 26)) == (DayType.WEEKDAY, None)  # declared workday
    assert cal.day_type(date(2026, 3, 8)) is DayType.WEEKEND
    assert cal.day_type(date(2026, 3, 10)) is DayType.WEEKDAY
    # 2026-03-09 15:30 UTC is Tuesday 00:30 in Seoul; the UTC date would say Monday.
    utc = datetime(2026, 3, 9, 15, 30, tzinfo=ZoneInfo("UTC"))
    assert cal.local_date(utc) == date(2026, 3, 10)
    # 2026-03-01 15:30 UTC is 2026-03-02 (substitute holiday) in Seoul, a Sunday holiday in UTC.
    assert cal.describe(cal.local_date(datetime(2026, 3, 1, 15, 30, tzinfo=ZoneInfo("UTC")))) == (
        DayType.HOLIDAY,
        "삼일절 대체 휴일",
    )
    # Lazily computed per year, any year.
    assert cal.day_type(date(2030, 1, 1)) is DayType.HOLIDAY
    assert set(cal._national) == {2026, 2030}


# --------------------------------------------------------------------------------------------
# Pure engine details
# --------------------------------------------------------------------------------------------


def _rules(*rules: Rule, calendar: Calendar | None = None) -> RoutingRules:
    queues = {q: QueueInfo(q, q.upper()) for q in ("duty", "complaint", "dept:tax")}
    return RoutingRules(rules, queues, calendar or Calendar({}), "test")


DEFAULT = Rule("default", Conditions(), Action("complaint"))


def test_time_windows() -> None:
    night = parse_window("18:00-09:00")
    assert [night.contains(m) for m in (17 * 60 + 59, 18 * 60, 0, 8 * 60 + 59, 9 * 60)] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert str(night) == "18:00-09:00"
    whole = parse_window("00:00-24:00")
    assert whole.contains(0) and whole.contains(1439)
    assert parse_window(" 9:30 - 12:00 ").start == 570
    for bad, message in [
        ("25:00-18:00", "'25:00-18:00': start 25:00 is not a time of day (00:00 to 24:00)"),
        ("09:00-24:30", "'09:00-24:30': end 24:30 is not a time of day (00:00 to 24:00)"),
        ("09:60-10:00", "'09:60-10:00': start 09:60 is not a time of day (00:00 to 24:00)"),
        ("9-18", "'9-18' is not a time window; write HH:MM-HH:MM, like 09:00-18:00"),
        ("09:00-09:00", "'09:00-09:00' is empty; write 00:00-24:00 for the whole day"),
        ("24:00-06:00", "'24:00-06:00': a window cannot start at 24:00; write 00:00"),
    ]:
        with pytest.raises(ValueError) as info:
            parse_window(bad)
        assert str(info.value) == message


def test_keywords_are_nfc_and_case_insensitive() -> None:
    rules = _rules(Rule("stop", Conditions(keywords=("STOP", "가로등")), Action("duty")), DEFAULT)
    decomposed = unicodedata.normalize("NFD", "가로등이 나갔어요")  # jamo sequences, as some phones send
    assert decomposed != "가로등이 나갔어요"
    assert route(sms("2026-03-10T10:00", decomposed), rules).rule == "stop"
    assert route(sms("2026-03-10T10:00", "please stop"), rules).rule == "stop"
    assert route(sms("2026-03-10T10:00", "가로 등"), rules).rule == "default"


def test_sender_numbers_and_prefixes() -> None:
    rules = _rules(
        Rule("vip", Conditions(senders=frozenset({"+821011112222"})), Action("duty")),
        Rule("mobiles", Conditions(sender_prefixes=("+8210",)), Action("dept:tax")),
        DEFAULT,
    )
    assert route(sms("2026-03-10T10:00", "x", sender="+821011112222"), rules).rule == "vip"
    assert route(sms("2026-03-10T10:00", "x", sender="+821099998888"), rules).rule == "mobiles"
    landline = route(sms("2026-03-10T10:00", "x", sender="+8221234567"), rules)
    assert landline.rule == "default"
    assert landline.explain[0] == ("vip", "sender 02-***-4567 not in the rule's 1 numbers")


def test_thread_false_and_true() -> None:
    rules = _rules(
        Rule("new-only", Conditions(thread=ThreadCondition(reply=False), keywords=("a",)), Action("duty")),
        Rule("any-reply", Conditions(thread=ThreadCondition()), Action("thread_department")),
        DEFAULT,
    )
    msg = sms("2026-03-10T10:00", "a")
    assert route(msg, rules).rule == "new-only"
    old = route(msg, rules, ThreadContext("tax", msg.received_at - 90 * 86400))
    assert (old.rule, old.queue, old.queue_name) == ("any-reply", "dept:tax", "DEPT:TAX")
    assert old.explain == (("new-only", "is a reply to dept:tax"),)


def test_explain_names_the_holiday() -> None:
    rules = _rules(
        Rule("weekday-only", Conditions(days=frozenset({DayType.WEEKDAY})), Action("complaint")),
        Rule("office-hours-complaint", Conditions(time=(parse_window("09:00-18:00"),)), Action("complaint")),
        Rule("after-hours", Conditions(), Action("duty")),
    )
    decision = route(sms("2026-09-25T23:00", "문의"), rules)
    assert decision.explain == (
        ("weekday-only", "day is holiday (추석), not weekday"),
        ("office-hours-complaint", "time 23:00 not in 09:00-18:00"),
    )


def test_rule_set_invariants() -> None:
    with pytest.raises(ValueError, match="default rule"):
        _rules(Rule("only", Conditions(keywords=("x",)), Action("duty")))
    with pytest.raises(ValueError, match="needs a thread condition"):
        _rules(Rule("back", Conditions(keywords=("x",)), Action("thread_department")), DEFAULT)


def test_reply_template_problems() -> None:
    assert reply_template_problems("{organisation} {city_number} {received_date} {received_time} {queue_name}") == []
    assert reply_template_problems("{nope}") == [
        "unknown template variable {nope} (known: city_number, day_name, holiday_name, organisation, "
        "queue_name, received_date, received_time)"
    ]
    assert reply_template_problems("{}") == ["positional field {} is not allowed; use a variable name"]
    assert reply_template_problems("{queue_name.__class__}") == [
        "{queue_name.__class__}: only plain variables are allowed, like {queue_name}"
    ]
    assert reply_template_problems("{queue_name")[0].startswith("bad template syntax")


# --------------------------------------------------------------------------------------------
# Loader: every problem with file:line: key
# --------------------------------------------------------------------------------------------

BAD = """\
city_numbers:
  civil: "031-900-2000"
  bogus: "12345"
queues:
  duty: 당직실
  complaint: 민원처리팀
  "Dept Tax": 세무과
calendar:
  holidays:
    "2026-13-01": 잘못된 날
    "2026-10-15": 개청기념일
  workdays: ["2026-10-15", "soon"]
rules:
  - name: night
    time: ["25:00-18:00", "18:00-09:00"]
    queue: duty
  - name: bad-regex
    regex: "([0-9]"
    queue: dept:transprt
    auto_reply: "{city_number} {unknown}"
  - name: night
    keywrods: [a]
    queue: thread_department
  - name: to-check
    to: ["031-900-2001", civl, civil]
    sender: ["0x*", "010-1234-5678", "123"]
    thread: {within_days: 0}
    priority: asap
    queue: complaint
"""


def test_loader_reports_every_problem_with_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(BAD, encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_routing(path)
    label = path.as_posix()
    problems = [p.replace(label, "R") for p in info.value.problems]
    assert problems == [
        "R:3: city_numbers.bogus: '12345' is not a valid Korean phone number",
        "R:7: queues.Dept Tax: 'Dept Tax' is not a queue id: use lower-case, like duty or dept:tax",
        "R:10: calendar.holidays.2026-13-01: '2026-13-01' is not a date: write YYYY-MM-DD, like \"2026-10-15\"",
        "R:12: calendar.workdays[0]: 2026-10-15 is also listed under calendar.holidays (개청기념일)",
        "R:12: calendar.workdays[1]: 'soon' is not a date: write YYYY-MM-DD, like \"2026-11-07\"",
        "R:15: rules[0].time[0]: '25:00-18:00': start 25:00 is not a time of day (00:00 to 24:00)",
        "R:18: rules[1].regex: not a valid regular expression: missing ), unterminated subpattern at position 0",
        "R:19: rules[1].queue: unknown queue 'dept:transprt': not listed under queues "
        "(known: duty, complaint, thread_department)",
        "R:20: rules[1].auto_reply: unknown template variable {unknown} (known: city_number, day_name, "
        "holiday_name, organisation, queue_name, received_date, received_time)",
        "R:21: rules[2].name: duplicate rule name 'night' (first at rules[0], line 14)",
        "R:22: rules[2]: unknown key 'keywrods' (did you mean 'keywords'?)",
        "R:23: rules[2].queue: queue thread_department needs a thread condition "
        "(thread: {within_days: N} or thread: true)",
        "R:24: rules[3]: the last rule must be a default rule without conditions, so that every message gets a "
        "queue (rule 'to-check' has: to, sender, thread)",
        "R:25: rules[3].to[0]: 031-900-2001 is not one of the city_numbers (civil 031-900-2000)",
        "R:25: rules[3].to[1]: 'civl' is neither a name from city_numbers nor a phone number (did you mean 'civil'?)",
        "R:26: rules[3].sender[0]: '0x*' is not a number prefix: write digits then *, like \"010*\"",
        "R:26: rules[3].sender[2]: '123' is not a valid phone number (end with * for a prefix)",
        "R:27: rules[3].thread.within_days: within_days is a number of days above 0 (got 0)",
        "R:28: rules[3].priority: 'asap' is not a priority: use low, normal, high, urgent",
    ]


def _problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as info:
        parse_routing(text, "rules/routing.yaml")
    return info.value.problems


HEAD = "queues:\n  duty: 당직실\n  complaint: 민원처리팀\nrules:\n"


def test_default_rule_missing_or_not_last() -> None:
    assert _problems(HEAD + "  - name: a\n    days: [weekend]\n    queue: duty\n") == [
        "rules/routing.yaml:5: rules[0]: the last rule must be a default rule without conditions, so that every "
        "message gets a queue (rule 'a' has: days)"
    ]
    text = HEAD + "  - name: all\n    queue: duty\n  - name: b\n    queue: complaint\n"
    assert _problems(text) == [
        "rules/routing.yaml:5: rules[0]: rule 'all' has no conditions, so it matches every message: "
        "the 1 rule after it would never be used"
    ]


def test_schema_problems_are_located() -> None:
    text = (
        HEAD + "  - name: a\n    days: [weekday, sunday]\n    thread: yes please\n    queue: duty\n"
        "  - name: Default Rule\n    queu: complaint\n"
    )
    assert _problems(text) == [
        "rules/routing.yaml:6: rules[0].days[1]: 'sunday' is not a day type: use weekday, weekend or holiday",
        "rules/routing.yaml:7: rules[0].thread: thread is true, false or {within_days: N} (got 'yes please')",
        "rules/routing.yaml:9: rules[1]: missing required key 'queue'",
        "rules/routing.yaml:9: rules[1].name: 'Default Rule' is not a rule name: use lower-case letters, "
        "digits and dashes",
        "rules/routing.yaml:10: rules[1]: unknown key 'queu' (did you mean 'queue'?)",
    ]


def test_unquoted_impossible_date_is_located() -> None:
    text = (
        HEAD.replace("rules:\n", "calendar:\n  holidays:\n    2026-02-30: 없는 날\nrules:\n")
        + "  - name: d\n    queue: duty\n"
    )
    assert _problems(text) == [
        "rules/routing.yaml:6: calendar.holidays: '2026-02-30' is not a valid date (day is out of range for month)"
    ]
    # An unquoted valid date is fine (YAML makes it a date; we take it back as text).
    ok = parse_routing(
        HEAD.replace("rules:\n", "calendar:\n  holidays:\n    2026-10-15: 개청기념일\nrules:\n")
        + "  - name: d\n    queue: duty\n",
        "r.yaml",
    )
    assert ok.calendar.holiday_name(date(2026, 10, 15)) == "개청기념일"


def test_routing_problems_for_rules_check(tmp_path: Path) -> None:
    assert routing_problems(tmp_path) == []  # no routing.yaml: nothing to check
    assert routing_problems(RULES) == []
    (tmp_path / "routing.yaml").write_text(HEAD + "  - name: a\n    queue: nowhere\n", encoding="utf-8")
    assert [p.split(": ", 1)[1] for p in routing_problems(tmp_path)] == [
        "rules[0].queue: unknown queue 'nowhere': not listed under queues (known: duty, complaint, thread_department)"
    ]


def test_version_is_the_file_hash(tmp_path: Path, sample: RoutingRules) -> None:
    import hashlib

    assert sample.version == hashlib.sha256((RULES / "routing.yaml").read_bytes()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# gateway rules test
# --------------------------------------------------------------------------------------------


def test_cmd_rules_test_prints_the_decision() -> None:
    out = io.StringIO()
    assert cmd_rules_test(RULES, "031-900-2000", "010-1234-5678", "2026-09-25T23:00", "가로등이 꺼졌어요", out) == 0
    text = out.getvalue()
    assert "at 2026-09-25 23:00 (금) Asia/Seoul" in text
    assert "day:        holiday / 공휴일 (추석)" in text
    assert "  duty-line            to 031-900-2000 not in 031-900-0119" in text
    assert "matched:    night-duty" in text
    assert "queue:      duty (당직실)" in text
    assert "auto-reply: [한빛시청] 근무시간 외(23:00) 문자가 당직실에 접수되었습니다." in text


def test_cmd_rules_test_with_a_thread_and_a_zone() -> None:
    out = io.StringIO()
    # 01:00 UTC is 10:00 in Seoul, a weekday office hour.
    rc = cmd_rules_test(
        RULES,
        "0319002000",
        "+82 10 1234 5678",
        "2026-03-12T01:00+00:00",
        "네",
        out,
        thread_department="tax@2026-03-10T15:00",
    )
    text = out.getvalue()
    assert rc == 0
    assert "thread:     reply to dept:tax (sent 2026-03-10 15:00, 1.8 days before)" in text
    assert "queue:      dept:tax (세무과)" in text
    assert "auto-reply: (none)" in text


def test_cmd_rules_test_errors(tmp_path: Path) -> None:
    out = io.StringIO()
    assert cmd_rules_test(RULES, "hello", "010-1234-5678", "2026-03-10T10:00", "x", out) == 2
    assert "--to: 'hello' is not a phone number" in out.getvalue()
    out = io.StringIO()
    assert cmd_rules_test(RULES, "031-900-2000", "010-1234-5678", "tomorrow", "x", out) == 2
    out = io.StringIO()
    (tmp_path / "routing.yaml").write_text(HEAD + "  - name: a\n    queue: nowhere\n", encoding="utf-8")
    assert cmd_rules_test(tmp_path, "031-900-2000", "010-1234-5678", "2026-03-10T10:00", "x", out) == 1
    assert "routing rules NOT OK: 1 problem(s)" in out.getvalue()


# --------------------------------------------------------------------------------------------
# 500 rules
# --------------------------------------------------------------------------------------------


def _generated(count: int) -> str:
    """A rule file with ``count`` rules: keyword rules over 20 departments, some per number and hour."""
    lines = [
        "city_numbers:",
        '  civil: "031-900-2000"',
        '  callcenter: "031-900-2100"',
        "queues:",
        "  duty: 당직실",
        "  complaint: 민원처리팀",
        *(f'  "dept:d{q}": 부서{q}' for q in range(20)),
        "rules:",
    ]
    for i in range(count - 2):
        lines += [f"  - name: r{i}", f"    keywords: [키워드{i}번, word{i}x]", f"    queue: dept:d{i % 20}"]
        if i % 3 == 1:
            lines.append("    to: [callcenter]")
        if i % 5 == 2:
            lines.append(f'    time: ["{i % 24:02d}:00-{(i + 6) % 24:02d}:30"]')
        if i % 7 == 3:
            lines.append("    days: [weekday]")
    lines += [
        "  - name: night",
        '    time: ["22:00-06:00"]',
        "    queue: duty",
        "  - name: default",
        "    queue: complaint",
    ]
    return "\n".join(lines) + "\n"


def _expected(i: int, to: str, minute: int, day: DayType) -> str:
    """What rule r<i> should do for a message holding only its keyword (reference semantics)."""
    ok = not (i % 3 == 1 and to != "+82319002100")
    if i % 5 == 2:
        start, end = (i % 24) * 60, ((i + 6) % 24) * 60 + 30
        ok = ok and (start <= minute < end if start < end else minute >= start or minute < end)
    ok = ok and not (i % 7 == 3 and day is not DayType.WEEKDAY)
    if ok:
        return f"r{i}"
    return "night" if minute >= 22 * 60 or minute < 6 * 60 else "default"


def test_500_rules_load_and_route_correctly() -> None:
    rules = parse_routing(_generated(500), "generated.yaml")
    assert len(rules.rules) == 500
    rng = random.Random(7)
    start = datetime(2026, 9, 20, tzinfo=KST)  # spans a weekend, Chuseok and weekdays
    for _ in range(3000):
        i = rng.randrange(498)
        to = rng.choice([CIVIL, "+82319002100"])
        at = start + timedelta(minutes=rng.randrange(10 * 24 * 60))
        text = rng.choice([f"키워드{i}번 문의", f"about WORD{i}X please"])
        msg = InboundSms("m", "p", to, CITIZEN, text, at.timestamp())
        decision = route(msg, rules)
        day = rules.calendar.day_type(at)
        assert decision.rule == _expected(i, to, at.hour * 60 + at.minute, day), (i, to, at, text)
        if decision.rule == f"r{i}":
            assert decision.queue == f"dept:d{i % 20}"
    # The explanation is computed independently of the fast path: it must agree.
    late = route(InboundSms("m", "p", CIVIL, CITIZEN, "키워드495번", start.timestamp() + 12 * 3600), rules)
    assert late.rule == "r495" and len(late.explain) == 495


def test_500_rules_route_every_message() -> None:
    """Speed is measured by `python -m ops.bench` (routing section), never asserted here; this
    checks that 2,000 messages against 500 generated rules all get a queue."""
    rules = parse_routing(_generated(500), "generated.yaml")
    base = epoch("2026-03-10T10:00")
    msgs = [InboundSms("m", "p", CIVIL, CITIZEN, f"일반 문의 {n}", base + n * 61) for n in range(2000)]
    decisions = [route(m, rules) for m in msgs]
    assert all(d.queue for d in decisions)


# --------------------------------------------------------------------------------------------
# The indexed engine equals a naive top-to-bottom scan
# --------------------------------------------------------------------------------------------

# A small alphabet, so that random keywords and texts overlap often: Hangul syllables (some
# whose NFD forms differ), Latin letters in both cases, characters whose case folding changes
# their length (ß -> ss, ﬁ -> fi), a space and digits.
ALPHABET = "가로등불이났도ABab Sßsﬁfi12"
WORDS = st.text(alphabet=ALPHABET, min_size=1, max_size=4)
CITY = [CIVIL, DUTY_LINE, "+82319002100"]
SENDERS = [CITIZEN, "+821099998888", "+8221234567"]
BASE = epoch("2026-09-20T00:00")  # ten days around Chuseok: weekdays, a weekend, holidays


def _naive_route(msg: InboundSms, rules: RoutingRules, thread: ThreadContext | None) -> str:
    """The documented semantics, literally: the first rule whose every condition holds."""
    local = rules.calendar.local_time(msg.received_at)
    minute = local.hour * 60 + local.minute
    day = rules.calendar.day_type(local)
    nfc = unicodedata.normalize("NFC", msg.text)
    age = None if thread is None else msg.received_at - thread.sent_at
    for rule in rules.rules:
        w = rule.when
        ok = (
            (w.to is None or msg.to in w.to)
            and (
                (w.senders is None and not w.sender_prefixes)
                or msg.sender in (w.senders or ())
                or any(msg.sender.startswith(p) for p in w.sender_prefixes)
            )
            and (w.keywords is None or any(fold(k) in nfc.casefold() for k in w.keywords))
            and (w.regex is None or re.search(w.regex, nfc) is not None)
            and (w.time is None or any(t.contains(minute) for t in w.time))
            and (w.days is None or day in w.days)
            and (
                w.thread is None
                or (age is not None and (w.thread.within_days is None or age <= w.thread.within_days * 86400))
                if w.thread is None or w.thread.reply
                else age is None
            )
        )
        if ok:
            return rule.name
    raise AssertionError("the last rule is a default")


@st.composite
def _conditions(draw: st.DrawFn) -> Conditions:
    def maybe(strategy: st.SearchStrategy[object], p: int = 3) -> object:
        return draw(strategy) if draw(st.integers(0, p)) == 0 else None

    windows = maybe(
        st.lists(
            st.tuples(st.integers(0, 1439), st.integers(1, 1440)).filter(lambda w: w[0] != w[1]), min_size=1, max_size=2
        ),
        2,
    )
    prefixes = (
        draw(st.lists(st.sampled_from(["+8210", "+822", "+8231"]), max_size=1)) if draw(st.integers(0, 5)) == 0 else []
    )
    return Conditions(
        to=maybe(st.frozensets(st.sampled_from(CITY), min_size=1)),  # type: ignore[arg-type]
        senders=maybe(st.frozensets(st.sampled_from(SENDERS), min_size=1), 5),  # type: ignore[arg-type]
        sender_prefixes=tuple(prefixes),
        keywords=tuple(draw(st.lists(WORDS, min_size=1, max_size=4))) if draw(st.integers(0, 3)) else None,
        regex=maybe(st.sampled_from(["[0-9]{2}", "(?i)b", "등$"]), 8),  # type: ignore[arg-type]
        time=None if windows is None else tuple(TimeWindow(a, b) for a, b in windows),  # type: ignore[attr-defined]
        days=maybe(st.frozensets(st.sampled_from(list(DayType)), min_size=1)),  # type: ignore[arg-type]
        thread=maybe(
            st.sampled_from(
                [
                    ThreadCondition(),
                    ThreadCondition(False),  # type: ignore[arg-type]
                    ThreadCondition(True, 2.0),
                ]
            ),
            5,
        ),
    )


@st.composite
def _rule_sets(draw: st.DrawFn) -> RoutingRules:
    conditions = draw(st.lists(_conditions(), min_size=1, max_size=25))
    rules = [
        Rule(f"r{i}", c, Action("duty" if c.thread is None or not c.thread.reply else "thread_department"))
        for i, c in enumerate(conditions)
    ]
    return _rules(*rules, DEFAULT)


@st.composite
def _messages(draw: st.DrawFn) -> tuple[InboundSms, ThreadContext | None]:
    text = draw(st.text(alphabet=ALPHABET, max_size=12))
    if draw(st.booleans()):
        text = unicodedata.normalize("NFD", text)
    at = BASE + draw(st.integers(0, 10 * 86400))
    msg = InboundSms("m", "p", draw(st.sampled_from(CITY)), draw(st.sampled_from(SENDERS)), text, at)
    thread = None
    if draw(st.booleans()):
        thread = ThreadContext("tax", at - draw(st.integers(0, 4 * 86400)))
    return msg, thread


def test_indexed_routing_with_blank_and_one_character_keywords() -> None:
    """Keyword shapes the loader refuses or rarely sees still follow the naive semantics."""
    rules = _rules(
        Rule("one-char", Conditions(keywords=("불",), to=frozenset({DUTY_LINE})), Action("duty")),
        Rule("blank", Conditions(keywords=("",), days=frozenset({DayType.WEEKEND})), Action("duty")),
        Rule("folded", Conditions(keywords=("STRASSE",)), Action("duty")),
        DEFAULT,
    )
    cases = [
        ("불편해요", DUTY_LINE, "2026-03-10T10:00", "one-char"),
        ("불편해요", CIVIL, "2026-03-10T10:00", "default"),
        ("anything", CIVIL, "2026-03-07T10:00", "blank"),
        ("Straße 5", CIVIL, "2026-03-10T10:00", "folded"),
    ]
    for text, to, at, want in cases:
        msg = sms(at, text, to=to)
        assert route(msg, rules).rule == _naive_route(msg, rules, None) == want


def test_500_generated_rules_equal_a_naive_scan() -> None:
    """The benchmark's realistic 500-rule file and message mix (ops/bench/routing.py)."""
    from ops.bench.routing import messages, rules_yaml

    rules = parse_routing(rules_yaml(500), "generated.yaml")
    for sample in messages(1500, seed=3):
        assert route(sample.msg, rules, sample.thread).rule == _naive_route(sample.msg, rules, sample.thread)
