"""Call tracking across PBX restarts, PBX deaths and gateway restarts, over real TCP.

The built-in AMI server replays recorded Asterisk 22 sessions; the real gateway (AMI client,
tracker, pipeline, outbox guard on a real redis-server, sandbox carriers) follows them. A PBX
that dies is a server whose connection drops mid-call and whose port then refuses connections,
until a second server (the restarted PBX, with a later recording) listens on the same port.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from adapters.sandbox import SandboxCarrier
from gateway.app.gateway import Gateway, Overrides
from gateway.app.httpapps import make_app
from gateway.app.replay import FAST_RECONNECT, demo_environ, replay
from gateway.infra.config import load_config
from gateway.infra.http import HttpServer
from gateway.sim.amiserver import AmiServer, Block, SessionPlan, Transcript
from tests.conftest import RULES
from tests.support.transcripts import TRANSCRIPTS, parse_block


class Collect:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def decision(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == kind]


async def until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def gateway(
    config: Any,
    environ: dict[str, str],
    redis_url: str,
    port: int,
    *,
    sink: Collect,
    carrier: SandboxCarrier,
    reconnect: bool = True,
) -> Gateway:
    # A gateway about to die must not reconnect first and take the next session from the server.
    ami: dict[str, float] = dict(FAST_RECONNECT) if reconnect else {"backoff_initial_s": 30.0, "backoff_max_s": 30.0}
    over = Overrides(
        redis_url=redis_url, rules_dir=RULES, pbx_address=("127.0.0.1", port), carriers={"sandbox": carrier}, ami=ami
    )
    return Gateway(config, sink, environ=environ, overrides=over)


def stamp(transcript: Transcript, block: Block) -> float:
    """The Timestamp the built-in server (fast replay) gives a recorded block: recorded wall time."""
    epoch = transcript.recorded_epoch
    assert epoch is not None
    return epoch + block.t


def after_last(transcript: Transcript, event: str) -> int:
    """Index in the replayed body just after the last `event` (e.g. every leg bridged)."""
    return max(i for i, b in enumerate(transcript.body) if b.event_name == event) + 1


def login_later(transcript: Transcript, cut: int) -> Transcript:
    """The same PBX as seen by a client that logs in when body[cut] is due: the recorded login
    answer and SuccessfulAuth, the recorded FullyBooted (Asterisk sends it at every login) at
    that moment, then the rest of the recording. Only the replay time of FullyBooted moves."""
    body = transcript.body
    head = transcript.blocks[: len(transcript.blocks) - len(body)]
    auth = next(b for b in body if b.event_name == "SuccessfulAuth")
    booted = next(b for b in body if b.event_name == "FullyBooted")
    now = body[cut - 1].t
    return Transcript(transcript.name + "-later", (*head, auth, Block(now, booted.raw), *body[cut:]))


def call_times(transcript: Transcript) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Recorded times per call (Linkedid): last Hangup, the outside leg's answer, its creation."""
    hangups: dict[str, float] = {}
    answers: dict[str, float] = {}
    created: dict[str, float] = {}
    for block in transcript.body:
        fields = parse_block(block.raw.decode()) if block.is_event else {}
        call = fields.get("Linkedid", "")
        if block.event_name == "Hangup":
            hangups[call] = max(hangups.get(call, 0.0), block.t)
        elif block.event_name == "DialEnd" and fields.get("DialStatus") == "ANSWER" and "Channel" in fields:
            answers[call] = block.t
        elif block.event_name == "Newchannel" and "carrier" in fields.get("Channel", ""):
            created[call] = block.t
    return hangups, answers, created


# ------------------------------------------------------------------ the gateway restarts


@pytest.mark.parametrize("name", ["answered_mobile", "coreshowchannels"])
async def test_gateway_restarted_during_answered_lettered_call(name: str, redis_url: str) -> None:
    """Gateway A letters the call(s) and dies once they are answered; gateway B logs in, rebuilds
    them from CoreShowChannels and follows them to the end. B reports each call's own state
    (answered before it saw it: `recovered`, or the policy's reason such as `landline`), never
    `not_dialed`, and measures talk time from the channels' age, not from its own login."""
    config = load_config()
    environ = demo_environ(config, os.environ)
    recorded = Transcript.named(name)
    cut = after_last(recorded, "BridgeEnter")
    server = AmiServer(
        [SessionPlan(recorded, drop_after=cut), login_later(recorded, cut)],
        secret=environ["GATEWAY_AMI_SECRET"],
        speed="fast",
    )
    _host, port = await server.start()
    sink_a, carrier_a = Collect(), SandboxCarrier()
    gw_a = gateway(config, environ, redis_url, port, sink=sink_a, carrier=carrier_a, reconnect=False)
    await gw_a.start()
    await until(lambda: any(r.get("state") == "lost" for r in sink_a.of("pbx")))
    await gw_a.pipeline.drain()
    await gw_a.stop()
    lettered = [r.to for r in carrier_a.requests]
    assert lettered == ["+821012345678"]

    sink_b, carrier_b = Collect(), SandboxCarrier()
    gw_b = gateway(config, environ, redis_url, port, sink=sink_b, carrier=carrier_b)
    await gw_b.start()
    live = len({b.raw for b in recorded.body[:cut] if b.event_name == "BridgeCreate"})
    try:
        await asyncio.wait_for(server.wait_done(), 20)
        await until(lambda: len(sink_b.of("call")) == live)
        await gw_b.pipeline.drain()
    finally:
        await gw_b.stop()
        await server.stop()
    assert carrier_b.requests == []
    skipped = {r["call"]: r["reason"] for r in sink_b.of("skipped")}
    hangups, answers, created = call_times(recorded)
    epoch = recorded.recorded_epoch  # the fast replay stamps events with their recorded wall time
    assert epoch is not None
    for call in sink_b.of("call"):
        assert call["recovered"] is True and call["disposition"] == "answered"
        # Between the true talk time and the time since the outside leg was created (all the
        # CoreShowChannel frame tells: `Duration`, whole seconds), both from the recording.
        true_talk = hangups[call["call"]] - answers[call["call"]]
        upper = hangups[call["call"]] - created[call["call"]]
        assert true_talk - 0.5 <= call["talk_seconds"] <= upper + 1, (call, true_talk, upper)
        assert call["ended_at"] == pytest.approx(epoch + hangups[call["call"]], abs=0.01)
        assert skipped[call["call"]] == ("recovered" if call["party"].startswith("+8210") else "landline")


