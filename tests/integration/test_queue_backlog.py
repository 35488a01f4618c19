"""Delayed jobs (quiet hours, retries, open circuits) are visible wherever they wait.

dramatiq's Redis broker keeps a delayed job in `<queue>.DQ` (ids) and `<queue>.DQ.msgs` (data,
`options.eta` in ms) until a worker fetches it: from then on the id sits in that worker's acks
set `__acks__.<worker>.<queue>.DQ` and the job in its memory until the eta, so `LLEN <queue>.DQ`
reads 0 while the night's post-call content waits for 08:00. /metrics and /health (gateway's
and worker's) count them per queue and in total, held or not, with their ages, etas and how
many will pass their queue's age limit before they can run.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.app.gateway import Overrides
from gateway.app.worker import build_worker
from gateway.app.workerhttp import WorkerHttp
from gateway.domain.models import AlimtalkRequest, SmsRequest
from gateway.infra.config import load_config
from gateway.infra.crypto import Sealer
from gateway.infra.wire import Wire
from gateway.messaging.backlog import queue_families
from gateway.messaging.jobs import QUEUES, Enqueuer, actor_name, actor_options, make_broker
from gateway.messaging.workers import start_worker, stop_worker
from gateway.outbox.guard import QueuedMessage

KEYS = {"GATEWAY_NUMBER_KEY": "test-number-key-0123456789", "GATEWAY_DATA_KEY": Sealer.new_key_spec()}
HOUR_MS = 3_600_000


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Iterator[dict[str, str]]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    yield dict(os.environ)


def _message(key: str, queue: str) -> QueuedMessage:
    to = "+821012345678"
    if queue == "sms":
        return QueuedMessage(
            key, "pbx", key, "sms_test", to, "sandbox-sms", sms=SmsRequest(key, to, "+82319002000", "안내", "", "sms")
        )
    return QueuedMessage(
        key,
        "pbx",
        key,
        queue,
        to,
        "sandbox-alimtalk",
        alimtalk=AlimtalkRequest(key, to, "HB_POSTCALL_01", (("title", "안내"),)),
    )


def _broker_enqueue(broker: Any, queue: str, delay_ms: int, *, enqueued_ago_ms: int = 0) -> None:
    """dramatiq's own enqueue with a delay (what its Retries middleware does: the message keeps
    its first `message_timestamp`, from which the age limit counts)."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue,
        actor_name=actor_name(queue),
        args=({"v": 1, "key": "x"},),
        kwargs={},
        options=actor_options(queue),
        message_timestamp=int(time.time() * 1000) - enqueued_ago_ms,
    )
    broker.enqueue(message, delay=delay_ms)


def _scrape(broker: Any) -> dict[str, float]:
    class One:
        def collect(self) -> Any:
            return queue_families(broker)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())
    text = generate_latest(registry).decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


async def _fill(redis_url: str, env: dict[str, str], namespace: str) -> Any:
    """Seven post-call jobs deferred to the morning (each producer path), two call notices,
    one SMS ready now, one SMS delayed by a retry."""
    config = load_config()
    broker = make_broker(redis_url, namespace=namespace)
    sealer = config.sealer(env)
    wire = Enqueuer(broker, sealer, wire=Wire.from_url(redis_url, timeout_s=2.0))  # the gateway's path
    pool = Enqueuer(broker, sealer)  # the worker's path (executor)
    try:
        for i in range(4):
            assert await wire.enqueue("postcall", _message(f"night-{i}", "postcall"), delay_s=10 * 3600 + i)
        for i in range(2):
            assert await pool.enqueue("postcall", _message(f"pool-{i}", "postcall"), delay_s=9 * 3600)
        _broker_enqueue(broker, "postcall", 8 * HOUR_MS)
        for i in range(2):
            assert await wire.enqueue("call_notice", _message(f"notice-{i}", "call_notice"), delay_s=60)
        assert await wire.enqueue("sms", _message("sms-now", "sms"))
        _broker_enqueue(broker, "sms", 5 * 60_000, enqueued_ago_ms=60_000)
    finally:
        await wire.aclose(1.0)
        pool.close()
    return broker


