"""EUC-KR safety, byte counts and the SMS/LMS choice (gateway.domain.smstext)."""

from __future__ import annotations

import pytest

from gateway.domain.smstext import (
    ELLIPSIS,
    LMS_MAX_BYTES,
    SMS_MAX_BYTES,
    choose,
    encoded_length,
    euckr_safe,
)


def carried(text: str) -> bool:
    """Every character is ASCII or a 2-byte KS X 1001 code (what an EUC-KR SMS carries)."""
    return all(ch.isascii() or len(ch.encode("euc_kr")) == 2 for ch in text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("성북구청 민원여권과입니다.", "성북구청 민원여권과입니다."),
        ("감사합니다 😀 좋은 하루", "감사합니다 좋은 하루"),  # emoji removed, one space left
        ("👍확인", "확인"),
        ("🇰🇷 대한민국", "대한민국"),  # flag: two regional indicators, no leading space
        ("1️⃣ 👨‍👩‍👧 가족", "1 가족"),  # keycap, ZWJ family
        ("10:00–18:00 • 민원실", "10:00-18:00 · 민원실"),
        ("수수료 1,000₩ ©구청", "수수료 1,000￦ (C)구청"),
        ("“따옴표” ‘작은’ … ※ ★ ℃ ·", "“따옴표” ‘작은’ … ※ ★ ℃ ·"),  # all in KS X 1001: kept
        ("a\u00a0b\u200bc", "a bc"),
        ("café", "cafe"),
        ("ｱｲｳ", "アイウ"),
        ("丒 희귀 한자", "□ 희귀 한자"),  # not in KS X 1001 at all
        ("똠방각하 햏", "ㄸㅗㅁ방각하 ㅎㅐㅎ"),  # CP949-only syllables spelled out in jamo
        ("줄\r\n바꿈", "줄\n바꿈"),
    ],
)
def test_euckr_safe(text: str, expected: str) -> None:
    safe = euckr_safe(text)
    assert safe == expected
    assert carried(safe)
    assert euckr_safe(safe) == safe  # idempotent


def test_cp949_syllables_kept_when_allowed() -> None:
    assert euckr_safe("똠 햏 뷁", allow_cp949=True) == "똠 햏 뷁"
    assert encoded_length("똠햏", allow_cp949=True) == 4  # 2 bytes each in CP949
    assert encoded_length("똠햏") == 12  # spelled out: six jamo


def test_never_fails_on_any_code_point() -> None:
    text = "".join(chr(cp) for cp in range(0, 0x30000, 97) if not 0xD800 <= cp <= 0xDFFF)
    safe = euckr_safe(text)
    assert carried(safe.replace("\x00", ""))


@pytest.mark.parametrize(
    ("text", "size"),
    [("abc", 3), ("가나다", 6), ("SMS 안내", 8), ("😀", 0), ("가😀a", 3), ("", 0)],
)
def test_encoded_length(text: str, size: int) -> None:
    assert encoded_length(text) == size


def test_exactly_90_bytes_is_sms_and_91_is_lms() -> None:
    ninety = "가" * 44 + "ab"  # 88 + 2
    assert encoded_length(ninety) == SMS_MAX_BYTES
    assert choose(ninety) == ("sms", ninety)
    assert choose(ninety + "c") == ("lms", ninety + "c")
    assert choose("가" * 45) == ("sms", "가" * 45)
    assert choose("가" * 45 + "😀") == ("sms", "가" * 45)  # the emoji costs nothing: removed


def test_mixed_ascii_and_hangul() -> None:
    text = "[성북구청] 통화 후 안내: https://www.sb.go.kr/ 방문해 주세요"
    kind, safe = choose(text)
    assert safe == text
    assert kind == ("sms" if encoded_length(text) <= 90 else "lms")
    assert encoded_length(text) == len(text.encode("euc_kr"))


def test_exactly_2000_bytes_is_kept_whole() -> None:
    text = "가" * 999 + "ab"
    assert encoded_length(text) == LMS_MAX_BYTES
    assert choose(text) == ("lms", text)


@pytest.mark.parametrize("text", ["가" * 1000 + "a", "a" * 2001, "가" * 1500, "a" + "가" * 1000])
def test_over_2000_bytes_is_cut_with_an_ellipsis(text: str) -> None:
    kind, cut = choose(text)
    assert kind == "lms"
    assert cut.endswith(ELLIPSIS)
    assert encoded_length(cut) <= LMS_MAX_BYTES
    assert encoded_length(cut) >= LMS_MAX_BYTES - 3  # cut at the last character that fits
    assert text.startswith(cut.removesuffix(ELLIPSIS))  # a character boundary, nothing invented
    assert carried(cut)
