"""The inbox page over real HTTP: only the queues a person may see, counts and views, the list
fragment, the access records of every list shown, and the 403 + DENIED record for another queue."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.domain.audit import Action
from tests.console.console_site import DUTY, Site, running_site


@pytest.fixture
async def site(redis_url: str, sqlite_records_url: str) -> AsyncIterator[Site]:
    async for s in running_site(redis_url, sqlite_records_url):
        yield s


async def test_inbox_shows_only_the_queues_a_person_may_see(site: Site) -> None:
    complaint_tid, complaint = await site.text("민원 문의드립니다 가로등 고장", sender="+821011112222")
    duty_tid, duty = await site.text("야간 당직실 문의", sender="+821033334444", to=DUTY)
    assert (complaint, duty) == ("complaint", "duty")
    kim = await site.person("kim", "complaint")

    page = await site.get(kim, "/")
    assert page.status == 200, page.text
    assert "민원처리팀" in page.text and "당직실" not in page.text
    assert complaint_tid in page.text and duty_tid not in page.text
    assert "가로등 고장" in page.text  # the preview
    assert "010-****-2222" in page.text and "01011112222" not in page.text  # masked
    assert 'class="thread is-unread' in page.text
    records = await site.records(action=Action.VIEW_INBOX)
    assert [(r.entry.account, r.entry.target) for r in records] == [("kim", "complaint")]


async def test_another_queue_is_refused_and_the_attempt_recorded(site: Site) -> None:
    await site.text("당직실 문의", to=DUTY)
    kim = await site.person("kim", "complaint")
    for path in ("/?queue=duty", "/inbox/list?queue=duty"):
        answer = await site.get(kim, path)
        assert answer.status == 403, (path, answer.status)
        assert "권한이 없습니다" in answer.text
    denied = await site.records(action=Action.DENIED)
    assert [(r.entry.account, r.entry.target, r.entry.result) for r in denied] == [("kim", "duty", "denied")] * 2
    assert not await site.records(action=Action.VIEW_INBOX)


async def test_no_queue_at_all_says_so_in_korean(site: Site) -> None:
    nobody = await site.person("park", "")
    page = await site.get(nobody, "/")
    assert page.status == 200
    assert "볼 수 있는 문자함이 없습니다" in page.text


async def test_list_fragment_views_counts_and_pages(site: Site) -> None:
    for n in range(55):
        await site.text(f"민원 {n}번 문의", sender=f"+8210555{n:05d}")
    kim = await site.person("kim", "complaint,duty")
    fragment = await site.get(kim, "/inbox/list?queue=complaint&view=open", htmx=True)
    assert fragment.status == 200
    assert "<html" not in fragment.text  # a fragment, not a page
    assert fragment.text.count('class="thread ') == 50
    assert "1–50 / 총 55건" in fragment.text
    assert 'id="queue-tabs"' in fragment.text and 'hx-swap-oob="true"' in fragment.text
    assert "안읽음 55" in fragment.text  # the tab's counts
    second = await site.get(kim, "/inbox/list?queue=complaint&view=open&offset=50", htmx=True)
    assert second.text.count('class="thread ') == 5 and "51–55 / 총 55건" in second.text
    mine = await site.get(kim, "/inbox/list?queue=complaint&view=mine", htmx=True)
    assert "표시할 대화가 없습니다" in mine.text
    bad = await site.get(kim, "/inbox/list?queue=complaint&view=everything", htmx=True)
    assert bad.status == 400
    records = await site.records(action=Action.VIEW_INBOX)
    assert {r.entry.detail for r in records} == {"open", "mine"}


async def test_signed_out_person_is_sent_to_the_login_page(site: Site) -> None:
    answer = await site.get(None, "/")
    assert answer.status == 303 and answer.headers["Location"].startswith("/login")
    fragment = await site.get(None, "/inbox/list?queue=complaint", htmx=True)
    assert fragment.status == 401 and fragment.headers.get("HX-Redirect") == "/login"


async def test_counts_fragment_has_only_permitted_queues_and_no_record(site: Site) -> None:
    await site.text("민원 문의")
    await site.text("당직 문의", to=DUTY, sender="+821033334444")
    kim = await site.person("kim", "complaint")
    tabs = await site.get(kim, "/inbox/counts?queue=complaint&view=open", htmx=True)
    assert tabs.status == 200 and tabs.text.lstrip().startswith('<nav id="queue-tabs"')
    assert "민원처리팀" in tabs.text and "당직실" not in tabs.text and "열림 1" in tabs.text
    assert not await site.records(action=Action.VIEW_INBOX)
