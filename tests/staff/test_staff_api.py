"""The staff API with personal tokens over real TCP (gateway.inbox.staffapi): who acts is the
token's person, queues are per person, every route leaves its access record."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import ClientSession

from gateway.domain.audit import AccessRecord, audit_key
from gateway.records.store import RecordsStore
from gateway.staff.audit import SqlAccessLog
from tests.integration.test_intake import ENV, Site, _site, seoul, sms
from tests.support.staff import issue_tokens

WEEKDAY = seoul("2026-11-24T10:00:00")  # a Tuesday morning: texts go to the complaint queue


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str, sqlite_records_url: str) -> Iterator[dict[str, str]]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("GATEWAY_RECORDS_URL", sqlite_records_url)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    yield dict(os.environ)


@pytest.fixture
async def site(env: dict[str, str], redis_url: str) -> AsyncIterator[Site]:
    s = await _site(env, redis_url, "t-staffapi")
    # park works the duty queue only
    s.tokens |= await issue_tokens(env["GATEWAY_RECORDS_URL"], env["GATEWAY_NUMBER_KEY"], {"park": "duty"})
    yield s
    await s.http.stop()
    await asyncio.to_thread(s.worker.stop)
    await s.gateway.stop()


async def records(env: dict[str, str]) -> tuple[list[AccessRecord], bool]:
    """Every access record, oldest first, and whether both chains verify."""
    store = RecordsStore(env["GATEWAY_RECORDS_URL"])
    try:
        log = SqlAccessLog(store, audit_key(env["GATEWAY_NUMBER_KEY"].encode()))
        found = list(reversed(await log.list(limit=10_000)))
        return found, all(r.ok for r in await log.verify())
    finally:
        await store.close()


async def test_no_token_or_a_revoked_one_is_401_and_recorded(site: Site, env: dict[str, str]) -> None:
    async with ClientSession() as session:
        status, _ = await site.api(session, "GET", "/api/inbox/complaint", token="")
        assert status == 401
        async with session.get(f"{site.base}/api/inbox/complaint") as resp:  # no header at all
            assert resp.status == 401
        assert (await site.api(session, "GET", "/api/inbox/complaint"))[0] == 200
        token_id = site.tokens["kim"].removeprefix("gwt_").split(".")[0]
        await site.gateway.staff_directory.revoke_token("admin", token_id)
        status, body = await site.api(session, "GET", "/api/inbox/complaint")
        assert status == 401 and "token" in body["error"]
        assert (await site.api(session, "GET", "/api/inbox/complaint", as_="lee"))[0] == 200
    found, ok = await records(env)
    refused = [r.entry for r in found if r.entry.action == "token_refused"]
    assert [(e.account, e.result, e.detail) for e in refused] == [
        ("", "denied", "missing"),
        ("", "denied", "missing"),
        ("", "denied", "unknown"),
    ]
    assert all(e.ip == "127.0.0.1" for e in refused)
    assert ok


async def test_another_queue_is_403_and_the_attempt_recorded(site: Site, env: dict[str, str]) -> None:
    async with ClientSession() as session:
        _, body = await site.post(session, sms("q-1", "민원 문의드립니다", WEEKDAY))
        tid = body["thread"]
        assert body["queue"] == "complaint"
        assert (await site.api(session, "GET", "/api/inbox/complaint", as_="park"))[0] == 403
        assert (await site.api(session, "GET", f"/api/threads/{tid}", as_="park"))[0] == 403
        status, _ = await site.api(session, "POST", f"/api/threads/{tid}/claim", {}, as_="park")
        assert status == 403
        status, _ = await site.api(session, "POST", f"/api/threads/{tid}/reply", {"text": "x"}, as_="park")
        assert status == 403
        assert (await site.api(session, "GET", "/api/inbox/duty", as_="park"))[0] == 200
        assert (await site.api(session, "GET", f"/api/threads/{tid}", as_="kim"))[0] == 200
        assert (await site.api(session, "GET", "/api/threads/t0000000000", as_="park"))[0] == 404
    found, ok = await records(env)
    denied = [(r.entry.account, r.entry.subject, r.entry.target) for r in found if r.entry.action == "denied"]
    assert denied == [
        ("park", "", "complaint"),  # the queue's list
        ("park", tid, "complaint"),  # the thread
        ("park", tid, "complaint"),  # a claim
        ("park", tid, "complaint"),  # a reply
    ]
    views = [(r.entry.account, r.entry.action, r.entry.subject) for r in found if r.entry.action.startswith("view")]
    assert views == [("park", "view_inbox", ""), ("kim", "view_thread", tid)]
    assert ok
    thread = await site.gateway.intake.thread(tid)
    assert thread is not None and thread["count"] == 1 and len(thread["messages"]) >= 1  # park changed nothing


async def test_claim_reply_close_are_recorded_and_a_double_click_stays_idempotent(
    site: Site, env: dict[str, str]
) -> None:
    async with ClientSession() as session:
        _, body = await site.post(session, sms("w-1", "민원 문의드립니다", WEEKDAY))
        tid = body["thread"]
        results = await asyncio.gather(
            *(site.api(session, "POST", f"/api/threads/{tid}/claim", {}) for _ in range(2)),
        )
        assert [s for s, _ in results] == [200, 200]
        first = await site.api(session, "POST", f"/api/threads/{tid}/reply", {"text": "확인했습니다"})
        again = await site.api(session, "POST", f"/api/threads/{tid}/reply", {"text": "확인했습니다"})
        assert (first[0], first[1]["result"]) == (202, "queued")
        assert (again[0], again[1]["result"]) == (200, "duplicate")
        status, closed = await site.api(session, "POST", f"/api/threads/{tid}/close", {})
        assert status == 200 and closed == {"closed": True, "already": False}
        status, closed = await site.api(session, "POST", f"/api/threads/{tid}/close")  # no body at all
        assert status == 200 and closed["already"]
    thread = await site.gateway.intake.thread(tid)
    assert thread is not None and thread["closed_by"] == "kim"
    found, ok = await records(env)
    acts = [(r.entry.account, r.entry.action, r.entry.subject) for r in found if r.entry.subject == tid]
    assert acts == [
        ("kim", "claim", tid),
        ("kim", "claim", tid),
        ("kim", "reply", tid),
        ("kim", "reply", tid),
        ("kim", "close", tid),
        ("kim", "close", tid),
    ]
    assert not any("확인했습니다" in str(r.entry) for r in found)  # ids, never the texts
    assert ok


async def test_opt_out_records_carry_the_numbers_hash_never_the_number(site: Site, env: dict[str, str]) -> None:
    async with ClientSession() as session:
        status, _ = await site.api(session, "POST", "/api/optout", {"number": "010-4321-8765", "action": "add"})
        assert status == 200
        status, state = await site.api(session, "GET", "/api/optout/01043218765")
        assert status == 200 and state["opted_out"]["via"] == "kim"
    found, ok = await records(env)
    optouts = [r.entry for r in found if r.entry.action.startswith("optout")]
    assert [(e.action, e.detail) for e in optouts] == [("optout_change", "add"), ("optout_view", "")]
    assert optouts[0].subject == optouts[1].subject and re.fullmatch(r"[0-9a-f]{32}", optouts[0].subject)
    assert not any(re.search(r"4321|8765", str(r.entry)) for r in found)
    assert ok


async def test_refused_tokens_are_throttled_per_address(site: Site, env: dict[str, str]) -> None:
    async with ClientSession() as session:
        statuses = [(await site.api(session, "GET", "/api/inbox/duty", token=f"gwt_x.{n}"))[0] for n in range(24)]
        assert statuses[:20] == [401] * 20 and statuses[-1] == 429
        # a good token from the same address is throttled too, until the window passes
        assert (await site.api(session, "GET", "/api/inbox/duty"))[0] == 429
    found, _ = await records(env)
    assert len([r for r in found if r.entry.action == "token_refused"]) == 20  # a flood is not written row by row
