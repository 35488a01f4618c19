"""Durable messaging end to end: the gateway admits and queues, the worker delivers to a fake
NHN Cloud on loopback; faults (worker SIGKILL, Redis killed and restarted, provider down) lose
nothing and never deliver twice; delivery reports only move forward."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from aiohttp import ClientSession

from adapters.nhn_alimtalk import NhnAlimtalk
from adapters.nhn_sms import NhnSms
from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.app.gateway import Overrides
from gateway.app.httpapps import make_app
from gateway.app.replay import replay
from gateway.app.worker import build_worker
from gateway.domain.models import AlimtalkRequest, LetteringResult, SendOutcome, SendResult, SmsRequest
from gateway.infra.config import load_config
from gateway.infra.crypto import Sealer
from gateway.infra.http import HttpServer
from gateway.infra.wire import Wire
from gateway.messaging.jobs import Enqueuer, actor_name, dead_letters, encode_message, make_broker, redrive
from gateway.messaging.reports import ReportIntake, sandbox_parser
from gateway.messaging.workers import start_worker, wait_idle
from gateway.outbox.guard import QueuedMessage
from gateway.outbox.store import RedisOutboxStore, connect
from gateway.sim.fake_nhn import FakeNhnServer
from gateway.sim.redisproc import RedisProcess
from tests.conftest import ROOT, RULES
from tests.support.transcripts import TRANSCRIPTS

NUMBER = "+821012345678"
KEYS = {"GATEWAY_NUMBER_KEY": "test-number-key-0123456789", "GATEWAY_DATA_KEY": Sealer.new_key_spec()}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Iterator[dict[str, str]]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    yield dict(os.environ)


async def _replay(files: list[str], **kwargs: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    rc = await replay(
        [TRANSCRIPTS / f"{f}.ami" for f in files],
        load_config(),
        out=out,
        rules_dir=kwargs.pop("rules_dir", RULES),
        **kwargs,
    )
    assert rc == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _events(got: list[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in got if e["event"] == kind and all(e.get(k) == v for k, v in match.items())]


async def test_android_gets_lettering_then_postcall(env: dict[str, str]) -> None:
    got = await _replay(["answered_mobile"])
    assert [e["result"] for e in _events(got, "lettering")] == ["delivered"]
    assert [e["result"] for e in _events(got, "postcall")] == ["queued"]
    (sent,) = _events(got, "sent", action="postcall")
    assert sent["channel"] == "alimtalk" and sent["result"] == "accepted"
    assert _events(got, "alimtalk") == []  # no call notice for a phone that shows lettering


async def test_iphone_gets_alimtalk_call_notice_and_is_remembered(env: dict[str, str]) -> None:
    iphone = {NUMBER: LetteringResult.UNSUPPORTED_DEVICE}
    got = await _replay(["answered_mobile", "answered_callee_hangs_up"], outcomes=iphone)
    assert [e["result"] for e in _events(got, "lettering")] == ["unsupported_device"]  # asked the carrier once
    notices = _events(got, "sent", action="call_notice")
    assert len(notices) == 2 and {n["result"] for n in notices} == {"accepted"}
    assert _events(got, "skipped", reason="known_no_lettering")  # the 2nd call went to Alimtalk at once
    assert [e["result"] for e in _events(got, "postcall")] == ["queued", "capped"]  # one per 7 days


async def test_no_kakaotalk_gets_sms_from_the_gateway(env: dict[str, str], tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    text = (
        (rules / "messaging.yaml")
        .read_text(encoding="utf-8")
        .replace("provider_resend: true", "provider_resend: false")
    )
    (rules / "messaging.yaml").write_text(text, encoding="utf-8")
    got = await _replay(
        ["answered_mobile"],
        rules_dir=rules,
        outcomes={NUMBER: LetteringResult.UNSUPPORTED_DEVICE},
        messaging_outcomes={NUMBER: SendResult.NOT_KAKAO_USER},
    )
    assert {e["result"] for e in _events(got, "sent", channel="alimtalk")} == {"not_kakao_user"}
    assert sorted(e["action"] for e in _events(got, "sms")) == ["call_notice_sms", "postcall_sms"]
    texts = {e["action"]: e for e in _events(got, "sent") if e["channel"] in ("sms", "lms")}
    assert texts["call_notice_sms"]["result"] == "accepted" and texts["postcall_sms"]["result"] == "accepted"
    assert texts["call_notice_sms"]["channel"] == "sms"  # short enough for 90 EUC-KR bytes
    assert texts["postcall_sms"]["channel"] == "lms"  # the content text is longer


async def test_no_kakaotalk_gets_lms_fallback(env: dict[str, str]) -> None:
    got = await _replay(
        ["answered_mobile"],
        outcomes={NUMBER: LetteringResult.UNSUPPORTED_DEVICE},
        messaging_outcomes={NUMBER: SendResult.NOT_KAKAO_USER},
    )
    # The provider was asked for 대체발송 and did it: the citizen got the notice as SMS/LMS.
    for sent in _events(got, "sent", channel="alimtalk"):
        assert sent["result"] == "accepted" and "fallback" in sent["detail"]


# ------------------------------------------------------------------ the real NHN adapter


@pytest.fixture
async def nhn() -> Any:
    server = FakeNhnServer(registered_senders=frozenset({"0319002000", "0319002100"}))
    await server.start()
    yield server
    await server.stop()


def _nhn_overrides(nhn: FakeNhnServer, **kwargs: Any) -> Overrides:
    return Overrides(
        alimtalk={"nhn": NhnAlimtalk("nhn", nhn.base_url, nhn.alimtalk_appkey, nhn.alimtalk_secret, nhn.sender_key)},
        sms={"nhn-sms": NhnSms("nhn-sms", nhn.base_url, nhn.sms_appkey, nhn.sms_secret)},
        **kwargs,
    )


def _message(outbox_key: str, *, to: str = NUMBER, kind: str = "alimtalk") -> QueuedMessage:
    sms = SmsRequest(outbox_key, to, "+82319002000", "[한빛시청] 여권 발급 안내", "여권", "sms")
    if kind == "sms":
        return QueuedMessage(outbox_key, "pbx", outbox_key, "sms_test", to, "nhn-sms", sms=sms)
    alimtalk = AlimtalkRequest(outbox_key, to, "HB_POSTCALL_01", (("title", "여권 발급 안내"),), fallback=sms)
    return QueuedMessage(outbox_key, "pbx", outbox_key, "postcall", to, "nhn", alimtalk=alimtalk)


async def test_worker_delivers_through_nhn_with_resend(env: dict[str, str], redis_url: str, nhn: FakeNhnServer) -> None:
    config = load_config()
    nhn.behave("+821055550001", "not_kakao_user")
    broker, runtime = build_worker(
        config, environ=env, redis_url=redis_url, overrides=_nhn_overrides(nhn, queue_namespace="t-nhn")
    )
    enqueuer = Enqueuer(broker, config.sealer(env))
    worker = start_worker(broker, threads=2, idle_ms=50)
    try:
        assert await enqueuer.enqueue("postcall", _message("k-1"))
        assert await enqueuer.enqueue("postcall", _message("k-2", to="+821055550001"))
        assert await enqueuer.enqueue("sms", _message("k-3", kind="sms"))
        assert await wait_idle(broker, runtime, timeout_s=20)
    finally:
        await asyncio.to_thread(worker.stop)
        enqueuer.close()
    channels = sorted((d.channel, d.to) for d in nhn.deliveries)
    assert channels == [("alimtalk", NUMBER), ("sms", NUMBER), ("sms-fallback", "+821055550001")]
    assert all(r.error == "" for r in nhn.requests), [r.error for r in nhn.requests]


WORKER_YAML = """
pbx:
  - {{name: city-hall, host: 127.0.0.1, username: gateway, secret_env: GATEWAY_AMI_SECRET, trunks: [carrier]}}
