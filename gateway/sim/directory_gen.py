"""Generate a realistic ``directory.yaml`` for a whole city hall (load tests, demos, sizing).

The output is deterministic for a seed and covers exactly the requested number of extensions:
departments get blocks of extensions starting on round numbers, split into a few ranges and single
extensions with unused numbers in between, as a real numbering plan looks after years of moves.
Caller numbers follow the DID plan of the recorded PBX, where extension 2100 is 031-900-2100.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import TextIO

ORGANISATION = "한빛시청"
FIRST_EXTENSION = 2001  # the recorded PBX's phones are 2001..2010: the generated plan starts there too


@dataclass(frozen=True, slots=True)
class _Kind:
    """A department of the catalogue; ``weight`` is its relative number of desk phones."""

    id: str
    name: str
    guide: str
    weight: float = 1.0
    organisation: str | None = None
    postcall: str | None = None
    public_number: bool = True


_HEALTH = "한빛시 보건소"

# A city hall of ~1 million inhabitants, as citizens see it. Guides are at most 40 characters.
CATALOGUE: tuple[_Kind, ...] = (
    _Kind("civil-passport", "민원여권과", "여권 발급 관련 안내 전화입니다", 3, postcall="passport-guide"),
    _Kind(
        "civil-callcenter",
        "민원콜센터",
        "민원콜센터에서 민원 처리 결과를 안내드립니다",
        4,
        postcall="satisfaction-survey",
    ),
    _Kind("land-info", "토지정보과", "토지 및 지적 관련 안내 전화입니다", 1.5),
    _Kind("tax", "세무과", "지방세 납부 관련 안내 전화입니다", 4),
    _Kind("tax-collection", "징수과", "체납 지방세 납부 안내 전화입니다", 2),
    _Kind("welfare-policy", "복지정책과", "복지 서비스 신청 관련 안내 전화입니다", 4, postcall="welfare-guide"),
    _Kind("senior-welfare", "노인복지과", "어르신 복지 서비스 안내 전화입니다", 2.5),
    _Kind("child-youth", "아동청소년과", "아동·청소년 지원 관련 안내 전화입니다", 2),
    _Kind("women-family", "여성가족과", "가족 지원 서비스 관련 안내 전화입니다", 1.5),
    _Kind("disability-welfare", "장애인복지과", "장애인 복지 서비스 안내 전화입니다", 1.5),
    _Kind("traffic-admin", "교통행정과", "주차 및 교통 민원 관련 안내 전화입니다", 3),
    _Kind("traffic-facilities", "교통시설과", "교통시설 정비 관련 안내 전화입니다", 1.5),
    _Kind("road-management", "도로관리과", "도로 보수 민원 관련 안내 전화입니다", 2),
    _Kind("building", "건축과", "건축 인허가 관련 안내 전화입니다", 2.5),
    _Kind("housing", "주택과", "주택 및 공동주택 관련 안내 전화입니다", 2),
    _Kind("urban-planning", "도시계획과", "도시계획 관련 안내 전화입니다", 1.5),
    _Kind("environment-policy", "환경정책과", "생활환경 민원 관련 안내 전화입니다", 2),
    _Kind("resource-recycling", "자원순환과", "생활폐기물 배출 관련 안내 전화입니다", 2),
    _Kind("parks-green", "공원녹지과", "공원 및 녹지 관련 안내 전화입니다", 1.5),
    _Kind(
        "water-supply",
        "급수과",
        "수도 요금 및 급수 관련 안내 전화입니다",
        2,
        organisation="한빛시 상수도사업소",
    ),
    _Kind("sewerage", "하수도과", "하수도 관련 안내 전화입니다", 1.5),
    _Kind("economy-policy", "경제정책과", "소상공인 지원 관련 안내 전화입니다", 1.5),
    _Kind("jobs", "일자리정책과", "일자리 지원 사업 안내 전화입니다", 1.5, postcall="jobs-guide"),
    _Kind("culture-arts", "문화예술과", "문화행사 관련 안내 전화입니다", 1),
    _Kind("sports", "체육진흥과", "체육시설 이용 관련 안내 전화입니다", 1),
    _Kind("tourism", "관광과", "관광 안내 관련 전화입니다", 1),
    _Kind("education-support", "교육지원과", "교육 지원 사업 관련 안내 전화입니다", 1),
    _Kind("safety", "안전총괄과", "재난 안전 관련 안내 전화입니다", 1.5),
    _Kind("emergency-planning", "비상대비과", "민방위 교육 관련 안내 전화입니다", 1),
    _Kind("food-safety", "위생과", "식품 위생 관련 안내 전화입니다", 1.5),
    _Kind("agriculture", "농업정책과", "농업 지원 관련 안내 전화입니다", 1),
    _Kind("public-relations", "홍보담당관", "시정 홍보 관련 안내 전화입니다", 1),
    _Kind("audit", "감사담당관", "감사 및 공익신고 관련 안내 전화입니다", 1),
    _Kind("general-affairs", "총무과", "한빛시청 총무과에서 연락드렸습니다", 2),
    _Kind("budget-legal", "예산법무과", "예산 및 법무 관련 안내 전화입니다", 1),
    _Kind("information", "정보통신과", "정보통신 관련 안내 전화입니다", 1),
    _Kind("accounting", "회계과", "계약 및 대금 지급 관련 안내 전화입니다", 1.5),
    _Kind("citizen-communication", "시민소통과", "시민 제안 관련 안내 전화입니다", 1),
    _Kind(
        "vehicle-registration",
        "차량등록과",
        "자동차 등록 관련 안내 전화입니다",
        2,
        organisation="한빛시 차량등록사업소",
    ),
    _Kind(
        "health-admin",
        "보건행정과",
        "보건소에서 건강 관련 안내를 드립니다",
        2,
        _HEALTH,
        "health-checkup-guide",
    ),
    _Kind("health-promotion", "건강증진과", "건강검진 및 예방접종 안내 전화입니다", 2, _HEALTH),
    _Kind("infection-control", "감염병관리과", "감염병 예방 관련 안내 전화입니다", 1.5, _HEALTH),
    _Kind("library", "도서관정책과", "도서관 이용 관련 안내 전화입니다", 1, organisation="한빛시립도서관"),
    _Kind("council", "의회사무국", "시의회 관련 안내 전화입니다", 1.5, organisation="한빛시의회"),
    _Kind("duty-office", "당직실", "한빛시청 당직실에서 연락드렸습니다", 0.3, public_number=False),
)


def _sizes(phones: int, rng: random.Random) -> list[int]:
    """Phones per department: at least one each, proportional to (jittered) weights, summing to phones."""
    kinds = CATALOGUE[: min(len(CATALOGUE), phones)]
    weights = [k.weight * rng.uniform(0.6, 1.4) for k in kinds]
    spare = phones - len(kinds)
    shares = [spare * w / sum(weights) for w in weights]
    sizes = [1 + int(s) for s in shares]
    # Largest remainder: hand the phones lost to rounding to the biggest fractional parts.
    by_fraction = sorted(range(len(kinds)), key=lambda i: shares[i] - int(shares[i]), reverse=True)
    for i in by_fraction[: phones - sum(sizes)]:
        sizes[i] += 1
    return sizes


def _ranges(size: int, start: int, rng: random.Random) -> list[tuple[int, int]]:
    """Split ``size`` extensions into at most 4 ranges / singles from ``start``, with small gaps."""
    out: list[tuple[int, int]] = []
    cursor, left = start, size
    while left:
        if len(out) == 3:
            chunk = left
        elif left > 1 and rng.random() < 0.25:
            chunk = 1  # a team leader's or a fax line's single extension
        else:
            chunk = rng.randint(max(1, left // 3), left)
        out.append((cursor, cursor + chunk - 1))
        cursor += chunk + rng.randint(1, 4)  # numbers left free by moves and retired phones
        left -= chunk
    return out


def _plan(phones: int, seed: int, width: int) -> list[tuple[_Kind, list[tuple[int, int]]]]:
    rng = random.Random(seed)
    sizes = _sizes(phones, rng)
    cursor = FIRST_EXTENSION if width == 4 else FIRST_EXTENSION * 10
    plan = []
    for kind, size in zip(CATALOGUE, sizes, strict=False):
        ranges = _ranges(size, cursor, rng)
        plan.append((kind, ranges))
        # The next department starts on a round number, a little further on.
        cursor = (ranges[-1][1] // 10 + 1 + rng.randint(0, 3)) * 10
    return plan


def _caller_number(first: int) -> str:
    # DID plan of the recorded PBX: 031-900-EXTN for 4-digit extensions, 031-9EX-TENS for 5 digits.
    if first < 10_000:
        return f"031-900-{first:04d}"
    return f"031-9{first // 10_000:02d}-{first % 10_000:04d}"


def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid double-quoted YAML scalar


def generate_directory(phones: int = 4000, seed: int = 7) -> str:
    """YAML text of a city hall directory covering exactly ``phones`` extensions.

    4-digit extensions from 2001 while they fit, else 5-digit ones from 20001 (up to ~70,000
    phones). The same (phones, seed) always gives the same text.
    """
    if phones < 1:
        raise ValueError("phones must be at least 1")
    for width in (4, 5):
        plan = _plan(phones, seed, width)
        if plan[-1][1][-1][1] < 10**width:
            break
    else:
        raise ValueError(f"{phones} phones do not fit in 5-digit extensions")

    lines = [
        f"# Generated by `gateway rules generate-directory` ({phones} phones, seed {seed}).",
        "# Field meanings: see rules/directory.yaml.",
        f"organisation: {_text(ORGANISATION)}",
        "",
        "departments:",
    ]
    for kind, ranges in plan:
        lines.append(f"  - id: {kind.id}")
        lines.append(f"    name: {_text(kind.name)}")
        if kind.organisation:
            lines.append(f"    organisation: {_text(kind.organisation)}")
        lines.append(f"    guide: {_text(kind.guide)}")
        if kind.public_number:
            lines.append(f"    caller_number: {_text(_caller_number(ranges[0][0]))}")
        if kind.postcall:
            lines.append(f"    postcall: {kind.postcall}")
        shown = [str(a) if a == b else f"{a}-{b}" for a, b in ranges]
        lines.append(f"    extensions: [{', '.join(_text(s) for s in shown)}]")
    return "\n".join(lines) + "\n"


def cmd_generate_directory(phones: int, out: TextIO, seed: int = 7) -> int:
    """Write a generated directory.yaml to ``out``; 0 on success, 2 for an impossible size."""
    try:
        text = generate_directory(phones, seed)
    except ValueError as exc:
        print(f"error: {exc}", file=out)
        return 2
    out.write(text)
    return 0