# ------------------------------------------------------------------ the PBX dies (kill -9)


async def test_pbx_killed_mid_call_ends_it_when_the_connection_was_lost(redis_url: str) -> None:
    """The PBX dies during a call (no Hangup, no Shutdown: the TCP connection just ends) and comes
    back later with a fresh Asterisk (FullyBooted Uptime 0). The call ends when the connection
    was lost, not when the restart was noticed; refused attempts while the PBX is down are not
    reconnections."""
    config = load_config()
    environ = demo_environ(config, os.environ)
    before = Transcript.named("restart_during_call")
    cut = after_last(before, "BridgeEnter")  # talking; the next recorded frame is the restart's
    dying = AmiServer([SessionPlan(before, drop_after=cut)], secret=environ["GATEWAY_AMI_SECRET"], speed="fast")
    _host, port = await dying.start()
    sink, carrier = Collect(), SandboxCarrier()
    gw = gateway(config, environ, redis_url, port, sink=sink, carrier=carrier)
    await gw.start()
    http = HttpServer(make_app(gw.health, gw.reports, gw.http_routes), "127.0.0.1", 0)
    http_host, http_port = await http.start()
    after = Transcript.named("restart_reconnect")
    back: AmiServer | None = None
    try:
        client = gw.clients[0]
        await until(lambda: any(r.get("state") == "lost" for r in sink.of("pbx")))
        # The port refuses connections now (the server handed out its only session); let the
        # client knock a few times.
        await until(lambda: "cannot connect" in (client.status()["last_error"] or ""))
        first_refusal = client.status()["last_error_at"]
        await until(lambda: client.status()["last_error_at"] != first_refusal)
        assert sink.of("call") == []  # nothing decided while the PBX is away
        back = AmiServer([after], secret=environ["GATEWAY_AMI_SECRET"], speed="fast", port=port)
        await back.start()
        await until(lambda: len(sink.of("call")) == 1)
        await until(lambda: client.status()["authenticated"])
        async with ClientSession() as session:
            async with session.get(f"http://{http_host}:{http_port}/health") as resp:
                health = await resp.json()
            async with session.get(f"http://{http_host}:{http_port}/metrics") as resp:
                metrics = await resp.text()
        await gw.pipeline.drain()
    finally:
        await http.stop()
        await gw.stop()
        await dying.stop()
        if back is not None:
            await back.stop()
    (call,) = sink.of("call")
    last_seen = stamp(before, before.body[cut - 1])
    came_back = stamp(after, next(b for b in after.body if b.event_name == "FullyBooted"))
    assert call["cause"] == "pbx_restart" and call["disposition"] == "answered"
    # Ended when the connection was lost (right after the last frame, in this fast replay),
    # well before the restarted PBX said FullyBooted.
    assert last_seen <= call["ended_at"] < last_seen + 1.0 < came_back
    assert call["talk_seconds"] <= round(call["ended_at"] - call["answered_at"]) + 1
    [pbx] = health["pbx"]
    assert pbx["reconnects"] == 1  # one successful re-login
    assert pbx["connect_attempts"] >= 4  # first connect, at least two refused, the re-login
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert lines['gateway_ami_reconnects_total{pbx="city-hall"}'] == 1
    assert lines['gateway_ami_connect_attempts_total{pbx="city-hall"}'] == pbx["connect_attempts"]


# ------------------------------------------------------------- core restart now (clean)


async def _replay(files: list[Path], redis_url: str, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("GATEWAY_NUMBER_KEY", "test-number-key-0123456789")
    out = io.StringIO()
    assert await replay(files, load_config(), rules_dir=RULES, out=out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_core_restart_now_is_recorded_as_pbx_restart(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`core restart now` hangs every channel up with SoftHangupRequest Cause 4 (shutdown) before
    the Hangup events (Cause 16, "normal clearing"): the call's cause is the restart."""
    got = await _replay(
        [TRANSCRIPTS / "restart_during_call.ami", TRANSCRIPTS / "restart_reconnect.ami"], redis_url, monkeypatch
    )
    (call,) = [r for r in got if r["event"] == "call"]
    assert call["cause"] == "pbx_restart"
    assert call["disposition"] == "answered" and 2 <= call["talk_seconds"] <= 5
    assert [r["to"] for r in got if r["event"] == "lettering"] == ["+821012345678"]


async def test_calls_ended_normally_are_not_blamed_on_a_later_restart(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls that ended before the restart keep their own causes (a regular hangup also sends
    SoftHangupRequest, with another Cause)."""
    got = await _replay(
        [
            TRANSCRIPTS / "answered_mobile.ami",
            TRANSCRIPTS / "busy.ami",
            TRANSCRIPTS / "restart_during_call.ami",
            TRANSCRIPTS / "restart_reconnect.ami",
        ],
        redis_url,
        monkeypatch,
    )
    causes = sorted(r["cause"] for r in got if r["event"] == "call")
    assert causes == ["busy", "normal", "pbx_restart"]
