"""The answer box's byte counter: `smstext.explain` (pure) and `POST /count` over real HTTP. It
flips from SMS to LMS at exactly 90 EUC-KR bytes, as `smstext.choose` measures them, and says
what would be replaced, removed or cut."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator

import pytest

from gateway.domain.smstext import ELLIPSIS, LMS_MAX_BYTES, choose, encoded_length, explain
from tests.console.console_site import Site, running_site

COUNTER = re.compile(r'<div id="byte-counter"[^>]* data-kind="(SMS|LMS)" data-bytes="(\d+)"')


# ------------------------------------------------------------------ explain (pure)


@pytest.mark.parametrize(
    ("text", "kind", "size"),
    [
        ("가" * 45, "sms", 90),
        ("가" * 46, "lms", 92),
        ("a" * 90, "sms", 90),
        ("a" * 91, "lms", 91),
        ("가" * 44 + "ab", "sms", 90),
        ("가" * 44 + "abc", "lms", 91),
        ("", "sms", 0),
    ],
)
def test_explain_agrees_with_choose_at_the_sms_limit(text: str, kind: str, size: int) -> None:
    ex = explain(text)
    assert (ex.kind, ex.bytes) == (kind, size)
    assert (ex.kind, ex.safe) == choose(text)
    assert ex.bytes == encoded_length(text)


def test_explain_lists_replacements_and_removals_once_in_order() -> None:
    ex = explain("똠 – 좋아요😀 똠 똠")
    assert ex.changes == (("똠", "ㄸㅗㅁ"), ("–", "-"), ("😀", ""))
    assert ex.safe == choose("똠 – 좋아요😀 똠 똠")[1]
    assert ex.cut == ""
    assert explain("그냥 한글과 ASCII").changes == ()


def test_explain_names_what_is_cut_past_2000_bytes() -> None:
    text = "가" * 998 + " 마지막 문장은 잘립니다 정말로"  # 1,996 bytes, then the budget (1,998) ends
    ex = explain(text)
    assert ex.kind == "lms" and ex.bytes == encoded_length(text) > LMS_MAX_BYTES
    assert ex.safe.endswith(ELLIPSIS) and encoded_length(ex.safe) <= LMS_MAX_BYTES
    assert ex.cut.startswith("마지막") and ex.cut.endswith("정말로")
    # What is sent plus what is cut is the whole (safe) text.
    assert (ex.safe[: -len(ELLIPSIS)] + " " + ex.cut).split() == text.split()


# ------------------------------------------------------------------ POST /count


@pytest.fixture
async def site(redis_url: str, sqlite_records_url: str) -> AsyncIterator[Site]:
    async for s in running_site(redis_url, sqlite_records_url):
        yield s


async def test_counter_fragment_flips_at_90_bytes(site: Site) -> None:
    tid, _ = await site.text("문의")
    kim = await site.person("kim", "complaint")
    seen = []
    for n in (44, 45, 46):
        answer = await site.post(kim, f"/threads/{tid}/count", {"text": "가" * n}, htmx=True)
        assert answer.status == 200
        match = COUNTER.search(answer.text)
        assert match, answer.text
        seen.append((match.group(1), int(match.group(2))))
    assert seen == [("SMS", 88), ("SMS", 90), ("LMS", 92)]
    sms = await site.post(kim, "/count", {"text": "가" * 45}, htmx=True)
    assert "SMS 90 / 90 바이트" in sms.text
    lms = await site.post(kim, "/count", {"text": "가" * 60}, htmx=True)
    assert "LMS 120 / 2,000 바이트" in lms.text


async def test_counter_says_what_is_replaced_removed_and_cut(site: Site) -> None:
    kim = await site.person("kim", "complaint")
    answer = await site.post(kim, "/count", {"text": "똠 – 감사합니다😀"}, htmx=True)
    text = html.unescape(answer.text)
    assert "“똠” → “ㄸㅗㅁ”" in text and "“–” → “-”" in text and "“😀” 삭제" in text
    long = await site.post(kim, "/count", {"text": "가" * 998 + " 마지막 문장은 잘립니다"}, htmx=True)
    assert "LMS 2,019 / 2,000 바이트" in long.text and "“마지막 문장은 잘립니다…”부터" in html.unescape(long.text)
    assert 'role="alert"' in long.text


async def test_counting_needs_a_session_and_the_csrf_token(site: Site) -> None:
    async with site.http.post(f"{site.base}/count", data={"text": "가"}, allow_redirects=False) as r:
        assert r.status in (303, 401)
    kim = await site.person("kim", "complaint")
    forged = await site.post(kim, "/count", {"text": "가", "csrf": "nope"})
    assert forged.status == 403
