"""Opt-out as citizens write it, end to end: through the real webhook, Redis and the worker
(the word table and property tests are in tests/unit/test_optout_text.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession

from gateway.domain.optout import QUESTION_TAG
from gateway.messaging.workers import wait_idle
from gateway.outbox.guard import Admission, Verdict
from gateway.rules.messaging import load_messaging
from tests.conftest import RULES
from tests.integration.test_intake import Site, _site, env, seoul, sms

__all__ = ["env"]  # a fixture, used by the end-to-end tests


SHIPPED = load_messaging(RULES)


@pytest.fixture
async def site(env: dict[str, str], redis_url: str) -> AsyncIterator[Site]:
    s = await _site(env, redis_url, "t-optout")
    yield s
    await s.http.stop()
    await asyncio.to_thread(s.worker.stop)
    await s.gateway.stop()


async def test_a_tagged_polite_refusal_opts_out_and_later_sends_are_refused(site: Site) -> None:
    async with ClientSession() as session:
        _, first = await site.post(session, sms("w-0", "여권 문의드립니다", seoul("2026-11-24T10:00:00")))
        status, body = await site.post(session, sms("w-1", "[Web발신] 수신 거부합니다.", seoul("2026-11-24T10:05:00")))
        assert status == 200 and body["status"] == "accepted"
        assert await wait_idle(site.broker, site.runtime, timeout_s=10)
        _, state = await site.api(session, "GET", "/api/optout/010-1234-5678")
        assert state["opted_out"]["channel"] == "sms"
        assert [r.text for r in site.sms.requests if "수신거부가 처리" in r.text]  # the confirmation
        status, _ = await site.api(
            session, "POST", f"/api/threads/{first['thread']}/reply", {"text": "답변드립니다", "staff": "kim"}
        )
        assert status == 409
        # A complaint that mentions the refusal changes nothing: still opted out, tagged, and the
        # how-to reply is an ordinary automatic reply, which the guard does not send them.
        _, body = await site.post(session, sms("w-2", "수신거부 했는데 왜 또 와요?", seoul("2026-11-24T10:10:00")))
        assert await wait_idle(site.broker, site.runtime, timeout_s=10)
        _, state = await site.api(session, "GET", "/api/optout/010-1234-5678")
        assert state["opted_out"] is not None
        _, inbox = await site.api(session, "GET", "/api/inbox/complaint")
        assert QUESTION_TAG in inbox[0]["tags"]
    assert not [r for r in site.sms.requests if SHIPPED.optout_help in r.text]
    assert await site.gateway.outbox.admit(Admission("pbx", "c1", "postcall", "+821012345678")) is Verdict.OPTED_OUT


async def test_a_question_gets_the_how_to_reply_and_no_opt_out(site: Site) -> None:
    async with ClientSession() as session:
        status, body = await site.post(
            session, sms("q-1", "수신거부 어떻게 하나요?", seoul("2026-11-24T10:00:00"), sender="010-2222-3333")
        )
        assert status == 200 and body["status"] == "accepted" and body["queue"] == "complaint"  # routed as usual
        assert await wait_idle(site.broker, site.runtime, timeout_s=10)
        _, state = await site.api(session, "GET", "/api/optout/010-2222-3333")
        assert state["opted_out"] is None
        _, inbox = await site.api(session, "GET", "/api/inbox/complaint")
        assert QUESTION_TAG in inbox[0]["tags"]
        _, thread = await site.api(session, "GET", f"/api/threads/{body['thread']}")
    (reply,) = [r for r in site.sms.requests if r.to == "+821022223333"]
    assert SHIPPED.optout_help in reply.text and "접수되었습니다" in reply.text  # how to, and the rule's reply
    assert [m["dir"] for m in thread["messages"]] == ["in", "out"]
