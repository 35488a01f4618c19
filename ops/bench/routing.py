"""Routing benchmark: `route()` decisions per second with 500 realistic rules.

The rule file is generated (seeded, so every run routes the same messages with the same
rules) in the shape of ``rules/routing.yaml``: an emergency rule and a reply-to-department
rule first, then about 30 departments with topic rules (Korean keywords with the particles
and qualifiers citizens write, a few English words), some limited to a city number, to office
hours or to weekdays, a few with a regular expression or a sender prefix, night/weekend duty
rules and a default. It is loaded through the real YAML loader (`parse_routing`).

Messages are generated from the same vocabulary: most name one topic (the keyword may sit
in a longer word), some name none (they fall through to the duty/default rules, the slowest
path), some answer a department's message (thread context). Times spread over two weeks,
including nights, weekends and Chuseok.

Figures: decisions per second of `route()` (per second of this process's CPU time, the goal's
measure, and per wall-clock second) on the realistic mix and on keyword-free texts (every
keyword rule is a miss), against a naive reference: a linear first-match scan over every
rule that evaluates every condition (`reference_route`). Both must pick the same rule for
every message (checked on every message of the sample; a mismatch fails the run).
"""

from __future__ import annotations

import random
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.domain.routing import (
    Calendar,
    Conditions,
    InboundSms,
    RoutingRules,
    ThreadContext,
    fold,
    route,
)
from gateway.rules.routing import parse_routing

KST = ZoneInfo("Asia/Seoul")
GOAL_PER_S = 100_000.0

CITY_NUMBERS = {
    "civil": "031-900-2000",
    "callcenter": "031-900-2100",
    "duty": "031-900-0119",
    "welfare": "031-900-3000",
}
CITY_E164 = ["+82319002000", "+82319002100", "+82319000119", "+82319003000"]

#: (department id, Korean name, topic nouns). Nouns are what citizens write about.
DEPARTMENTS: list[tuple[str, str, list[str]]] = [
    (
        "transport",
        "교통행정과",
        ["주차", "불법주차", "버스", "정류장", "택시", "신호위반", "교통체증", "견인", "주정차"],
    ),
    ("road", "도로과", ["가로등", "신호등", "포트홀", "보도블록", "맨홀", "도로파손", "과속방지턱", "횡단보도"]),
    ("environment", "환경정책과", ["소음", "쓰레기", "악취", "무단투기", "층간소음", "미세먼지", "매연", "분리수거"]),
    ("cleaning", "자원순환과", ["음식물", "재활용", "대형폐기물", "폐가전", "수거", "종량제"]),
    ("tax", "세무과", ["재산세", "자동차세", "지방세", "취득세", "체납", "고지서", "납부", "세금"]),
    ("welfare", "복지정책과", ["기초생활", "수급자", "장애인", "긴급복지", "생계", "의료급여", "바우처"]),
    ("elderly", "노인복지과", ["경로당", "노인일자리", "기초연금", "요양", "돌봄", "치매"]),
    ("child", "아동보육과", ["어린이집", "보육료", "아동수당", "돌봄교실", "육아", "출산"]),
    ("health", "보건소", ["예방접종", "코로나", "검진", "보건증", "방역", "감염", "독감"]),
    ("water", "상하수도과", ["수도", "단수", "누수", "하수구", "수도요금", "정수", "배수"]),
    ("parks", "공원녹지과", ["공원", "가로수", "벌목", "잔디", "놀이터", "산책로", "벌레"]),
    ("building", "건축과", ["불법건축", "건축허가", "공사장", "소음공사", "철거", "균열"]),
    ("housing", "주택과", ["임대주택", "전세", "월세", "주거급여", "재개발", "아파트"]),
    ("economy", "일자리경제과", ["일자리", "취업", "창업", "소상공인", "지원금", "전통시장"]),
    ("culture", "문화관광과", ["축제", "도서관", "공연", "문화센터", "관광", "체육관"]),
    ("civil", "민원여권과", ["여권", "등본", "초본", "인감", "전입신고", "가족관계", "증명서"]),
    ("safety", "안전총괄과", ["제설", "결빙", "폭우", "태풍", "대피소", "안전점검", "붕괴위험"]),
    ("animal", "동물보호과", ["유기견", "길고양이", "동물학대", "반려견", "목줄", "동물등록"]),
    ("traffic_fine", "교통지도과", ["과태료", "단속", "cctv", "주차위반", "이의신청"]),
    ("youth", "청년정책과", ["청년", "청년수당", "청년월세", "면접정장"]),
    ("women", "여성가족과", ["한부모", "다문화", "가정폭력", "여성안심", "귀가"]),
    ("agri", "농업정책과", ["농업", "농지", "귀농", "비료", "농산물"]),
    ("sports", "체육진흥과", ["수영장", "헬스장", "운동장", "생활체육", "대관"]),
    ("it", "정보통신과", ["와이파이", "홈페이지", "앱오류", "전자민원", "로그인"]),
    ("audit", "감사관", ["부패", "비리", "갑질", "청탁", "공익신고"]),
    ("land", "토지정보과", ["지적도", "토지대장", "공시지가", "측량"]),
    ("traffic_safety", "교통안전과", ["스쿨존", "어린이보호구역", "보행자", "자전거도로"]),
    ("energy", "에너지과", ["태양광", "전기차", "충전소", "보일러", "난방비"]),
]
QUALIFIERS = ["고장", "신고", "문의", "불편", "요청", "민원", "접수", "확인"]
PARTICLES = ["", "이", "가", "은", "는", "을", "를", "도", "에", "에서", "관련", " 관련"]
FILLERS = [
    "안녕하세요",
    "수고하십니다",
    "빨리 처리 부탁드립니다",
    "확인 부탁드려요",
    "감사합니다",
    "언제 되나요?",
    "며칠째 그대로예요",
    "어제부터요",
    "아파트 단지 앞",
    "시청 근처",
    "초등학교 앞에서",
    "우리 동네",
]
NO_TOPIC = [
    "안녕하세요 문의드립니다",
    "담당자 연락 부탁드립니다",
    "감사합니다 수고하세요",
    "어제 보낸 문자 확인되나요",
    "전화가 안 돼서 문자 드려요",
    "궁금한 게 있는데요",
    "Hello, I have a question",
    "이거 어디에 물어봐야 하나요",
]
EMERGENCY = ["화재", "불이 났", "불났", "교통사고", "사고가 났", "침수", "붕괴", "가스 냄새", "응급"]