def _expect_counts(lines: dict[str, float], *, held: dict[str, int]) -> None:
    delayed = {"postcall": 7, "call_notice": 2, "sms": 1, "inbound": 0}
    for queue, count in delayed.items():
        assert lines[f'gateway_queue_delayed{{queue="{queue}"}}'] == count, queue
        assert lines[f'gateway_queue_delayed_held{{queue="{queue}"}}'] == held.get(queue, 0), queue
        assert lines[f'gateway_queue_delayed_expiring{{queue="{queue}"}}'] == 0, queue
        assert lines[f'gateway_queue_max_age_seconds{{queue="{queue}"}}'] == QUEUES[queue].max_age_ms / 1000
    assert lines['gateway_queue_depth{queue="postcall"}'] == 7  # delayed count as waiting, held or not
    assert lines['gateway_queue_depth{queue="sms"}'] >= 1
    now = time.time()
    last = lines['gateway_queue_delayed_last_eta_timestamp_seconds{queue="postcall"}'] - now
    first = lines['gateway_queue_delayed_next_eta_timestamp_seconds{queue="postcall"}'] - now
    assert 9.5 * 3600 < last <= 10 * 3600 + 4 and 7.5 * 3600 < first <= 8 * 3600
    assert 0 <= lines['gateway_queue_delayed_oldest_age_seconds{queue="postcall"}'] < 120
    assert 60 <= lines['gateway_queue_delayed_oldest_age_seconds{queue="sms"}'] < 180  # since its first enqueue
    assert 'gateway_queue_delayed_oldest_age_seconds{queue="inbound"}' not in lines  # none delayed: no age


async def test_delayed_jobs_count_whether_redis_or_a_worker_holds_them(env: dict[str, str], redis_url: str) -> None:
    broker = await _fill(redis_url, env, "t-backlog")
    lines = _scrape(broker)
    _expect_counts(lines, held={})

    # A real worker takes the delayed jobs into its memory: `<queue>.DQ` is empty now.
    config = load_config()
    wbroker, runtime = build_worker(
        config,
        environ=env,
        redis_url=redis_url,
        overrides=Overrides(
            alimtalk={"sandbox-alimtalk": SandboxAlimtalk("sandbox-alimtalk")},
            sms={"sandbox-sms": SandboxSms("sandbox-sms")},
            queue_namespace="t-backlog",
        ),
    )
    worker = start_worker(wbroker, threads=2, idle_ms=50)
    http = WorkerHttp(wbroker, runtime, worker, "127.0.0.1", 0)
    host, port = http.start()
    try:
        client: Any = broker.client
        deadline = time.monotonic() + 20
        while any(client.llen(f"t-backlog:{q}.DQ") for q in QUEUES) or client.llen("t-backlog:sms"):
            assert time.monotonic() < deadline, "the worker did not take the jobs"
            await asyncio.sleep(0.05)
        lines = _scrape(broker)
        _expect_counts(lines, held={"postcall": 7, "call_notice": 2, "sms": 1})

        # The worker's own /metrics and /health say the same (over its real HTTP listener).
        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as resp:
                    return int(resp.status), resp.read().decode()
            except urllib.error.HTTPError as exc:
                return int(exc.code), exc.read().decode()

        _, text = await asyncio.to_thread(get, "/metrics")
        assert 'gateway_queue_delayed_held{queue="postcall"} 7.0' in text
        _, body = await asyncio.to_thread(get, "/health")
        health = json.loads(body)
        backlog = health["queues"]["backlog"]
        assert backlog["postcall"]["delayed"] == 7 and backlog["postcall"]["held"] == 7
        assert backlog["total"] == {"ready": backlog["total"]["ready"], "delayed": 10, "held": 10, "expiring": 0}
        assert health["holding"]["delayed"] == 10  # in this worker's memory, waiting for their eta
    finally:
        http.stop()
        await asyncio.to_thread(stop_worker, worker)
    # Handed back at the stop: still counted, no longer held.
    lines = _scrape(broker)
    _expect_counts(lines, held={})


@pytest.mark.parametrize(
    ("queue", "delay_ms", "enqueued_ago_ms", "expiring"),
    [
        ("call_notice", 31 * 60_000, 0, 1),  # an open circuit deferred it past its 30 minutes
        ("call_notice", 29 * 60_000, 0, 0),
        ("call_notice", 10 * 60_000, 25 * 60_000, 1),  # a retry: the age counts from the first enqueue
        ("postcall", 11 * HOUR_MS, 0, 0),  # a night's deferral fits in 36 hours
        ("postcall", 2 * HOUR_MS, 35 * HOUR_MS, 1),
        ("sms", 7 * HOUR_MS, 0, 1),
        ("inbound", 23 * HOUR_MS, 0, 0),
    ],
)
def test_delayed_jobs_that_will_outlive_their_age_limit_are_counted(
    redis_url: str, queue: str, delay_ms: int, enqueued_ago_ms: int, expiring: int
) -> None:
    broker = make_broker(redis_url, namespace="t-expiring")
    _broker_enqueue(broker, queue, delay_ms, enqueued_ago_ms=enqueued_ago_ms)
    _broker_enqueue(broker, queue, 60_000)  # a harmless neighbour
    lines = _scrape(broker)
    assert lines[f'gateway_queue_delayed{{queue="{queue}"}}'] == 2
    assert lines[f'gateway_queue_delayed_expiring{{queue="{queue}"}}'] == expiring
    assert lines[f'gateway_queue_delayed_oldest_age_seconds{{queue="{queue}"}}'] >= enqueued_ago_ms / 1000


