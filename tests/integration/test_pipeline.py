"""The whole call pipeline over real TCP: recorded AMI from the built-in AMI server, the real
AMI client, tracker, policy, outbox guard on a real redis-server, sandbox carriers."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from adapters.sandbox import SandboxCarrier
from gateway.app.gateway import Gateway, Overrides
from gateway.app.replay import FAST_RECONNECT, demo_environ, replay
from gateway.domain.models import LetteringResult
from gateway.infra.config import load_config
from gateway.infra.rediskeys import optout_key
from gateway.outbox.store import number_hash
from gateway.sim.amiserver import AmiServer, Block, SessionPlan, Transcript
from gateway.sim.redisproc import RedisProcess
from tests.conftest import ROOT, RULES
from tests.support.transcripts import TRANSCRIPTS, expected


def check(name: str, want: Mapping[str, Any], got: Sequence[Mapping[str, Any]]) -> None:
    """The same rules as shared/tools/check_replay.py."""
    calls = [e for e in got if e.get("event") == "call"]
    letters = [e for e in got if e.get("event") == "lettering"]
    if want["calls"] != "any":
        assert len(calls) == len(want["calls"]), (name, calls)
        for w in want["calls"]:
            hit = [c for c in calls if c["extension"] == w["extension"] and c["party"] == w["party"]]
            assert hit, (name, w, calls)
            assert hit[0]["direction"] == w["direction"]
            assert hit[0]["disposition"] in w["disposition"]
            lo, hi = w["talk_seconds"]
            assert lo <= hit[0]["talk_seconds"] <= hi
    if want["lettering"] != "any":
        pairs = sorted((e["extension"], e["to"]) for e in letters)
        assert pairs == sorted((w["extension"], w["to"]) for w in want["lettering"]), name


async def _replay(
    files: list[Path],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    outcomes: Mapping[str, LetteringResult] | None = None,
    rules_dir: Path = RULES,
) -> list[dict[str, Any]]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    if "GATEWAY_NUMBER_KEY" not in os.environ:
        # A fixed key, as in production: the hashes (dedupe, opt-out) must match across runs.
        monkeypatch.setenv("GATEWAY_NUMBER_KEY", "test-number-key-0123456789")
    out = io.StringIO()
    rc = await replay(files, load_config(), rules_dir=rules_dir, out=out, outcomes=outcomes)
    assert rc == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("name", sorted(expected()))
async def test_every_recorded_scenario(name: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    got = await _replay([TRANSCRIPTS / f"{name}.ami"], redis_url, monkeypatch)
    check(name, expected()[name], got)
    for record in got:
        if record["event"] == "lettering":
            assert record["organisation"] == "한빛시청" and record["text"] and record["result"] == "delivered"
            assert record["provider"] == "sandbox"


async def test_all_sessions_in_one_run(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every transcript as successive sessions of one PBX: state carries across reconnects."""
    names = sorted(expected())
    got = await _replay([TRANSCRIPTS / f"{n}.ami" for n in names], redis_url, monkeypatch)
    want_calls = sum(len(v["calls"]) for v in expected().values() if isinstance(v["calls"], list))
    want_letters = sum(len(v["lettering"]) for v in expected().values() if isinstance(v["lettering"], list))
    calls = [e for e in got if e["event"] == "call"]
    letters = [e for e in got if e["event"] == "lettering"]
    assert len(calls) == want_calls + 1  # + originate_phone_no_answer ("any")
    assert want_letters <= len(letters) <= want_letters + 1  # + invalid_number ("any")


