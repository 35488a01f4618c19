"""An Alimtalk whose outcome was never learnt is looked up at NHN before it is sent again.

Real parts only: the outbox guard on the session's redis-server, the real NHN adapter over
loopback HTTP to the fake NHN Cloud, whose "List messages" answers from what it took. The fake's
idempotency window is set to 0 s to stand for a retry more than NHN's 10 minutes later, when
`X-NC-API-IDEMPOTENCY-KEY` no longer protects: then only the lookup keeps a second Alimtalk off
the citizen's phone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from adapters.nhn_alimtalk import NhnAlimtalk
from gateway.domain.models import AlimtalkRequest, SendOutcome, SendResult, SmsRequest
from gateway.outbox.guard import FOUND_AT_PROVIDER, Outbox, QueuedMessage, Verdict
from gateway.outbox.store import RedisOutboxStore, connect
from gateway.sim.fake_nhn import FakeNhnServer


def _message(key: str, to: str, *, fallback: bool = True) -> QueuedMessage:
    sms = SmsRequest(key, to, "+82319002000", "[한빛시청] 여권 발급 안내", "여권", "sms") if fallback else None
    alimtalk = AlimtalkRequest(key, to, "HB_POSTCALL_01", (("title", "여권 발급 안내"),), fallback=sms)
    return QueuedMessage(key, "pbx", key, "postcall", to, "nhn", alimtalk=alimtalk)


@pytest.fixture
async def nhn() -> AsyncIterator[FakeNhnServer]:
    server = FakeNhnServer(registered_senders=frozenset({"0319002000"}), idempotency_window_s=0.0, slow_s=0.6)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def outbox(nhn: FakeNhnServer, redis_url: str) -> AsyncIterator[Outbox]:
    provider = NhnAlimtalk(
        "nhn", nhn.base_url, nhn.alimtalk_appkey, nhn.alimtalk_secret, nhn.sender_key, deadline_s=0.2
    )
    store = RedisOutboxStore(connect(redis_url, timeout_s=2.0))
    yield Outbox(store, {}, hash_key=b"k" * 16, alimtalk={"nhn": provider})
    await provider.close()
    await store.aclose()


async def _taken(nhn: FakeNhnServer, count: int) -> None:
    """Wait until NHN has taken `count` Alimtalk requests (a slow answer is taken after `slow_s`)."""
    for _ in range(150):
        if len(nhn.alimtalk_messages) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"NHN took {len(nhn.alimtalk_messages)} request(s), expected {count}")


def _to(nhn: FakeNhnServer, number: str) -> list[str]:
    return [d.channel for d in nhn.deliveries if d.to == number]


async def test_taken_alimtalk_is_found_not_sent_again(nhn: FakeNhnServer, outbox: Outbox) -> None:
    late = "+821055600001"
    nhn.behave(late, "slow")
    first = await outbox.send(_message("late", late))
    assert isinstance(first, SendOutcome) and first.result is SendResult.TEMPORARY_ERROR
    await _taken(nhn, 1)
    assert _to(nhn, late) == ["alimtalk"]
    nhn.behave(late, "accepted")

    again = await outbox.send(_message("late", late))
    assert isinstance(again, SendOutcome) and again.result is SendResult.ACCEPTED
    assert again.detail == FOUND_AT_PROVIDER
    assert again.reference == f"{nhn.deliveries[0].request_id}:{nhn.deliveries[0].recipient_seq}"
    assert _to(nhn, late) == ["alimtalk"]  # without the lookup the fake (window 0 s) would deliver twice
    assert await outbox.send(_message("late", late)) is Verdict.ALREADY_SENT
    (query,) = nhn.alimtalk_lookups
    assert query["recipientNo"] == "01055600001" and query["recipientGroupingKey"] == "late"
    assert outbox.counts["send:postcall:found_at_provider"] == 1


async def test_request_nhn_never_took_is_sent_once(nhn: FakeNhnServer, outbox: Outbox) -> None:
    lost = "+821055600002"
    nhn.behave(lost, "http503")
    failed = await outbox.send(_message("lost", lost))
    assert isinstance(failed, SendOutcome) and failed.result is SendResult.TEMPORARY_ERROR
    nhn.behave(lost, "accepted")
    sent = await outbox.send(_message("lost", lost))
    assert isinstance(sent, SendOutcome) and sent.result is SendResult.ACCEPTED and sent.detail != FOUND_AT_PROVIDER
    assert _to(nhn, lost) == ["alimtalk"] and len(nhn.alimtalk_lookups) == 1


async def test_final_kakao_failure_found_is_its_state(nhn: FakeNhnServer, outbox: Outbox) -> None:
    """Taken but not deliverable (not a KakaoTalk user, no fallback asked): the retry learns that
    from NHN's list instead of sending a second request."""
    gone = "+821055600003"
    nhn.behave(gone, "slow")
    await outbox.send(_message("gone", gone, fallback=False))
    nhn.behave(gone, "not_kakao_user")  # read by the fake when its slow answer is made
    await _taken(nhn, 1)
    requests = len(nhn.requests)
    found = await outbox.send(_message("gone", gone, fallback=False))
    assert isinstance(found, SendOutcome) and found.result is SendResult.NOT_KAKAO_USER
    assert "FAILED" in found.detail and len(nhn.requests) == requests  # nothing sent again


async def test_lookup_failing_keeps_todays_behaviour_and_is_counted(nhn: FakeNhnServer, outbox: Outbox) -> None:
    blind = "+821055600004"
    nhn.behave(blind, "http503")
    await outbox.send(_message("blind", blind))
    nhn.behave(blind, "accepted")
    nhn.lookup_fails = True
    sent = await outbox.send(_message("blind", blind))
    assert isinstance(sent, SendOutcome) and sent.result is SendResult.ACCEPTED
    assert _to(nhn, blind) == ["alimtalk"] and len(nhn.alimtalk_lookups) == 1
    assert outbox.counts["send:postcall:lookup_failed"] == 1
