"""Fault suite (issue #6): under a steady load of recorded calls (broadcast by the built-in AMI
server through a TCP proxy) and signed citizens' SMS, kill -9 and restart Redis and the queue
worker, cut and silence the AMI link, make the providers slow, failing and talking garbage.

Afterwards (tests/support/fault_harness.py): every SMS that got a 2xx is in its queue exactly once;
every call was lettered at most once and every logged lettering reached the carrier; every
queued post-call content was delivered to NHN exactly once, or is a dead letter, or is still
held by the broker (retry backoff), or was refused because its citizen opted out; nothing
reached an opted-out citizen but the confirmation of the opt-out.

`pytest -m fault` runs the suite alone. Gateways, workers and redis-server are subprocesses
(a crash is a SIGKILL of a real process); each test has its own Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession

from gateway.domain.models import LetteringResult
from tests.support.fault_harness import (
    INVALID_CITIZEN,
    MAIN_CITIZEN,
    GatewayProc,
    Harness,
    Ledger,
    WebhookLoad,
    check_inbound,
    check_lettering,
    check_messages,
    harness,
)

pytestmark = [pytest.mark.fault, pytest.mark.slow]


async def under_load(
    h: Harness,
    targets: list[GatewayProc],
    scenario: Callable[[], Awaitable[None]],
    *,
    rate_per_s: float = 10.0,
    optout_senders: tuple[int, ...] = (),
) -> WebhookLoad:
    """Run `scenario` while citizens' SMS are posted; stop the load and let the queues settle."""
    load = WebhookLoad([g.base_url for g in targets], rate_per_s=rate_per_s, optout_senders=optout_senders)
    stop = asyncio.Event()
    task = asyncio.ensure_future(load.run(stop))
    try:
        await scenario()
    finally:
        stop.set()
        await task
    await h.settle(timeout=30)
    return load


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def calls_lettered_since(h: Harness, since: float, count: int = 1, timeout: float = 20.0) -> None:
    """Until `count` calls dialed after `since` (time.monotonic) reached the carrier."""
    deadline = time.monotonic() + timeout
    while True:
        keys = {str((r.body or {}).get("callKey")) for r in h.carrier.requests}
        fresh = [c for c, at in h.dials.items() if at > since and c in keys]
        if len(fresh) >= count:
            return
        assert time.monotonic() < deadline, f"no call lettered since the fault ended ({len(fresh)}/{count})"
        await asyncio.sleep(0.1)


async def test_redis_sigkill_and_restart_under_load(tmp_path: Path) -> None:
    """Redis dies twice (once staying down 2 s). Webhooks get 503 meanwhile and are retried;
    lettering fails closed (skipped: store_unavailable); after the restart (AOF) the opt-out,
    the inboxes and the queued jobs are still there and everything resumes."""
    async with harness(tmp_path) as h:
        gw = await h.add_gateway()
        await h.opt_out(INVALID_CITIZEN)
        await h.add_worker()
        await gw.wait_ready()

        async def scenario() -> None:
            await asyncio.sleep(3)
            await h.restart_redis(down_s=2.0)
            await asyncio.sleep(4)
            await h.restart_redis()
            await gw.wait_ready(timeout=20)
            await calls_lettered_since(h, time.monotonic())

        load = await under_load(h, [gw], scenario, optout_senders=(7,))
        ledger = Ledger()
        check_inbound(h, load)
        check_lettering(h, ledger, opted_out={INVALID_CITIZEN: 0.0})
        check_messages(h, ledger, optouts=load.optouts)
        statuses = load.statuses()
        print(f"\nredis: posts {dict(statuses)}, accepted {len(load.accepted)}; {ledger.summary()}")
        assert statuses[503] + sum(v for k, v in statuses.items() if isinstance(k, str)) > 0, (
            "the outage was never seen by the webhooks"
        )
        assert all(w.running for w in h.workers) and gw.running
        assert not ledger.sms_twice


async def test_worker_sigkill_mid_job_and_opt_out_during_load(tmp_path: Path) -> None:
    """A worker is SIGKILLed while NHN is answering slowly; a new one takes over its jobs (after
    the dead one's heartbeat expired). Then the main citizen opts out by the CLI mid-load: from
    then on neither lettering nor messages reach them."""
    async with harness(tmp_path) as h:
        gw = await h.add_gateway()
        await h.opt_out(INVALID_CITIZEN)
        first = await h.add_worker()
        await gw.wait_ready()
        optouts: dict[str, float] = {}

        async def scenario() -> None:
            await asyncio.sleep(3)
            h.nhn.slow_s = 1.0  # within the adapters' 2 s deadline: slow, not failing
            h.nhn.default = "slow"
            await until(lambda: any(r.code == -1 for r in h.nhn.requests[-5:]))  # a slow answer is running
            await asyncio.sleep(0.3)
            await first.kill()
            h.nhn.default = "accepted"
            await asyncio.sleep(1)
            await h.add_worker()
            await asyncio.sleep(3)
            optouts[MAIN_CITIZEN] = await h.opt_out(MAIN_CITIZEN)
            await asyncio.sleep(4)

        load = await under_load(h, [gw], scenario, optout_senders=(5, 9))
        await h.settle(timeout=20)
        ledger = Ledger()
        check_inbound(h, load)
        check_lettering(h, ledger, opted_out={INVALID_CITIZEN: 0.0, **optouts})
        check_messages(h, ledger, optouts={**load.optouts, **optouts})
        print(f"\nworker: accepted {len(load.accepted)}; {ledger.summary()}")
        assert first.starts == 1 and not first.running and h.workers[1].running
        assert not ledger.sms_twice, f"SMS sent twice: {ledger.sms_twice}"