async def test_replaying_twice_on_one_redis_letters_once(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dedupe claim outlives the process: a second gateway (or a restart) never re-letters."""
    first = await _replay([TRANSCRIPTS / "answered_mobile.ami"], redis_url, monkeypatch)
    second = await _replay([TRANSCRIPTS / "answered_mobile.ami"], redis_url, monkeypatch)
    assert [e["event"] for e in first].count("lettering") == 1
    assert [e["event"] for e in second].count("lettering") == 0
    assert {
        "event": "skipped",
        "pbx": "city-hall",
        "call": "1795339616.0",
        "reason": "duplicate",
        "to": "+821012345678",
    } in second
    assert [e["event"] for e in second].count("call") == 1


async def test_opted_out_citizen_is_never_lettered(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = b"k" * 24
    monkeypatch.setenv("GATEWAY_NUMBER_KEY", key.decode())
    client = redis.Redis.from_url(redis_url)
    client.set(optout_key(number_hash(key, "+821012345678")), "1")
    client.close()
    got = await _replay([TRANSCRIPTS / "answered_mobile.ami"], redis_url, monkeypatch)
    assert [e for e in got if e["event"] == "lettering"] == []
    assert any(e["event"] == "skipped" and e["reason"] == "opted_out" for e in got)


async def test_redis_down_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = RedisProcess()
    dead.start()
    dead.kill()
    try:
        got = await _replay([TRANSCRIPTS / "answered_mobile.ami"], dead.url, monkeypatch)
    finally:
        dead.cleanup()
    assert [e for e in got if e["event"] == "lettering"] == []
    assert any(e["event"] == "skipped" and e["reason"] == "store_unavailable" for e in got)
    assert [e["event"] for e in got].count("call") == 1  # calls are still tracked


async def test_unsupported_device_is_reported(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    got = await _replay(
        [TRANSCRIPTS / "answered_mobile.ami"],
        redis_url,
        monkeypatch,
        outcomes={"+821012345678": LetteringResult.UNSUPPORTED_DEVICE},
    )
    letters = [e for e in got if e["event"] == "lettering"]
    assert [e["result"] for e in letters] == ["unsupported_device"]


async def test_4000_phone_directory(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.rules.lettering import load_rules
    from gateway.sim.directory_gen import generate_directory

    (tmp_path / "directory.yaml").write_text(generate_directory(4000), encoding="utf-8")
    (tmp_path / "lettering.yaml").write_bytes((RULES / "lettering.yaml").read_bytes())
    rules = load_rules(tmp_path)
    assert rules.directory.extension_count() == 4000
    department = rules.directory.lookup("2001")
    got = await _replay([TRANSCRIPTS / "answered_mobile.ami"], redis_url, monkeypatch, rules_dir=tmp_path)
    letters = [e for e in got if e["event"] == "lettering"]
    if department is None:
        assert letters == [] and any(e.get("reason") == "unknown_extension" for e in got)
    else:
        assert [e["department"] for e in letters] == [department.name]


# ---------------------------------------------------------------- live gateway over TCP


class Collect:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def decision(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == kind]


async def _gateway(
    server: AmiServer, redis_url: str, environ: dict[str, str], sink: Collect, carrier: SandboxCarrier
) -> Gateway:
    host, port = await server.start()
    gw = Gateway(
        load_config(),
        sink,
        environ=environ,
        overrides=Overrides(
            redis_url=redis_url,
            rules_dir=RULES,
            pbx_address=(host, port),
            carriers={"sandbox": carrier},
            ami=dict(FAST_RECONNECT),
        ),
    )
    await gw.start()
    return gw


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _split(transcript: Transcript, after_event: str, nth: int = 1) -> tuple[int, Transcript]:
    """Index (within the replayed body) just after the nth `after_event`, and a transcript of
    the recorded blocks that follow it, for the session after a reconnect."""
    body = transcript.body
    seen = 0
    for i, block in enumerate(body):
        if block.raw.startswith(b"Event: " + after_event.encode() + b"\r\n"):
            seen += 1
            if seen == nth:
                head = transcript.blocks[: len(transcript.blocks) - len(body)]
                rest: tuple[Block, ...] = head + body[i + 1 :]
                return i + 1, Transcript(transcript.name + "-rest", rest)
    raise AssertionError(f"no {after_event} in {transcript.name}")


async def test_connection_dropped_mid_call_neither_loses_nor_double_letters(redis_url: str) -> None:
    """The TCP connection drops while the citizen's phone rings; after the reconnect the resync
    finds the call alive and the rest of it is tracked: one call, one lettering."""
    config = load_config()
    environ = demo_environ(config, os.environ)
    recorded = Transcript.named("answered_mobile")
    cut, rest = _split(recorded, "DialBegin", nth=2)
    server = AmiServer(
        [SessionPlan(recorded, drop_after=cut), rest], secret=environ["GATEWAY_AMI_SECRET"], speed="fast"
    )
    sink, carrier = Collect(), SandboxCarrier()
    gw = await _gateway(server, redis_url, environ, sink, carrier)
    try:
        await asyncio.wait_for(server.wait_done(), 15)
        await _until(lambda: len(sink.of("call")) == 1)
        await gw.pipeline.drain()
    finally:
        await gw.stop()
        await server.stop()
    states = [r["state"] for r in sink.of("pbx")]
    assert states.count("resynced") >= 2
    assert len(carrier.requests) == 1
    (call,) = sink.of("call")
    assert call["disposition"] == "answered" and call["party"] == "+821012345678"
    assert 4 <= call["talk_seconds"] <= 7


async def test_gateway_restarted_mid_call_recovers_without_relettering(redis_url: str) -> None:
    """Gateway A letters and dies while the phone rings; gateway B connects, rebuilds the call
    from CoreShowChannels and tracks it to the end; the shared dedupe claim stops a second
    lettering."""
    config = load_config()
    environ = demo_environ(config, os.environ)
    recorded = Transcript.named("answered_mobile")
    cut, rest = _split(recorded, "DialState", nth=2)  # the mobile is ringing
    server = AmiServer(
        [SessionPlan(recorded, drop_after=cut), rest], secret=environ["GATEWAY_AMI_SECRET"], speed="fast"
    )
    sink_a, carrier_a = Collect(), SandboxCarrier()
    host, port = await server.start()
    over = Overrides(
        redis_url=redis_url,
        rules_dir=RULES,
        pbx_address=(host, port),
        carriers={"sandbox": carrier_a},
        ami=dict(FAST_RECONNECT),
    )
    gw_a = Gateway(config, sink_a, environ=environ, overrides=over)
    await gw_a.start()
    await _until(lambda: len(carrier_a.requests) == 1)
    await gw_a.stop()  # gateway A is gone; the PBX call goes on
    sink_b, carrier_b = Collect(), SandboxCarrier()
    over_b = Overrides(
        redis_url=redis_url,
        rules_dir=RULES,
        pbx_address=(host, port),
        carriers={"sandbox": carrier_b},
        ami=dict(FAST_RECONNECT),
    )
    gw_b = Gateway(config, sink_b, environ=environ, overrides=over_b)
    await gw_b.start()
    try:
        await asyncio.wait_for(server.wait_done(), 15)
        await _until(lambda: len(sink_b.of("call")) == 1)
        await gw_b.pipeline.drain()
    finally:
        await gw_b.stop()
        await server.stop()
    assert carrier_b.requests == []
    assert any(r["reason"] == "duplicate" for r in sink_b.of("skipped"))
    (call,) = sink_b.of("call")
    assert call["recovered"] is True and call["extension"] == "2001" and call["party"] == "+821012345678"
    assert call["disposition"] == "answered"


async def test_two_gateways_on_one_pbx_letter_each_call_once(redis_url: str) -> None:
    """Two gateways follow the same PBX (two AMI connections see the same events) and share
    Redis: every call is lettered exactly once between them."""
    config = load_config()
    environ = demo_environ(config, os.environ)
    names = ["answered_mobile", "busy", "no_answer", "landline", "blind_transfer"]
    plans = [Transcript.named(n) for n in names]
    secret = environ["GATEWAY_AMI_SECRET"]
    server_a = AmiServer(plans, secret=secret, speed="fast")
    server_b = AmiServer(plans, secret=secret, speed="fast")
    sinks, carriers = [Collect(), Collect()], [SandboxCarrier(), SandboxCarrier()]
    gateways = [
        await _gateway(s, redis_url, environ, sink, c)
        for s, sink, c in zip((server_a, server_b), sinks, carriers, strict=True)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(server_a.wait_done(), server_b.wait_done()), 20)
        await _until(lambda: all(len(s.of("call")) == len(names) for s in sinks))
        for gw in gateways:
            await gw.pipeline.drain()
    finally:
        for gw in gateways:
            await gw.stop()
        await server_a.stop()
        await server_b.stop()
    sent = carriers[0].requests + carriers[1].requests
    assert sorted(r.call_id for r in sent) == sorted({r.call_id for r in sent})
    assert len(sent) == 4  # all but the landline call


async def test_health_reports_pbx_and_redis(redis_url: str) -> None:
    from aiohttp import ClientSession

    from gateway.app.httpapps import make_app
    from gateway.infra.http import HttpServer

    config = load_config()
    environ = demo_environ(config, os.environ)
    server = AmiServer([Transcript.named("answered_mobile")], secret=environ["GATEWAY_AMI_SECRET"], speed=20.0)
    sink, carrier = Collect(), SandboxCarrier()
    gw = await _gateway(server, redis_url, environ, sink, carrier)
    http = HttpServer(make_app(gw.health), "127.0.0.1", 0)
    host, port = await http.start()
    try:
        await _until(lambda: gw.clients[0].status().get("authenticated"))
        async with ClientSession() as session:
            async with session.get(f"http://{host}:{port}/healthz") as resp:
                assert resp.status == 200
            async with session.get(f"http://{host}:{port}/health") as resp:
                body = await resp.json()
                assert resp.status == 200, body
        assert body["ready"] is True and body["redis"]["reachable"] is True
        assert body["pbx"][0]["name"] == "city-hall" and body["pbx"][0]["authenticated"] is True
        assert body["rules"]["version"]
    finally:
        await http.stop()
        await gw.stop()
        await server.stop()


def test_cli_replay_runs_without_redis_configured() -> None:
    """`gateway replay FILE --json` as a user runs it: it starts its own throwaway Redis."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "replay", str(TRANSCRIPTS / "busy.ami"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    check("busy", expected()["busy"], got)


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text("pbx:\n  - name: a\n    host: x\n    usrname: gw\n    secret_env: S\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "replay", "--config", str(bad), str(TRANSCRIPTS / "busy.ami")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 2
    assert "gateway.yaml:4" in proc.stderr and "usrname" in proc.stderr


async def test_metrics_have_real_values(redis_url: str) -> None:
    from aiohttp import ClientSession

    from gateway.app.httpapps import make_app
    from gateway.infra.http import HttpServer

    config = load_config()
    environ = demo_environ(config, os.environ)
    server = AmiServer([Transcript.named("answered_mobile")], secret=environ["GATEWAY_AMI_SECRET"], speed="fast")
    sink, carrier = Collect(), SandboxCarrier()
    gw = await _gateway(server, redis_url, environ, sink, carrier)
    http = HttpServer(make_app(gw.health, gw.reports, gw.http_routes), "127.0.0.1", 0)
    host, port = await http.start()
    try:
        await _until(lambda: len(sink.of("call")) == 1 and len(carrier.requests) == 1)
        await gw.pipeline.drain()
        async with ClientSession() as session:
            async with session.get(f"http://{host}:{port}/healthz") as resp:
                assert resp.status == 200
            async with session.get(f"http://{host}:{port}/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
    finally:
        await http.stop()
        await gw.stop()
        await server.stop()
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert lines['gateway_calls_total{direction="outbound",disposition="answered",pbx="city-hall"}'] == 1
    assert lines["gateway_lettering_latency_seconds_count"] == 1
    assert 0 < lines["gateway_lettering_latency_seconds_sum"] < 5  # seconds, not milliseconds
    assert lines['gateway_lettering_latency_seconds_bucket{le="2.5"}'] == 1
    assert lines['gateway_outbox_decisions_total{decision="sent:delivered"}'] == 1
    assert lines['gateway_ami_frames_total{pbx="city-hall"}'] > 90
    assert lines['gateway_ami_events_total{event="VarSet",pbx="city-hall"}'] > 10  # discarded, still counted
    assert lines['gateway_http_responses_total{route="/healthz",status="200"}'] == 1
    assert lines['gateway_dead_letters{queue="postcall"}'] == 0
    assert 'gateway_queue_depth{queue="call_notice"}' in lines


@pytest.mark.parametrize("peer", ["died_mid_request", "settled", "still_asking"])
async def test_a_peer_gateways_lease_on_a_call(peer: str, redis_url: str) -> None:
    """Two gateways see every call; the first claims it as a short lease, settled once the carrier
    answered. If that gateway dies between claim and request, the lease lapses and the other
    letters the call while it still rings; a settled or live lease means: not again."""
    from gateway.calls.pipeline import CallPipeline
    from gateway.domain.rules import Rules
    from gateway.outbox.guard import Outbox
    from gateway.outbox.store import RedisOutboxStore, connect
    from gateway.rules.lettering import load_rules
    from tests.support.transcripts import timed_events

    rules: Rules = load_rules(RULES)
    client = connect(redis_url, timeout_s=2.0)
    store = RedisOutboxStore(client)
    carrier = SandboxCarrier("sandbox")
    outbox = Outbox(store, {"sandbox": carrier}, hash_key=b"k" * 16)
    sink = Collect()
    pipeline = CallPipeline(lambda: rules, outbox, sink, trunks={"city-hall": ("carrier",)})
    pipeline.lease_s = 0.3
    events = list(timed_events("answered_mobile"))
    call_id = next(e["Linkedid"] for _, e in events if "Linkedid" in e)
    to = "+821012345678"
    key = outbox.key_for("city-hall", call_id, "lettering", to)
    h = number_hash(outbox.hash_key, to)
    # The peer gateway's claim, taken before this gateway sees the call.
    assert (
        await store.claim(
            dedupe_key=key,
            recipient_hash=h,
            ttl_s=0.3 if peer != "still_asking" else 30,
            rate_limit=0,
            rate_window_s=3600,
            lease=True,
        )
        == "ok"
    )
    if peer == "settled":
        await store.settle(dedupe_key=key, ttl_s=3600)
    try:
        for at, event in events:  # up to the dial to the citizen: the phone rings
            pipeline.ami_event("city-hall", event, at)
            if event.get("Event") == "DialBegin" and "carrier" in event.get("DestChannel", ""):
                break
        await pipeline.drain(5)
    finally:
        await store.aclose()
    if peer == "died_mid_request":
        assert [r.to for r in carrier.requests] == [to]
        assert [r["result"] for r in sink.of("lettering")] == ["delivered"]
    else:
        assert carrier.requests == []
        assert [r["reason"] for r in sink.of("skipped")] == ["duplicate"]
