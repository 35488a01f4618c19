"""The staff console's inbox (`gateway.inbox.desk.Desk`) on a real Redis: the per-queue indexes
kept by the intake's Lua steps across accept, claim, handover, reply, close, re-open, a queue
move and the records purge; pages over 10,000 threads; notes sealed at rest; tags."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.app.gateway import Gateway, Overrides
from gateway.domain.routing import InboundSms
from gateway.errors import ClaimedByOther, ThreadNotFound
from gateway.inbox import intake as intake_module
from gateway.inbox.desk import OUTCOMES, Desk
from gateway.inbox.intake import InboundRejected
from gateway.infra.config import load_config
from gateway.infra.rediskeys import (
    CONSOLE_EVENTS,
    DESK_PREFIX,
    NONE_KEY,
    contact_key,
    desk_key,
    desk_mine_key,
    inbound_key,
    inbox_key,
    thread_claim_key,
    thread_key,
    thread_messages_key,
)
from gateway.records.redispurge import purge_threads
from tests.conftest import RULES
from tests.integration.test_intake import ENV, Collect

SEOUL = ZoneInfo("Asia/Seoul")
CITY = "+82319002000"  # 031-900-2000, 민원 대표번호
CITIZEN = "+821012345678"
VIEWS = ("open", "unread", "waiting", "claimed", "closed")


def seoul(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=SEOUL).timestamp()


WEEKDAY = seoul("2026-11-24T10:00:00")  # a Tuesday, office hours: complaint
CHUSEOK_NIGHT = seoul("2026-09-25T23:00:00")  # a holiday night: duty


@pytest.fixture
async def gateway(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    env = {**ENV, "REDIS_URL": redis_url}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    over = Overrides(
        redis_url=redis_url,
        rules_dir=RULES,
        queue_namespace="t-desk",
        alimtalk={"sandbox-alimtalk": SandboxAlimtalk("sandbox-alimtalk")},
        sms={"sandbox-sms": SandboxSms("sandbox-sms")},
    )
    gw = Gateway(load_config(), Collect(), environ=env, overrides=over)
    yield gw
    await gw.stop()


@pytest.fixture
def raw(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def inbound(mid: str, text: str, at: float, *, sender: str = CITIZEN) -> InboundSms:
    return InboundSms(mid, "sandbox-sms", CITY, sender, text, at)


def members(raw: Any, queue: str, view: str) -> set[str]:
    return {m.decode() for m in raw.zrange(desk_key(queue, view), 0, -1)}


def where(raw: Any, queues: tuple[str, ...], tid: str) -> set[tuple[str, str]]:
    """(queue, view) of every index that holds the thread."""
    return {(q, v) for q in queues for v in VIEWS if tid in members(raw, q, v)}


async def test_accept_claim_reply_close_reopen_keep_the_indexes(gateway: Gateway, raw: Any) -> None:
    intake = gateway.intake
    desk = Desk(intake, waiting_s=600)
    first = await intake.accept(inbound("m1", "가로등 고장입니다 햇살로 12번지 앞", WEEKDAY))
    tid, queue = first.thread, first.queue
    assert queue == "complaint"
    assert where(raw, (queue,), tid) == {(queue, "open"), (queue, "unread"), (queue, "waiting")}
    summary = await desk.summary(tid)
    assert summary.unread and summary.waiting and summary.claimed_by is None
    assert summary.citizen != CITIZEN and "5678" in summary.citizen and "1234" not in summary.citizen
    assert summary.preview == "가로등 고장입니다 햇살로 12번지 앞" and summary.count == 1
    assert summary.waiting_since == pytest.approx(WEEKDAY) and summary.rule
    assert (await desk.counts([queue]))[queue] == {"open": 1, "unread": 1, "waiting": 1, "claimed": 0}

    await desk.mark_read(tid, "kim")
    assert not (await desk.summary(tid)).unread
    assert await intake.claim(tid, "kim")
    assert members(raw, queue, "claimed") == {tid}
    mine = await desk.open_threads([queue], view="mine", staff="kim")
    assert [s.thread for s in mine.items] == [tid] and mine.total == 1
    assert (await desk.open_threads([queue], view="mine", staff="lee")).total == 0

    assert await intake.reply(tid, "확인했습니다. 내일 교체하겠습니다.", "kim") == "queued"
    answered = await desk.summary(tid)
    assert not answered.waiting and answered.waiting_since is None and answered.answered_at is not None
    assert tid not in members(raw, queue, "waiting") and tid in members(raw, queue, "open")
    conversation = await desk.conversation(tid)
    outs = [m for m in conversation.messages if m.kind == "out"]
    assert [(m.staff, m.state, m.text) for m in outs] == [("kim", "queued", "확인했습니다. 내일 교체하겠습니다.")]
    assert [m.kind for m in conversation.messages] == ["in", "event", "out"]
    assert conversation.reply_blocked == ""

    with pytest.raises(InboundRejected):
        await desk.close(tid, "kim", "whatever")
    assert await desk.close(tid, "kim", "answered")
    assert not await desk.close(tid, "kim", "answered")  # a double click
    assert where(raw, (queue,), tid) == {(queue, "closed")}
    assert raw.zcard(desk_mine_key(queue, "kim")) == 0
    closed = await desk.open_threads([queue], view="closed")
    assert [(s.thread, s.outcome) for s in closed.items] == [(tid, "answered")]
    assert (await desk.open_threads([queue])).total == 0
    assert (await desk.conversation(tid)).messages[-1].detail.endswith(OUTCOMES["answered"])

    # The citizen writes again: open, unread and waiting again; kim's claim still holds.
    await intake.accept(inbound("m2", "아직 안 고쳐졌어요", WEEKDAY + 86400))
    assert where(raw, (queue,), tid) == {(queue, v) for v in ("open", "unread", "waiting", "claimed")}
    reopened = await desk.summary(tid)
    assert reopened.closed_at is None and reopened.outcome == "" and reopened.waiting_since == WEEKDAY + 86400
    assert (await desk.open_threads([queue], view="mine", staff="kim")).total == 1


async def test_a_thread_that_moves_queue_leaves_the_old_queues_indexes(gateway: Gateway, raw: Any) -> None:
    intake, desk = gateway.intake, Desk(gateway.intake, waiting_s=600)
    first = await intake.accept(inbound("q1", "가로등 고장입니다", WEEKDAY))
    await intake.claim(first.thread, "kim")
    second = await intake.accept(inbound("q2", "가로등 고장입니다", CHUSEOK_NIGHT))
    assert second.thread == first.thread and (first.queue, second.queue) == ("complaint", "duty")
    queues = ("complaint", "duty")
    assert where(raw, queues, first.thread) == {("duty", v) for v in ("open", "unread", "waiting", "claimed")}
    assert raw.zcard(desk_mine_key("complaint", "kim")) == 0
    assert (await desk.open_threads(["duty"], view="mine", staff="kim")).total == 1
    counts = await desk.counts(queues)
    assert counts["complaint"]["open"] == 0 and counts["duty"]["open"] == 1
    # Still waiting since the first unanswered message, whatever queue it is in now.
    assert (await desk.summary(first.thread)).waiting_since == WEEKDAY


async def test_the_purge_removes_threads_from_the_indexes(gateway: Gateway, raw: Any) -> None:
    intake = gateway.intake
    old = await intake.accept(inbound("p1", "가로등 고장입니다", WEEKDAY - 400 * 86400, sender="+821011112222"))
    kept = await intake.accept(inbound("p2", "가로등 고장입니다", WEEKDAY, sender="+821033334444"))
    other = await intake.accept(inbound("p3", "가로등 고장입니다", WEEKDAY - 400 * 86400, sender="+821055556666"))
    closed = await intake.accept(inbound("p4", "가로등 고장입니다", WEEKDAY - 400 * 86400, sender="+821077778888"))
    await intake.close(closed.thread, "kim")  # closed just now: recent activity, kept
    assert await purge_threads(intake.client, WEEKDAY - 200 * 86400, dry_run=True) == 2
    assert (await Desk(intake, waiting_s=60).counts(["complaint"]))["complaint"]["open"] == 3  # (dry run)
    assert await purge_threads(intake.client, WEEKDAY - 200 * 86400, dry_run=False) == 2
    for tid in (old.thread, other.thread):
        assert where(raw, ("complaint",), tid) == set() and not raw.exists(thread_key(tid))
    assert (await Desk(intake, waiting_s=60).counts(["complaint"]))["complaint"]["open"] == 1
    assert where(raw, ("complaint",), closed.thread) == {("complaint", "closed")}
    assert where(raw, ("complaint",), kept.thread) == {("complaint", v) for v in ("open", "unread", "waiting")}


async def test_handover_release_and_force(gateway: Gateway, raw: Any) -> None:
    intake, desk = gateway.intake, Desk(gateway.intake, waiting_s=600)
    tid = (await intake.accept(inbound("h1", "가로등 고장입니다", WEEKDAY))).thread
    with pytest.raises(ClaimedByOther):
        await desk.handover(tid, "kim", "lee")  # nobody holds it: kim is not the holder
    await intake.claim(tid, "kim")
    with pytest.raises(ClaimedByOther) as refused:
        await desk.handover(tid, "park", "lee")
    assert refused.value.holder == "kim"
    await desk.handover(tid, "kim", "lee")
    assert (await desk.summary(tid)).claimed_by == "lee"
    assert (await desk.open_threads(["complaint"], view="mine", staff="kim")).total == 0
    assert (await desk.open_threads(["complaint"], view="mine", staff="lee")).total == 1
    with pytest.raises(ClaimedByOther):
        await intake.claim(tid, "kim")
    await desk.handover(tid, "admin", "choi", force=True)  # an admin reassigns
    assert (await desk.summary(tid)).claimed_by == "choi"
    with pytest.raises(ClaimedByOther):
        await desk.release(tid, "lee")
    await desk.release(tid, "choi")
    assert (await desk.summary(tid)).claimed_by is None and members(raw, "complaint", "claimed") == set()
    events = [m.detail for m in (await desk.conversation(tid)).messages if m.kind == "event"]
    assert events == [
        "kim 담당자가 맡음",
        "kim 담당자가 lee 담당자에게 인계",
        "admin 담당자가 choi 담당자에게 인계",
        "choi 담당자가 맡기를 해제",
    ]
    with pytest.raises(ThreadNotFound):
        await desk.handover("tnothere", "kim", "lee")
    with pytest.raises(ThreadNotFound):
        await desk.summary("tnothere")


async def test_notes_are_private_and_sealed_at_rest(gateway: Gateway, raw: Any) -> None:
    intake, desk = gateway.intake, Desk(gateway.intake, waiting_s=600)
    tid = (await intake.accept(inbound("n1", "가로등 고장입니다", WEEKDAY))).thread
    secret = "민원인이 지난주에도 같은 내용으로 전화함 (도로과 확인 필요)"
    entry = await desk.note(tid, "kim", secret)
    with pytest.raises(InboundRejected):
        await desk.note(tid, "kim", "   ")
    with pytest.raises(InboundRejected):
        await desk.note(tid, "kim", "가" * 2001)
    stored = raw.xrange(thread_messages_key(tid))
    dump = b"".join(v for _, fields in stored for v in fields.values()).decode()
    assert "지난주" not in dump and "도로과" not in dump and "가로등" not in dump
    assert any(e.decode() == entry and fields[b"dir"] == b"note" for e, fields in stored)
    notes = [m for m in (await desk.conversation(tid)).messages if m.kind == "note"]
    assert [(m.id, m.text, m.staff) for m in notes] == [(entry, secret, "kim")]
    # The staff API's thread (the exchange with the citizen) does not show notes or events.
    thread = await intake.thread(tid)
    assert thread is not None and [m["dir"] for m in thread["messages"]] == ["in"]


async def test_tags_are_validated_and_bounded(gateway: Gateway) -> None:
    intake, desk = gateway.intake, Desk(gateway.intake, waiting_s=600)
    tid = (await intake.accept(inbound("g1", "가로등 고장입니다", WEEKDAY))).thread
    routing_tags = (await desk.summary(tid)).tags
    assert await desk.set_tags(tid, "kim", add=["재민원", " 긴급 "]) == ("재민원", "긴급")
    for bad in ("", "   ", "a,b", "가" * 21):
        with pytest.raises(InboundRejected):
            await desk.set_tags(tid, "kim", add=[bad])
    assert await desk.set_tags(tid, "kim", remove=["재민원"]) == ("긴급",)
    assert await desk.set_tags(tid, "kim", add=[f"t{i}" for i in range(9)]) == ("긴급", *(f"t{i}" for i in range(9)))
    with pytest.raises(InboundRejected):
        await desk.set_tags(tid, "kim", add=["열한번째"])
    summary = await desk.summary(tid)
    assert summary.tags == (*routing_tags, "긴급", *(f"t{i}" for i in range(9)))


def _accept_args(i: int, at: float, queue: str) -> tuple[list[str], list[Any]]:
    """The accept step's keys and arguments for a synthetic citizen's first message (no job)."""
    tid = f"tbulk{i:06d}"
    keys = [
        inbound_key("bulk", f"m{i}"),
        thread_key(tid),
        thread_messages_key(tid),
        inbox_key(queue),
        NONE_KEY,
        NONE_KEY,
        contact_key(f"h{i}"),
        thread_claim_key(tid),
    ]
    args = [
        f"{tid}|{queue}",
        3600,
        CITY,
        "",
        f"h{i}",
        queue,
        f"{at:.3f}",
        "",
        f"m{i}",
        "bulk",
        tid,
        "normal",
        "bulk",
        "",
        "",
        b"",
        b"",
        DESK_PREFIX,
        CONSOLE_EVENTS,
    ]
    return keys, args


async def test_pages_over_ten_thousand_threads(gateway: Gateway, raw: Any) -> None:
    desk = Desk(gateway.intake, waiting_s=3600)
    now = time.time()
    script = raw.register_script(intake_module._ACCEPT)
    pipe = raw.pipeline(transaction=False)
    n = 10_000
    for i in range(n):
        # thread i's message came i seconds after the first: the newest is the last
        keys, args = _accept_args(i, now - 2 * n + i, "complaint")
        script(keys=keys, args=args, client=pipe)
    results = pipe.execute()
    assert all(int(r[0]) == 1 for r in results)
    page = await desk.open_threads(["complaint"], count=50)
    assert page.total == n and [s.thread for s in page.items] == [f"tbulk{i:06d}" for i in range(n - 1, n - 51, -1)]
    second = await desk.open_threads(["complaint"], offset=50, count=50)
    assert second.items[0].thread == f"tbulk{n - 51:06d}"
    waiting = await desk.open_threads(["complaint"], view="waiting", count=20)
    # all waited longer than an hour: the longest waiting first
    assert waiting.total == n and [s.thread for s in waiting.items] == [f"tbulk{i:06d}" for i in range(20)]
    assert all(s.waiting for s in waiting.items)
    await desk.mark_read("tbulk009999", "kim")
    unread = await desk.open_threads(["complaint"], view="unread", count=1)
    assert unread.total == n - 1 and unread.items[0].thread == "tbulk009998"
    await gateway.intake.claim("tbulk000005", "kim")
    assert await desk.counts(["complaint", "duty"]) == {
        "complaint": {"open": n, "unread": n - 1, "waiting": n, "claimed": 1},
        "duty": {"open": 0, "unread": 0, "waiting": 0, "claimed": 0},
    }
    # Two queues merged: newest first across both.
    keys, args = _accept_args(n, now, "duty")
    script(keys=keys, args=args)
    both = await desk.open_threads(["complaint", "duty"], count=3)
    assert both.total == n + 1
    assert [s.thread for s in both.items] == [f"tbulk{n:06d}", "tbulk009999", "tbulk009998"]
    assert [s.queue for s in both.items] == ["duty", "complaint", "complaint"]


async def test_waiting_needs_longer_than_the_threshold(gateway: Gateway) -> None:
    intake = gateway.intake
    accepted = await intake.accept(inbound("w1", "가로등 고장입니다", time.time()))
    tid, queue = accepted.thread, accepted.queue  # (duty or complaint: depends on the hour)
    patient = Desk(intake, waiting_s=3600)
    assert not (await patient.summary(tid)).waiting
    assert (await patient.open_threads([queue], view="waiting")).total == 0
    assert (await patient.counts([queue]))[queue]["waiting"] == 0
    eager = Desk(intake, waiting_s=0)
    assert (await eager.summary(tid)).waiting
    assert (await eager.open_threads([queue], view="waiting")).total == 1


async def test_reveal_and_opt_out(gateway: Gateway) -> None:
    intake, desk = gateway.intake, Desk(gateway.intake, waiting_s=600)
    tid = (await intake.accept(inbound("r1", "가로등 고장입니다", WEEKDAY))).thread
    assert await desk.reveal(tid) == CITIZEN
    assert not await desk.opted_out(tid)
    await intake.accept(inbound("r2", "수신거부", WEEKDAY + 60))
    assert await desk.opted_out(tid)
    assert (await desk.conversation(tid)).reply_blocked == "opted_out"
    landline = (await intake.accept(inbound("r3", "가로등 고장입니다", WEEKDAY, sender="+8231900111"))).thread
    assert (await desk.conversation(landline)).reply_blocked == "not_mobile"


async def test_every_step_publishes_a_live_event(gateway: Gateway, redis_url: str) -> None:
    from gateway.inbox.desk import EventHub

    hub = EventHub(redis_url)
    await hub.start()
    try:
        assert await hub.wait_connected(5)
        sub = hub.subscribe()
        intake, desk = gateway.intake, Desk(gateway.intake, waiting_s=600)
        tid = (await intake.accept(inbound("e1", "가로등 고장입니다", WEEKDAY))).thread
        await intake.accept(inbound("e1", "가로등 고장입니다", WEEKDAY))  # a duplicate: no event
        await desk.mark_read(tid, "kim")
        await intake.claim(tid, "kim")
        await intake.claim(tid, "kim")  # a renewal: no event
        await intake.reply(tid, "확인했습니다", "kim")
        await desk.note(tid, "kim", "메모")
        await desk.set_tags(tid, "kim", add=["긴급"])
        await desk.handover(tid, "kim", "lee")
        await desk.release(tid, "lee")
        await desk.close(tid, "lee", "answered")
        kinds = []
        for _ in range(9):
            event = await asyncio.wait_for(anext(sub), 5)
            assert (event["q"], event["t"]) == ("complaint", tid) and event["at"] > 0
            kinds.append(event["k"])
        assert kinds == ["message", "read", "claim", "reply", "note", "tag", "handover", "release", "close"]
        assert sub._queue.empty()
    finally:
        await hub.stop()


async def test_reindex_indexes_threads_stored_before_the_console(gateway: Gateway, raw: Any) -> None:
    intake, desk = gateway.intake, Desk(gateway.intake, waiting_s=600)
    waiting = (await intake.accept(inbound("x1", "가로등 고장입니다", WEEKDAY))).thread
    closed = (await intake.accept(inbound("x2", "가로등 고장입니다", WEEKDAY + 5, sender="+821099990000"))).thread
    await intake.close(closed, "kim")
    # As an older release left them: no indexes, no waiting_since.
    for key in raw.keys(DESK_PREFIX + "*"):
        raw.delete(key)
    raw.hdel(thread_key(waiting), "waiting_since")
    assert await desk.reindex(batch=1) == 2
    assert where(raw, ("complaint",), waiting) == {("complaint", "open"), ("complaint", "waiting")}
    assert where(raw, ("complaint",), closed) == {("complaint", "closed")}
    assert await desk.reindex() == 2  # idempotent
    assert (await desk.counts(["complaint"]))["complaint"] == {"open": 1, "unread": 0, "waiting": 1, "claimed": 0}