def rules_yaml(count: int = 500, seed: int = 11) -> str:
    """A routing.yaml with `count` rules, in the shape of rules/routing.yaml (see the module doc)."""
    rng = random.Random(seed)
    lines = [
        "organisation: 한빛시청",
        "city_numbers:",
        *(f'  {k}: "{v}"' for k, v in CITY_NUMBERS.items()),
        "queues:",
        "  duty: 당직실",
        "  complaint: 민원처리팀",
        *(f'  "dept:{d}": {name}' for d, name, _ in DEPARTMENTS),
        "rules:",
    ]

    def rule(name: str, **fields: str) -> None:
        lines.append(f"  - name: {name}")
        lines.extend(f"    {k}: {v}" for k, v in fields.items())

    rule(
        "emergency",
        keywords=f"[{', '.join(EMERGENCY)}]",
        queue="duty",
        priority="urgent",
        tags="[emergency]",
        auto_reply='"[{organisation}] 당직실에 긴급 접수되었습니다."',
    )
    rule("reply-to-department", thread="{within_days: 3}", queue="thread_department", tags="[reply]")
    rule("duty-line", to="[duty]", queue="duty")
    fixed_tail = 4  # night, weekend, test phones, default
    body = count - 3 - fixed_tail
    for i in range(body):
        dept, _, nouns = DEPARTMENTS[i % len(DEPARTMENTS)]
        noun = nouns[(i // len(DEPARTMENTS)) % len(nouns)]
        words = {f"{noun}{rng.choice(QUALIFIERS)}", f"{noun} {rng.choice(QUALIFIERS)}"}
        if i % 4 == 0:
            words.add(noun)
        if i % 9 == 0:
            words.add(f"{noun}{i}")
        if i % 13 == 0:
            words.add(f"topic{i}")
        fields = {"keywords": f"[{', '.join(sorted(words))}]", "queue": f"dept:{dept}"}
        shape = i % 10
        if shape in (1, 2, 3):
            fields["days"] = "[weekday]"
            fields["time"] = '["09:00-18:00"]'
        elif shape == 4:
            fields["to"] = f"[{rng.choice(['civil', 'callcenter', 'welfare'])}]"
        elif shape == 5:
            start = rng.randrange(24)
            fields["time"] = f'["{start:02d}:00-{(start + rng.randrange(2, 12)) % 24:02d}:30"]'
        elif shape == 6 and i % 30 == 6:
            fields["regex"] = "'[0-9]{2,3}\\s?[가-힣]\\s?[0-9]{4}'"
        elif shape == 7 and i % 40 == 7:
            fields["sender"] = '["010*"]'
        if i % 3 == 0:
            fields["auto_reply"] = '"[{organisation}] {queue_name}에 접수되었습니다."'
        if i % 11 == 0:
            fields["priority"] = "high"
            fields["tags"] = f"[{dept}, priority]"
        rule(f"{dept}-{i}", **fields)
    rule(
        "night-duty",
        time='["18:00-09:00"]',
        queue="duty",
        tags="[after-hours]",
        auto_reply='"[{organisation}] 근무시간 외({received_time}) 문자가 당직실에 접수되었습니다."',
    )
    rule(
        "weekend-holiday-duty",
        days="[weekend, holiday]",
        queue="duty",
        auto_reply='"[{organisation}] {day_name}에 보내신 문자가 당직실에 접수되었습니다."',
    )
    rule("test-phones", sender='["010-0000-0001", "010-0000-0002"]', queue="complaint", priority="low")
    rule(
        "default-complaint",
        queue="complaint",
        auto_reply='"[{organisation}] 민원이 접수되었습니다. 담당자가 확인 후 답변드리겠습니다."',
    )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Sample:
    msg: InboundSms
    thread: ThreadContext | None


def messages(count: int, *, seed: int = 5, topic_share: float = 0.75) -> list[Sample]:
    """`count` citizen messages (see the module doc); `topic_share` of them name a topic."""
    rng = random.Random(seed)
    start = datetime(2026, 9, 18, tzinfo=KST)  # two weeks around Chuseok (9/24-9/26)
    out: list[Sample] = []
    for n in range(count):
        at = start + timedelta(seconds=rng.randrange(14 * 86400))
        if rng.random() < topic_share:
            _, _, nouns = rng.choice(DEPARTMENTS)
            noun = rng.choice(nouns)
            particle, qualifier = rng.choice(PARTICLES), rng.choice(QUALIFIERS)
            text = f"{rng.choice(FILLERS)} {noun}{particle} {qualifier} {rng.choice(FILLERS)}"
            if rng.random() < 0.02:
                text = f"{rng.choice(EMERGENCY)} {text}"
        else:
            text = f"{rng.choice(NO_TOPIC)} {rng.choice(FILLERS)}"
        if rng.random() < 0.05:
            text = unicodedata.normalize("NFD", text)  # some phones send decomposed Hangul
        thread = None
        if rng.random() < 0.05:
            thread = ThreadContext(rng.choice(DEPARTMENTS)[0], at.timestamp() - rng.randrange(6 * 86400))
        sender = f"+8210{rng.randrange(10**8):08d}"
        to = rng.choices(CITY_E164, weights=(60, 25, 5, 10))[0]
        out.append(Sample(InboundSms(f"m{n}", "bench", to, sender, text, at.timestamp()), thread))
    return out


def reference_route(sms: InboundSms, rules: RoutingRules, thread: ThreadContext | None) -> str:
    """The naive semantics: the first rule (top to bottom) whose every condition holds."""
    calendar: Calendar = rules.calendar
    local = calendar.local_time(sms.received_at)
    minute = local.hour * 60 + local.minute
    day = calendar.day_type(local)
    nfc = unicodedata.normalize("NFC", sms.text)
    folded = nfc.casefold()
    age = None if thread is None else sms.received_at - thread.sent_at
    for rule in rules.rules:
        if _reference_ok(rule.when, sms, folded=folded, nfc=nfc, minute=minute, day=day, age=age):
            return rule.name
    raise AssertionError("no rule matched: the last rule must be a default")


def _reference_ok(
    when: Conditions, sms: InboundSms, *, folded: str, nfc: str, minute: int, day: Any, age: float | None
) -> bool:
    import re

    if when.to is not None and sms.to not in when.to:
        return False
    if when.senders is not None or when.sender_prefixes:
        senders = when.senders or frozenset()
        if sms.sender not in senders and not any(sms.sender.startswith(p) for p in when.sender_prefixes):
            return False
    if when.keywords is not None and not any(fold(k) in folded for k in when.keywords):
        return False
    if when.regex is not None and re.search(when.regex, nfc) is None:
        return False
    if when.time is not None and not any(w.contains(minute) for w in when.time):
        return False
    if when.days is not None and day not in when.days:
        return False
    if when.thread is not None:
        if when.thread.reply:
            if age is None:
                return False
            if when.thread.within_days is not None and age > when.thread.within_days * 86400.0:
                return False
        elif age is not None:
            return False
    return True


def _rate(fn: Any, samples: list[Sample], rules: RoutingRules, seconds: float) -> tuple[float, float, int]:
    """(decisions per CPU second, decisions per wall second, decisions) of fn over `samples`,
    repeated for at least `seconds` of this process's CPU time. The machine is shared: CPU time
    is what the code costs, wall time also counts the moments other processes had the core."""
    done = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while True:
        for s in samples:
            fn(s.msg, rules, s.thread)
        done += len(samples)
        cpu_s = time.process_time() - cpu
        if cpu_s >= seconds:
            return done / cpu_s, done / (time.perf_counter() - wall), done


def run(*, seconds: float = 3.0, rules_count: int = 500, sample_size: int = 5000) -> dict[str, Any]:
    """Measure and check (see the module doc); returns the JSON section `routing`."""
    rules = parse_routing(rules_yaml(rules_count), "generated-routing.yaml")
    mixes = {"realistic": messages(sample_size), "no_keyword": messages(sample_size, seed=6, topic_share=0.0)}
    out: dict[str, Any] = {
        "rules": len(rules.rules),
        "sample_size": sample_size,
        "seconds_per_figure": seconds,
        "mixes": {},
    }
    mismatches: list[str] = []
    for name, samples in mixes.items():
        winners: dict[str, int] = {}
        for s in samples:  # correctness first (and it warms the candidate cache)
            got = route(s.msg, rules, s.thread).rule
            want = reference_route(s.msg, rules, s.thread)
            winners[want] = winners.get(want, 0) + 1
            if got != want and len(mismatches) < 10:
                mismatches.append(f"{name}: {s.msg.message_id} {s.msg.text!r}: route()={got}, reference={want}")
        fast, fast_wall, fast_n = _rate(route, samples, rules, seconds)
        ref, _, ref_n = _rate(reference_route, samples, rules, min(seconds, max(0.5, seconds / 3)))
        top = sorted(winners.items(), key=lambda kv: -kv[1])[:5]
        out["mixes"][name] = {
            "decisions_per_s": round(fast),
            "decisions_per_wall_s": round(fast_wall),
            "decisions": fast_n,
            "reference_per_s": round(ref),
            "reference_decisions": ref_n,
            "ratio_to_reference": round(fast / ref, 2),
            "goal_per_s": GOAL_PER_S,
            "ok": fast >= GOAL_PER_S,
            "distinct_winning_rules": len(winners),
            "top_winners": dict(top),
        }
    out["mismatches"] = mismatches
    out["counts_ok"] = not mismatches
    return out


def figures(section: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    labels = {"realistic": "realistic mix", "no_keyword": "no keyword in the text (worst case)"}
    for name, m in section["mixes"].items():
        rows.append(
            {
                "figure": f"routing, {section['rules']} rules, {labels.get(name, name)}",
                "value": f"{m['decisions_per_s']:,} decisions/s of CPU ({m['decisions_per_wall_s']:,}/s wall)",
                "goal": f"≥ {GOAL_PER_S:,.0f}/s",
                "baseline": f"naive linear scan {m['reference_per_s']:,}/s ({m['ratio_to_reference']:.1f} ×)",
                "met": m["ok"],
            }
        )
    rows.append(
        {
            "figure": "routing, same rule as the naive scan",
            "value": f"{sum(section['sample_size'] for _ in section['mixes'])} messages checked",
            "goal": "all equal",
            "baseline": "-",
            "met": section["counts_ok"],
        }
    )
    return rows