def test_an_unreadable_delayed_job_is_counted_not_fatal(redis_url: str) -> None:
    """Garbage in `<queue>.DQ.msgs` (another encoder, a manual edit) still counts as delayed;
    the scrape answers."""
    broker = make_broker(redis_url, namespace="t-garbage")
    client: Any = broker.client
    client.hset("t-garbage:postcall.DQ.msgs", "bad", b"\xc1 not msgpack")
    client.rpush("t-garbage:postcall.DQ", "bad")
    _broker_enqueue(broker, "postcall", HOUR_MS)
    lines = _scrape(broker)
    assert lines["gateway_redis_up"] == 1
    assert lines['gateway_queue_delayed{queue="postcall"}'] == 2
    assert lines['gateway_queue_delayed_expiring{queue="postcall"}'] == 0


async def test_gateway_health_and_metrics_show_the_backlog(redis_url: str) -> None:
    """The gateway's own /health (`queues.backlog`) and /metrics, held jobs included."""
    from collections.abc import Mapping

    from adapters.sandbox import SandboxCarrier
    from gateway.app.gateway import Gateway
    from gateway.app.replay import FAST_RECONNECT, demo_environ
    from gateway.infra.metrics import exposition
    from gateway.sim.amiserver import AmiServer, Transcript
    from tests.conftest import RULES

    class Sink:
        def decision(self, record: Mapping[str, Any]) -> None:
            pass

    config = load_config()
    environ = demo_environ(config, os.environ)
    broker = make_broker(redis_url, namespace=config.queue_namespace)
    for _ in range(3):
        _broker_enqueue(broker, "postcall", 10 * HOUR_MS)
    _broker_enqueue(broker, "call_notice", 40 * 60_000)  # past its 30 minutes
    # A worker (gone or alive) holds two of the post-call jobs: what dispatch.lua's "fetch" does.
    client: Any = broker.client
    worker_id = "a-worker"
    client.zadd(f"{broker.namespace}:__heartbeats__", {worker_id: int(time.time() * 1000)})
    for _ in range(2):
        message_id = client.lpop(f"{broker.namespace}:postcall.DQ")
        client.sadd(f"{broker.namespace}:__acks__.{worker_id}.postcall.DQ", message_id)
    server = AmiServer([Transcript.named("answered_mobile")], secret=environ["GATEWAY_AMI_SECRET"], speed="fast")
    host, port = await server.start()
    gw = Gateway(
        config,
        Sink(),
        environ=environ,
        overrides=Overrides(
            redis_url=redis_url,
            rules_dir=RULES,
            pbx_address=(host, port),
            carriers={"sandbox": SandboxCarrier()},
            ami=dict(FAST_RECONNECT),
        ),
    )
    await gw.start()
    try:
        health = await gw.health()
        text = (await asyncio.to_thread(exposition, gw.registry)).decode()
    finally:
        await gw.stop()
        await server.stop()
    backlog = health["queues"]["backlog"]
    assert backlog["postcall"]["delayed"] == 3 and backlog["postcall"]["held"] == 2
    assert backlog["call_notice"]["expiring"] == 1
    assert backlog["total"]["delayed"] == 4 and backlog["total"]["held"] == 2 and backlog["total"]["expiring"] == 1
    assert 9 * 3600 < backlog["postcall"]["next_eta_in_s"] <= 10 * 3600
    assert 'gateway_queue_depth{queue="postcall"} 3.0' in text
    assert 'gateway_queue_delayed_held{queue="postcall"} 2.0' in text
    assert 'gateway_queue_delayed_expiring{queue="call_notice"} 1.0' in text


def test_summary_of_delayed_jobs() -> None:
    """Pure: counts, extremes, and the age-limit boundary as dramatiq's AgeLimit draws it
    (`now - message_timestamp >= max_age` refuses; a job runs no earlier than its eta)."""
    from gateway.domain.backlog import DelayedJob, DelayedSummary, summarize

    assert summarize([]) == DelayedSummary()
    jobs = [
        DelayedJob(1_000, 5_000, 4_000),  # due exactly at its limit: refused
        DelayedJob(2_000, 5_999, 4_000),  # due 1 ms before it: runs
        DelayedJob(500, 9_000, 10_000),
    ]
    assert [j.expiring for j in jobs] == [True, False, False]
    assert summarize(jobs) == DelayedSummary(
        readable=3, expiring=1, oldest_enqueued_ms=500, next_eta_ms=5_000, last_eta_ms=9_000
    )


def test_a_jobs_own_max_age_is_the_one_that_counts(redis_url: str) -> None:
    """AgeLimit reads the message's `max_age` option before the actor's (the queue's)."""
    broker = make_broker(redis_url, namespace="t-own-age")
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name="postcall",
        actor_name=actor_name("postcall"),
        args=({},),
        kwargs={},
        options={**actor_options("postcall"), "max_age": 60_000},
    )
    broker.enqueue(message, delay=120_000)
    lines = _scrape(broker)
    assert lines['gateway_queue_delayed_expiring{queue="postcall"}'] == 1