async def test_ami_cut_refused_and_silent(tmp_path: Path) -> None:
    """The AMI link is reset, then refused for a while, then goes silent (a hung PBX that
    still accepts TCP): the gateway notices each (ping without pong), reconnects with backoff,
    resyncs, and letters the calls dialed after the link is back, never one twice."""
    async with harness(tmp_path) as h:
        gw = await h.add_gateway()
        await h.opt_out(INVALID_CITIZEN)
        await h.add_worker()
        await gw.wait_ready()
        proxy = gw.proxy

        blind: list[tuple[float, float]] = []  # while the link was down, calls may go unseen

        async def reconnected(after: int, since: float) -> None:
            await gw.wait_ready(timeout=20)
            assert proxy.stats.accepted > after
            blind.append((since, time.monotonic() + 0.5))

        async def scenario() -> None:
            await asyncio.sleep(2)
            accepted, since = proxy.stats.accepted, time.monotonic()
            assert proxy.cut() >= 1
            await reconnected(accepted, since)
            await calls_lettered_since(h, time.monotonic())
            accepted, since = proxy.stats.accepted, time.monotonic()
            await proxy.refuse()
            await asyncio.sleep(2)
            await proxy.accept()
            await reconnected(accepted, since)
            accepted, since = proxy.stats.accepted, time.monotonic()
            proxy.silence()
            async with ClientSession() as session:  # /health turns 503 once the ping goes unanswered
                deadline = time.monotonic() + 10
                while (health := await gw.health(session)) and health.get("ready"):
                    assert time.monotonic() < deadline, "a silent PBX was never noticed"
                    await asyncio.sleep(0.1)
            await asyncio.sleep(1)
            proxy.resume()
            await reconnected(accepted, since)
            await calls_lettered_since(h, time.monotonic())

        load = await under_load(h, [gw], scenario)
        ledger = Ledger()
        check_inbound(h, load)
        check_lettering(h, ledger, opted_out={INVALID_CITIZEN: 0.0}, every_call_decided=True, blind=blind)
        check_messages(h, ledger)
        unseen = [c for c, at in h.dials.items() if any(a <= at <= b for a, b in blind)]
        print(
            f"\nami: {len(unseen)} calls dialed while the link was down; proxy {proxy.stats.accepted}"
            f" connections, {proxy.stats.cut} cut, {proxy.stats.dropped} bytes"
            f" dropped while silent; accepted {len(load.accepted)}; {ledger.summary()}"
        )
        assert not ledger.sms_twice


async def test_providers_slow_failing_and_garbage(tmp_path: Path) -> None:
    """NHN answers too slowly (beyond the adapters' deadline), then 503, then an HTML page;
    the carrier answers garbage and too slowly for a while. Lettering reports a temporary error
    (never a second request for the same call); queued messages are retried, dead-lettered or
    still waiting for their next try: none is lost, none delivered twice."""
    async with harness(tmp_path) as h:
        gw = await h.add_gateway()
        await h.opt_out(INVALID_CITIZEN)
        await h.add_worker()
        await gw.wait_ready()

        async def scenario() -> None:
            await asyncio.sleep(2)
            h.carrier.default = "garbage"
            h.nhn.default = "slow"
            await asyncio.sleep(3)
            h.carrier.default = "slow"
            h.nhn.default = "http503"
            await asyncio.sleep(3)
            h.nhn.default = "garbage"
            await asyncio.sleep(3)
            h.carrier.default = LetteringResult.DELIVERED
            h.nhn.default = "accepted"
            await calls_lettered_since(h, time.monotonic())
            await asyncio.sleep(4)

        load = await under_load(h, [gw], scenario)
        ledger = Ledger()
        check_inbound(h, load)
        check_lettering(h, ledger, opted_out={INVALID_CITIZEN: 0.0})
        check_messages(h, ledger)
        results = {str(d.get("result")) for d in h.decisions("lettering")}
        assert "temporary_error" in results and "delivered" in results, results
        sent = {str(d.get("result")) for d in h.decisions("sent")}
        assert "temporary_error" in sent, sent
        print(
            f"\nproviders: accepted {len(load.accepted)}; lettering results {sorted(results)};"
            f" NHN requests {len(h.nhn.requests)}; {ledger.summary()}"
        )
        assert not ledger.sms_twice, f"SMS sent twice: {ledger.sms_twice}"
