"""The thread page over real HTTP: the conversation, VIEW_THREAD records, 403 + DENIED for another
queue's thread, claim / answer / note / tags / hand over / close through the page's forms (with
and without htmx), the opted-out refusal, the number reveal (recorded), and the CSRF check."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator

import pytest

from gateway.domain.audit import Action
from tests.console.console_site import DUTY, Site, running_site

CITIZEN = "+821012345678"


@pytest.fixture
async def site(redis_url: str, sqlite_records_url: str) -> AsyncIterator[Site]:
    async for s in running_site(redis_url, sqlite_records_url):
        yield s


def actions(records: object, tid: str) -> list[tuple[str, str, str]]:
    return sorted((r.entry.action, r.entry.account, r.entry.result) for r in records if r.entry.subject == tid)  # type: ignore[attr-defined]


async def test_viewing_a_thread_shows_the_conversation_and_is_recorded(site: Site) -> None:
    tid, queue = await site.text("가로등이 꺼졌어요\n정문 앞입니다")
    kim = await site.person("kim", "complaint")
    page = await site.get(kim, f"/threads/{tid}")
    assert page.status == 200, page.text
    assert "가로등이 꺼졌어요\n정문 앞입니다" in html.unescape(page.text)
    assert 'class="msg msg-in"' in page.text
    assert "010-****-5678" in page.text and "1234-5678" not in page.text
    assert "번호 보기" in page.text and "접속기록에 남습니다" in page.text
    assert 'id="byte-counter"' in page.text and 'data-kind="SMS" data-bytes="0"' in page.text
    (view,) = await site.records(action=Action.VIEW_THREAD, subject=tid)
    assert (view.entry.account, view.entry.target, view.entry.result) == ("kim", queue, "ok")
    # Viewing marks it read: the inbox no longer shows it unread.
    listing = await site.get(kim, "/inbox/list?queue=complaint", htmx=True)
    assert tid in listing.text and "is-unread" not in listing.text


async def test_a_thread_of_another_queue_is_403_and_recorded_as_denied(site: Site) -> None:
    tid, queue = await site.text("당직실에 알립니다", to=DUTY)
    assert queue == "duty"
    kim = await site.person("kim", "complaint")
    page = await site.get(kim, f"/threads/{tid}")
    assert page.status == 403 and "당직실에 알립니다" not in page.text
    for path in ("claim", "reveal", "reply"):
        answer = await site.post(kim, f"/threads/{tid}/{path}", {"text": "답변"})
        assert answer.status == 403, path
    denied = await site.records(action=Action.DENIED, subject=tid)
    assert len(denied) == 4 and {r.entry.target for r in denied} == {"duty"}
    assert {r.entry.detail for r in denied} == {"view", "claim", "reveal", "reply"}
    assert not await site.records(action=Action.VIEW_THREAD)
    assert (await site.desk.summary(tid)).claimed_by is None  # nothing was done
    unknown = await site.get(kim, "/threads/t0123456789abcdef0123")
    assert unknown.status == 404


async def test_claim_and_answer_through_the_page(site: Site) -> None:
    tid, _ = await site.text("불법 주차 신고합니다")
    kim = await site.person("kim", "complaint", name="김담당")
    lee = await site.person("lee", "complaint", name="이담당")

    claimed = await site.post(kim, f"/threads/{tid}/claim", htmx=True)
    assert claimed.status == 200, claimed.text
    assert 'id="thread-side"' in claimed.text and "김담당 (나)" in claimed.text
    again = await site.post(kim, f"/threads/{tid}/claim", htmx=True)  # a double click
    assert again.status == 200
    taken = await site.post(lee, f"/threads/{tid}/claim", htmx=True)
    assert taken.status == 409 and "다른 담당자(김담당)가 처리 중입니다." in taken.text

    answer = await site.post(kim, f"/threads/{tid}/reply", {"text": "확인 후 조치하겠습니다."}, htmx=True)
    assert answer.status == 200, answer.text
    assert "확인 후 조치하겠습니다." in answer.text and 'class="msg msg-out"' in answer.text
    assert 'id="answer-form"' in answer.text  # the answer box is reset
    twice = await site.post(kim, f"/threads/{tid}/reply", {"text": "확인 후 조치하겠습니다."}, htmx=True)
    assert twice.status == 200 and "한 번만 발송됩니다" in twice.text
    conv = await site.desk.conversation(tid)
    assert [m.text for m in conv.messages if m.kind == "out"] == ["확인 후 조치하겠습니다."]

    other = await site.post(lee, f"/threads/{tid}/reply", {"text": "제가 답할게요"}, htmx=True)
    assert other.status == 409 and "다른 담당자(김담당)가 처리 중입니다." in other.text
    records = await site.records()
    mine = [(r.entry.action, r.entry.account, r.entry.result) for r in records if r.entry.subject == tid]
    assert mine.count((Action.REPLY, "kim", "ok")) == 2
    assert (Action.REPLY, "lee", "failed") in mine and (Action.CLAIM, "lee", "failed") in mine
    assert all("조치" not in r.entry.detail for r in records)  # never the text


async def test_answer_without_javascript_redirects_back(site: Site) -> None:
    tid, _ = await site.text("문의드립니다")
    kim = await site.person("kim", "complaint")
    answer = await site.post(kim, f"/threads/{tid}/reply", {"text": "답변드립니다"})
    assert answer.status == 303 and answer.headers["Location"] == f"/threads/{tid}"
    empty = await site.post(kim, f"/threads/{tid}/reply", {"text": "   "})
    assert empty.status == 400 and "답장 내용을 입력해 주세요." in empty.text and "<html" in empty.text


async def test_an_answer_to_an_opted_out_citizen_is_refused_and_the_text_kept(site: Site) -> None:
    tid, _ = await site.text("문의입니다", sender=CITIZEN)
    await site.opt_out(CITIZEN)
    kim = await site.person("kim", "complaint")
    page = await site.get(kim, f"/threads/{tid}")
    assert "수신거부한 시민에게는 답장을 보낼 수 없습니다." in page.text  # shown before trying
    typed = "안내드립니다 내일 방문 예정"
    refused = await site.post(kim, f"/threads/{tid}/reply", {"text": typed})
    assert refused.status == 409
    assert re.search(r'role="alert">수신거부한 시민에게는 답장을 보낼 수 없습니다.<', refused.text), refused.text
    assert f">{typed}</textarea>" in refused.text  # the typed text is kept
    by_htmx = await site.post(kim, f"/threads/{tid}/reply", {"text": typed}, htmx=True)
    assert by_htmx.status == 409 and 'role="alert">수신거부한 시민에게는 답장을 보낼 수 없습니다.<' in by_htmx.text
    assert 'id="answer-form"' not in by_htmx.text  # the answer box is left as it is
    assert not [m for m in (await site.desk.conversation(tid)).messages if m.kind == "out"]
    assert (await site.desk.summary(tid)).claimed_by is None  # a refused answer claims nothing
    failed = [r for r in await site.records(action=Action.REPLY, subject=tid) if r.entry.result == "failed"]
    assert [r.entry.detail for r in failed] == ["opted_out", "opted_out"]


async def test_reveal_number_is_recorded_then_shown(site: Site) -> None:
    tid, queue = await site.text("번호 확인 부탁", sender=CITIZEN)
    kim = await site.person("kim", "complaint")
    shown = await site.post(kim, f"/threads/{tid}/reveal", htmx=True)
    assert shown.status == 200 and "010-1234-5678" in shown.text and 'id="citizen-number"' in shown.text
    (rec,) = await site.records(action=Action.REVEAL_NUMBER, subject=tid)
    assert (rec.entry.account, rec.entry.target) == ("kim", queue)
    assert "5678" not in rec.entry.detail
    without_js = await site.post(kim, f"/threads/{tid}/reveal")
    assert without_js.status == 200 and "<html" in without_js.text and "010-1234-5678" in without_js.text
    assert len(await site.records(action=Action.REVEAL_NUMBER, subject=tid)) == 2
    page = await site.get(kim, f"/threads/{tid}")
    assert "010-1234-5678" not in page.text  # masked again on the next view


async def test_note_tags_handover_and_close(site: Site) -> None:
    tid, _ = await site.text("도로 파손 신고")
    kim = await site.person("kim", "complaint", name="김담당")
    lee = await site.person("lee", "complaint", name="이담당")
    await site.person("choi", "duty")  # may not see the queue: not offered, refused if named

    noted = await site.post(kim, f"/threads/{tid}/note", {"text": "현장 확인 필요"}, htmx=True)
    assert noted.status == 200 and 'class="msg msg-note"' in noted.text and "현장 확인 필요" in noted.text
    tagged = await site.post(kim, f"/threads/{tid}/tags", {"add": "도로 긴급"}, htmx=True)
    assert tagged.status == 200 and '<li class="tag">도로' in tagged.text
    removed = await site.post(kim, f"/threads/{tid}/tags", {"remove": "긴급"}, htmx=True)
    assert "긴급" not in (await site.desk.summary(tid)).tags and removed.status == 200
    bad_tag = await site.post(kim, f"/threads/{tid}/tags", {"add": "가" * 25}, htmx=True)
    assert bad_tag.status == 400

    await site.post(kim, f"/threads/{tid}/claim", htmx=True)
    page = await site.get(kim, f"/threads/{tid}")
    assert '<option value="lee">' in page.text and '<option value="choi">' not in page.text
    not_allowed = await site.post(kim, f"/threads/{tid}/handover", {"to": "choi"}, htmx=True)
    assert not_allowed.status == 400
    handed = await site.post(kim, f"/threads/{tid}/handover", {"to": "lee"}, htmx=True)
    assert handed.status == 200 and "이담당 님에게 넘겼습니다." in handed.text
    assert (await site.desk.summary(tid)).claimed_by == "lee"

    no_outcome = await site.post(lee, f"/threads/{tid}/close", {"outcome": "whatever"}, htmx=True)
    assert no_outcome.status == 400
    closed = await site.post(lee, f"/threads/{tid}/close", {"outcome": "answered"})
    assert closed.status == 303
    summary = await site.desk.summary(tid)
    assert summary.closed_at is not None and summary.outcome == "answered"
    page = await site.get(lee, f"/threads/{tid}")
    assert "종결됨 (답변 완료)" in page.text

    records = await site.records()
    done = {(r.entry.action, r.entry.account) for r in records if r.entry.subject == tid and r.entry.result == "ok"}
    assert {(Action.NOTE, "kim"), (Action.TAG, "kim"), (Action.HANDOVER, "kim"), (Action.CLOSE, "lee")} <= done
    assert not any("현장" in r.entry.detail or "도로" in r.entry.detail for r in records)


async def test_actions_need_the_csrf_token(site: Site) -> None:
    tid, _ = await site.text("문의")
    kim = await site.person("kim", "complaint")
    forged = await site.post(kim, f"/threads/{tid}/claim", {"csrf": "wrong"})
    assert forged.status == 403 and "보안 토큰" in forged.text
    assert (await site.desk.summary(tid)).claimed_by is None