rules_dir: {rules}
redis: {{url_env: REDIS_URL}}
carriers: {{sandbox: {{kind: sandbox}}}}
alimtalk:
  nhn: {{kind: nhn, base_url: "{base}", appkey_env: NHN_AT_APPKEY, secret_env: NHN_AT_SECRET,
        sender_key_env: NHN_SENDER_KEY, deadline_ms: 5000}}
sms:
  nhn-sms: {{kind: nhn, base_url: "{base}", appkey_env: NHN_SMS_APPKEY, secret_env: NHN_SMS_SECRET}}
worker: {{threads: 1, namespace: {namespace}, heartbeat_timeout_ms: 1500, maintenance_chance: 1000000}}
log: {{json: true, level: INFO}}
"""


async def _spawn_worker(config_path: Path, env: dict[str, str], nhn: FakeNhnServer) -> asyncio.subprocess.Process:
    env = dict(
        env,
        NHN_AT_APPKEY=nhn.alimtalk_appkey,
        NHN_AT_SECRET=nhn.alimtalk_secret,
        NHN_SENDER_KEY=nhn.sender_key,
        NHN_SMS_APPKEY=nhn.sms_appkey,
        NHN_SMS_SECRET=nhn.sms_secret,
    )
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "worker",
        "--config",
        str(config_path),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def _until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_worker_sigkill_mid_job_delivers_exactly_once(
    env: dict[str, str], redis_url: str, tmp_path: Path, nhn: FakeNhnServer
) -> None:
    """The worker dies while NHN is answering; the job is redelivered to a new worker, which
    asks NHN first (the attempt's outcome is unknown), finds the message and does not send it
    again: the citizen gets one message."""
    nhn.slow_s = 1.5
    nhn.behave(NUMBER, "slow")
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(WORKER_YAML.format(rules=RULES, base=nhn.base_url, namespace="t-kill"), encoding="utf-8")
    config = load_config(config_path, env)
    broker = make_broker(redis_url, namespace="t-kill")
    enqueuer = Enqueuer(broker, config.sealer(env))
    first = await _spawn_worker(config_path, env, nhn)
    second: asyncio.subprocess.Process | None = None
    try:
        assert await enqueuer.enqueue("postcall", _message("kill-1"))
        await _until(lambda: len(nhn.requests) == 1)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        await _until(lambda: len(nhn.deliveries) == 1)  # NHN finished the request the dead worker made
        second = await _spawn_worker(config_path, env, nhn)
        store = RedisOutboxStore(connect(redis_url, timeout_s=1.0))

        async def sent() -> bool:
            return await store.check_send(recipient_hash="x", idempotency_key="kill-1") == "already_sent"

        deadline = time.monotonic() + 30
        while not await sent():
            assert time.monotonic() < deadline, "the redelivered job never completed"
            await asyncio.sleep(0.1)
        await store.aclose()
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 30)
        enqueuer.close()
    assert len(nhn.requests) == 1  # the dead worker's request only: the redelivery found it
    assert len(nhn.alimtalk_lookups) == 1 and nhn.alimtalk_lookups[0]["recipientGroupingKey"] == "kill-1"
    assert len(nhn.deliveries) == 1


async def test_redis_killed_and_restarted_loses_no_queued_message(env: dict[str, str], tmp_path: Path) -> None:
    """Messages queued (in the AOF: appendfsync always, see test_intake) survive a Redis SIGKILL; after the restart the
    worker delivers each exactly once."""
    data = tmp_path / "redis"
    data.mkdir()
    proc = RedisProcess(appendonly=True, data_dir=data, appendfsync="always").start()
    try:
        config = load_config()
        broker = make_broker(proc.url, namespace="t-restart")
        enqueuer = Enqueuer(broker, config.sealer(env))
        for i in range(20):
            assert await enqueuer.enqueue("postcall", _message(f"r-{i}", to=f"+8210555500{i:02d}"))
        enqueuer.close()
        await asyncio.sleep(1.5)  # appendfsync everysec
        proc.kill()
        proc = RedisProcess(port=proc.port, appendonly=True, data_dir=data, appendfsync="always").start()
        alimtalk = SandboxAlimtalk("sandbox-alimtalk")
        broker, runtime = build_worker(
            config,
            environ=env,
            redis_url=proc.url,
            overrides=Overrides(
                alimtalk={"sandbox-alimtalk": alimtalk},
                sms={"sandbox-sms": SandboxSms("sandbox-sms")},
                queue_namespace="t-restart",
            ),
        )
        # Messages were enqueued for the provider named in the payload ("nhn"): route them to the twin.
        runtime._build_outbox = _rename_provider(runtime._build_outbox, "nhn", "sandbox-alimtalk")
        worker = start_worker(broker, threads=2, idle_ms=50)
        try:
            assert await wait_idle(broker, runtime, timeout_s=30)
        finally:
            await asyncio.to_thread(worker.stop)
        assert sorted(d.idempotency_key for d in alimtalk.deliveries) == sorted(f"r-{i}" for i in range(20))
    finally:
        proc.cleanup()


def _rename_provider(build: Any, old: str, new: str) -> Any:
    def wrapped() -> Any:
        outbox = build()
        outbox.alimtalk[old] = outbox.alimtalk[new]
        return outbox

    return wrapped


async def test_failing_provider_ends_in_dead_letters_and_can_be_redriven(
    env: dict[str, str], redis_url: str, nhn: FakeNhnServer
) -> None:
    nhn.behave(NUMBER, "http503")
    config = load_config()
    broker, runtime = build_worker(
        config, environ=env, redis_url=redis_url, overrides=_nhn_overrides(nhn, queue_namespace="t-dead")
    )
    sealer = config.sealer(env)
    payload = encode_message(_message("dead-1"), sealer)
    # A small retry budget so the test does not wait for the production backoff.
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name="postcall",
        actor_name=actor_name("postcall"),
        args=(payload,),
        kwargs={},
        options={"max_retries": 2, "min_backoff": 10, "max_backoff": 20},
    )
    worker = start_worker(broker, threads=1, idle_ms=50)
    try:
        broker.enqueue(message)
        await _until(lambda: len(dead_letters(broker, "postcall")) == 1, timeout=8)
        (dead,) = dead_letters(broker, "postcall")
        assert dead["action"] == "postcall" and dead["retries"] >= 2
        assert NUMBER not in json.dumps(dead)  # the number stays sealed
        assert len(nhn.requests) == 3 and nhn.deliveries == []
        nhn.behave(NUMBER, "accepted")
        assert redrive(broker, "postcall") == 1
        await _until(lambda: len(nhn.deliveries) == 1)
        assert dead_letters(broker, "postcall") == []
    finally:
        await asyncio.to_thread(worker.stop)
    del runtime


# ------------------------------------------------------------------ delivery reports


async def test_delivery_reports_only_move_forward(redis_url: str) -> None:
    store = RedisOutboxStore(connect(redis_url, timeout_s=1.0))
    await store.mark_sent(idempotency_key="rep-1", provider="sbx", reference="R1")
    intake = ReportIntake({"sbx": sandbox_parser("s3cret", "sbx")}, store)
    server = HttpServer(make_app(_no_health, intake), "127.0.0.1", 0)
    host, port = await server.start()
    url = f"http://{host}:{port}/webhooks/report/sbx"
    good = {"X-Sandbox-Signature": "s3cret"}

    def body(*items: tuple[str, float]) -> bytes:
        return json.dumps({"reports": [{"reference": "R1", "status": s, "at": t} for s, t in items]}).encode()

    try:
        async with ClientSession() as session:
            async with session.post(url, data=body(("delivered", 20.0)), headers=good) as resp:
                assert resp.status == 200 and (await resp.json())["updated"] == 1
            async with session.post(url, data=body(("sent", 10.0)), headers=good) as resp:  # late, older
                assert (await resp.json())["stale"] == 1
            async with session.post(url, data=body(("delivered", 20.0)), headers=good) as resp:  # repeated
                assert (await resp.json())["stale"] == 1
            async with session.post(url, data=body(("failed", 30.0)), headers=good) as resp:  # terminal stays
                assert (await resp.json())["stale"] == 1
            async with session.post(url, data=body(("delivered", 1.0)), headers={"X-Sandbox-Signature": "x"}) as r:
                assert r.status == 401
            async with session.post(url, data=b"{not json", headers=good) as resp:
                assert resp.status == 400
            async with session.post(f"http://{host}:{port}/webhooks/report/other", data=b"{}") as resp:
                assert resp.status == 404
            async with session.post(url, data=b"x" * 300_000, headers=good) as resp:
                assert resp.status == 413
        state = await store.message_state("sbx", "R1")
        assert state["status"] == "delivered"
    finally:
        await server.stop()
        await store.aclose()


async def test_delivery_report_while_redis_is_down_is_503(tmp_path: Path) -> None:
    dead = RedisProcess().start()
    store = RedisOutboxStore(connect(dead.url, timeout_s=0.2))
    dead.kill()
    server = HttpServer(make_app(_no_health, ReportIntake({"sbx": sandbox_parser("s")}, store)), "127.0.0.1", 0)
    host, port = await server.start()
    try:
        async with ClientSession() as session:
            data = json.dumps({"reports": [{"reference": "R", "status": "delivered", "at": 1}]}).encode()
            async with session.post(
                f"http://{host}:{port}/webhooks/report/sbx", data=data, headers={"X-Sandbox-Signature": "s"}
            ) as resp:
                assert resp.status == 503  # the provider retries later: nothing is lost
    finally:
        await server.stop()
        await store.aclose()
        dead.cleanup()


async def _no_health() -> dict[str, Any]:
    return {"ready": True}


def test_replay_namespace_is_private(env: dict[str, str]) -> None:
    """A replay never puts jobs on a live deployment's queues."""
    assert replace(Overrides(), queue_namespace="x").queue_namespace == "x"


async def test_sms_with_unknown_outcome_is_looked_up_not_sent_twice(
    env: dict[str, str], redis_url: str, nhn: FakeNhnServer
) -> None:
    """NHN SMS has no idempotency key: an attempt whose answer never arrived (deadline passed, or
    the worker died mid-request) is looked up by its grouping key before anything is sent again."""
    from gateway.outbox.guard import FOUND_AT_PROVIDER, Outbox, Verdict

    nhn.slow_s = 0.6
    provider = NhnSms("nhn-sms", nhn.base_url, nhn.sms_appkey, nhn.sms_secret, deadline_s=0.2)
    store = RedisOutboxStore(connect(redis_url, timeout_s=2.0))
    outbox = Outbox(store, {}, hash_key=b"k" * 16, sms={"nhn-sms": provider})
    late, lost, blind = "+821055500001", "+821055500002", "+821055500003"
    try:
        # 1. NHN takes the SMS but answers after the deadline: a temporary error for the worker ...
        nhn.behave(late, "slow")
        first = await outbox.send(_message("late", to=late, kind="sms"))
        assert isinstance(first, SendOutcome) and first.result is SendResult.TEMPORARY_ERROR
        for _ in range(100):
            if nhn.deliveries:
                break
            await asyncio.sleep(0.02)
        assert [d.to for d in nhn.deliveries] == [late]
        # ... and the retry finds it at NHN instead of sending it again.
        nhn.behave(late, "accepted")
        again = await outbox.send(_message("late", to=late, kind="sms"))
        assert isinstance(again, SendOutcome) and again.result is SendResult.ACCEPTED
        assert again.detail == FOUND_AT_PROVIDER and again.reference == f"{nhn.deliveries[0].request_id}:1"
        assert await outbox.send(_message("late", to=late, kind="sms")) is Verdict.ALREADY_SENT
        assert [d.to for d in nhn.deliveries] == [late] and len(nhn.lookups) == 1
        assert nhn.lookups[0]["senderGroupingKey"] == "late"

        # 2. The first attempt never reached a phone (NHN answered 503): the lookup finds nothing, sent once.
        nhn.behave(lost, "http503")
        failed = await outbox.send(_message("lost", to=lost, kind="sms"))
        assert isinstance(failed, SendOutcome) and failed.result is SendResult.TEMPORARY_ERROR
        nhn.behave(lost, "accepted")
        sent = await outbox.send(_message("lost", to=lost, kind="sms"))
        assert isinstance(sent, SendOutcome) and sent.result is SendResult.ACCEPTED and sent.detail != FOUND_AT_PROVIDER
        assert [d.to for d in nhn.deliveries].count(lost) == 1

        # 3. NHN cannot tell (its list API fails): retry later, never a blind second send.
        nhn.behave(blind, "http503")
        await outbox.send(_message("blind", to=blind, kind="sms"))
        nhn.behave(blind, "accepted")
        nhn.lookup_fails = True
        unsure = await outbox.send(_message("blind", to=blind, kind="sms"))
        assert isinstance(unsure, SendOutcome) and unsure.result is SendResult.TEMPORARY_ERROR
        assert blind not in [d.to for d in nhn.deliveries]
        nhn.lookup_fails = False
        assert isinstance(await outbox.send(_message("blind", to=blind, kind="sms")), SendOutcome)
        assert [d.to for d in nhn.deliveries].count(blind) == 1
        assert outbox.counts["send:sms_test:found_at_provider"] == 1
    finally:
        await provider.close()
        await store.aclose()


async def test_open_circuit_defers_without_spending_retries(
    env: dict[str, str], redis_url: str, nhn: FakeNhnServer
) -> None:
    """A provider outage must not dead-letter messages that were never tried: while the circuit
    is open a job goes back to the queue for after the cooldown, its retries untouched."""
    from gateway.messaging.jobs import MsgpackEncoder
    from gateway.messaging.runtime import MAX_DEFERRALS, CircuitBreaker, TemporaryFailure

    config = load_config()
    broker, runtime = build_worker(config, environ=env, redis_url=redis_url, overrides=_nhn_overrides(nhn))
    breaker = CircuitBreaker(threshold=1, cooldown_s=30.0)
    breaker.failure()
    runtime.breakers["nhn-sms"] = breaker
    payload = encode_message(_message("deferred", kind="sms"), config.sealer(env))
    try:
        await runtime.handle("sms", payload)  # no exception: dramatiq does not count a retry
        delayed = broker.client.lrange(f"{broker.namespace}:sms.DQ", 0, -1)
        assert len(delayed) == 1 and runtime.deferred == 1
        copy = MsgpackEncoder().decode(broker.client.hget(f"{broker.namespace}:sms.DQ.msgs", delayed[0]))
        assert copy["args"][0] == {**payload, "deferred": 1}
        eta = copy["options"]["eta"] / 1000 - time.time()
        assert 25 < eta <= 36  # the cooldown left, plus jitter
        assert nhn.requests == []  # the provider was not tried
        with pytest.raises(TemporaryFailure):  # bounded: then the ordinary retry path
            await runtime.handle("sms", {**payload, "deferred": MAX_DEFERRALS})
    finally:
        runtime.enqueuer.close()


def test_async_enqueue_skips_no_enqueue_hook(redis_url: str) -> None:
    """The gateway puts jobs in Redis itself (Enqueuer with an asyncio client), bypassing
    `RedisBroker.enqueue` and so its middleware's enqueue hooks: none of ours may have one."""
    from dramatiq.middleware import Middleware

    broker = make_broker(redis_url, namespace="hooks")
    for middleware in broker.middleware:
        for hook in ("before_enqueue", "after_enqueue"):
            assert getattr(type(middleware), hook) is getattr(Middleware, hook), (middleware, hook)


async def test_async_enqueue_lands_where_the_broker_puts_it(env: dict[str, str], redis_url: str) -> None:
    config = load_config()
    broker = make_broker(redis_url, namespace=config.queue_namespace)
    enqueuer = Enqueuer(broker, config.sealer(env), wire=Wire.from_url(redis_url, timeout_s=2.0))
    try:
        assert await enqueuer.enqueue("sms", _message("now", kind="sms"))
        assert await enqueuer.enqueue("sms", _message("later", kind="sms"), delay_s=60)
        ns = broker.namespace
        sync: Any = broker.client  # redis-py's sync replies are typed as unions of everything
        (now_id,) = sync.lrange(f"{ns}:sms", 0, -1)
        (later_id,) = sync.lrange(f"{ns}:sms.DQ", 0, -1)
        from gateway.messaging.jobs import MsgpackEncoder

        now = MsgpackEncoder().decode(sync.hget(f"{ns}:sms.msgs", now_id))
        later = MsgpackEncoder().decode(sync.hget(f"{ns}:sms.DQ.msgs", later_id))
        assert now["actor_name"] == later["actor_name"] == actor_name("sms")
        assert now["options"]["redis_message_id"] == now_id.decode()
        assert later["queue_name"] == "sms.DQ" and 55_000 < later["options"]["eta"] - time.time() * 1000 <= 60_000
        assert now["options"]["max_retries"] == later["options"]["max_retries"]
    finally:
        await enqueuer.aclose(1.0)


async def test_claim_then_queue_is_one_step(env: dict[str, str], redis_url: str) -> None:
    """An admitted message is queued (and noted in its thread) in the claim's own atomic step;
    a refused one leaves no job behind."""
    from gateway.ports import QueuePut

    config = load_config()
    broker = make_broker(redis_url, namespace="claim-then")
    wire = Wire.from_url(redis_url, timeout_s=2.0)
    enqueuer = Enqueuer(broker, config.sealer(env), wire=wire)
    store = RedisOutboxStore(connect(redis_url, timeout_s=2.0), wire)
    try:

        def put() -> QueuePut:
            base = enqueuer.prepare("sms", encode_message(_message("once", kind="sms"), config.sealer(env)))
            return replace(base, stream_key="gw:thread:t1:msgs", stream_fields=(("dir", "out"), ("action", "x")))

        claim = {"dedupe_key": "once", "recipient_hash": "h", "ttl_s": 60, "rate_limit": 0, "rate_window_s": 60}
        assert await store.claim(**claim, then=put()) == "ok"  # type: ignore[arg-type]
        assert await store.claim(**claim, then=put()) == "duplicate"  # type: ignore[arg-type]
        sync: Any = broker.client
        assert sync.llen("claim-then:sms") == 1 and sync.hlen("claim-then:sms.msgs") == 1
        assert [f[b"dir"] for _, f in sync.xrange("gw:thread:t1:msgs")] == [b"out"]
    finally:
        await enqueuer.aclose(1.0)
        await store.aclose()
