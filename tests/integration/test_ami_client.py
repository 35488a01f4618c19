"""PbxClient against the replaying AmiServer over real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace

import pytest

from gateway.calls.pbx import AmiSettings, PbxClient
from gateway.errors import AmiError
from gateway.ports import SessionChange, SessionKind
from gateway.sim.amiserver import AmiServer, SessionPlan, Transcript

SECRET = "fake-ami-secret"
WANTED = frozenset({"Newchannel", "DialBegin", "DialEnd", "BridgeEnter", "Hangup", "Shutdown"})
K = SessionKind


class Recorder:
    """An AmiListener that keeps everything, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, object, float]] = []  # (pbx, "event"|"session", payload, at)

    def ami_event(self, pbx: str, event: Mapping[str, str], at: float) -> None:
        self.log.append((pbx, "event", dict(event), at))

    def ami_session(self, pbx: str, change: SessionChange, at: float) -> None:
        self.log.append((pbx, "session", change, at))

    def events(self, name: str | None = None) -> list[dict[str, str]]:
        out = [p for _, kind, p, _ in self.log if kind == "event"]
        return [e for e in out if isinstance(e, dict) and (name is None or e.get("Event") == name)]

    def changes(self) -> list[SessionChange]:
        return [p for _, kind, p, _ in self.log if isinstance(p, SessionChange)]

    def kinds(self) -> list[SessionKind]:
        return [c.kind for c in self.changes()]

    def pbx_names(self) -> set[str]:
        return {pbx for pbx, *_ in self.log}


async def until(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def settings(name: str, port: int, **kw: float | str) -> AmiSettings:
    base = AmiSettings(
        name=name,
        host="127.0.0.1",
        port=port,
        username="gateway",
        secret=SECRET,
        ping_interval_s=0.2,
        ping_timeout_s=0.3,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        auth_backoff_initial_s=0.2,
        auth_backoff_max_s=0.4,
        action_timeout_s=2.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(
    server: AmiServer, name: str = "pbx1", wanted: frozenset[str] = WANTED, **kw: float | str
) -> AsyncIterator[tuple[PbxClient, Recorder, asyncio.Task[None]]]:
    _host, port = await server.start()
    recorder = Recorder()
    client = PbxClient(settings(name, port, **kw), recorder, wanted)
    task = asyncio.ensure_future(client.run())
    try:
        yield client, recorder, task
    finally:
        await client.stop()
        await asyncio.wait_for(task, 3)
        await server.stop()


def server_for(sessions: Sequence[SessionPlan | Transcript], **kw: object) -> AmiServer:
    return AmiServer(sessions, secret=SECRET, speed="fast", **kw)  # type: ignore[arg-type]


async def test_normal_session_delivers_wanted_events() -> None:
    server = server_for([Transcript.named("answered_mobile")])
    async with running(server) as (client, rec, _):
        await asyncio.wait_for(server.wait_done(), 10)
        await until(lambda: K.LOST in rec.kinds())
        assert rec.kinds()[:5] == [K.CONNECTED, K.AUTHENTICATED, K.RESYNC_STARTED, K.RESYNCED, K.LOST]
        assert len(rec.events("Newchannel")) == 2
        assert len(rec.events("Hangup")) == 2
        assert rec.events("DialEnd")[-1]["DialStatus"] == "ANSWER"
        begin = [e for e in rec.events("DialBegin") if "Channel" in e]
        assert len(begin) == 1  # the phone leg of an Originate has no Channel header
        assert begin[0]["Channel"] == "PJSIP/2001-00000000"
        assert begin[0]["DestChannel"] == "PJSIP/carrier-00000001"
        assert begin[0]["DialString"] == "01012345678@carrier"
        assert begin[0]["Linkedid"] == begin[0]["Uniqueid"]
        assert not rec.events("VarSet") and not rec.events("FullyBooted")
        # Fast replay with Timestamp headers keeps the recorded durations (DialBegin 1.735 s,
        # Hangup 8.961 s into the recording).
        times = {
            e["Event"] + e.get("Channel", ""): at for _, k, e, at in rec.log if k == "event" and isinstance(e, dict)
        }
        talk = times["HangupPJSIP/2001-00000000"] - times["DialBeginPJSIP/2001-00000000"]
        assert talk == pytest.approx(8.961 - 1.735, abs=0.01)
        status = client.status()
        assert status["name"] == "pbx1"
        assert status["ami_version"] == "11.0.0"
        assert status["pbx_uptime"] is not None and status["pbx_uptime"] >= 70
        assert status["events_discarded_by_name"]["VarSet"] == 45
        assert status["events_dispatched"] == len(rec.events()) + 1  # + FullyBooted, kept for uptime
        assert status["frames_in"] >= 96


async def test_korean_caller_name_split_across_writes_arrives_intact() -> None:
    server = server_for([Transcript.named("inbound_queue_korean_name")], write_chunk=5)
    async with running(server) as (_client, rec, _):
        await asyncio.wait_for(server.wait_done(), 20)
        await until(lambda: K.LOST in rec.kinds())
        names = {e["CallerIDName"] for e in rec.events("Newchannel")}
        assert "홍길동" in names


async def test_send_action_ping_and_unknown_action() -> None:
    server = AmiServer([Transcript.named("answered_mobile")], secret=SECRET, speed="real")
    async with running(server) as (client, rec, _):
        await until(lambda: K.RESYNCED in rec.kinds())
        pong = await client.send_action({"Action": "Ping"})
        assert pong["Ping"] == "Pong"
        error = await client.send_action({"Action": "NoSuchThing"})
        assert error["Response"] == "Error"
        assert "Invalid/unknown command" in error["Message"]


async def test_send_action_when_not_connected_raises() -> None:
    client = PbxClient(settings("nowhere", 9), Recorder(), WANTED)
    with pytest.raises(AmiError):
        await client.send_action({"Action": "Ping"})


async def test_drop_mid_call_reconnects_and_resyncs_live_channels() -> None:
    mobile = Transcript.named("answered_mobile")
    # Drop the TCP connection right after both legs were bridged (mid-call).
    bridged = [i for i, b in enumerate(mobile.body) if b.event_name == "BridgeEnter"][-1] + 1
    server = server_for([SessionPlan(mobile, drop_after=bridged), Transcript.named("answered_callee_hangs_up")])
    async with running(server) as (client, rec, _):
        await until(lambda: rec.kinds().count(K.RESYNCED) >= 2)
        kinds = rec.kinds()
        lost = kinds.index(K.LOST)
        assert kinds[lost + 1 : lost + 5] == [K.CONNECTED, K.AUTHENTICATED, K.RESYNC_STARTED, K.RESYNCED]
        # Channels alive when the connection dropped, from what the listener saw.
        first_session = rec.log[
            : next(
                i
                for i, (_, k, p, _) in enumerate(rec.log)
                if k == "session" and isinstance(p, SessionChange) and p.kind is K.LOST
            )
        ]
        born = {
            p["Uniqueid"]
            for _, k, p, _ in first_session
            if k == "event" and isinstance(p, dict) and p["Event"] == "Newchannel"
        }
        dead = {
            p["Uniqueid"]
            for _, k, p, _ in first_session
            if k == "event" and isinstance(p, dict) and p["Event"] == "Hangup"
        }
        assert len(born - dead) == 2
        resynced = [c for c in rec.changes() if c.kind is K.RESYNCED][1]
        live = {c["Uniqueid"]: c for c in resynced.channels}
        assert born - dead <= set(live)
        for uid in born - dead:
            assert live[uid]["ChannelStateDesc"] == "Up"
            assert live[uid]["BridgeId"]
            assert live[uid]["Event"] == "CoreShowChannel"
        assert K.PBX_RESTARTED not in kinds  # a network blip, not a restart
        assert client.status()["reconnects"] >= 1


async def test_silent_peer_is_detected_by_ping_and_replaced() -> None:
    server = server_for(
        [
            SessionPlan(Transcript.named("answered_mobile"), silent_after=60),
            Transcript.named("answered_callee_hangs_up"),
        ]
    )
    async with running(server) as (client, rec, _):
        await until(lambda: K.RESYNCED in rec.kinds())
        resynced_at = time.monotonic()
        await until(lambda: K.LOST in rec.kinds(), within_s=5)
        detected_after = time.monotonic() - resynced_at
        lost = next(c for c in rec.changes() if c.kind is K.LOST)
        assert lost.detail == "peer silent"
        # ping_interval + ping_timeout = 0.5 s; generous upper bound for a busy machine.
        assert detected_after < 0.5 + 1.5
        await until(lambda: rec.kinds().count(K.RESYNCED) >= 2)
        assert "peer silent" in (client.status()["last_error"] or "")


async def test_login_rejected_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    server = server_for([Transcript.named("login_failed")], loop_forever=True)
    with caplog.at_level(logging.ERROR, logger="gateway.calls.pbx.client"):
        async with running(server, name="pbxA") as (client, rec, _):
            await until(lambda: K.AUTH_FAILED in rec.kinds())
            window = 1.5
            await asyncio.sleep(window)
            attempts = rec.kinds().count(K.CONNECTED)
            # Auth backoff 0.2 s doubling up to 0.4 s, plus jitter: a handful, never a tight loop.
            assert 2 <= attempts <= 1 + window / 0.2
            status = client.status()
            assert not status["authenticated"]
            assert status["login_failures"] == rec.kinds().count(K.AUTH_FAILED)
            expected = "AMI login rejected for user 'gateway' on pbx 'pbxA' (Authentication failed)"
            assert status["last_error"] == expected
            failed = next(c for c in rec.changes() if c.kind is K.AUTH_FAILED)
            assert failed.detail == expected
            assert K.RESYNC_STARTED not in rec.kinds()
    assert any(r.getMessage() == expected for r in caplog.records)


async def test_wrong_secret_is_rejected_by_the_server() -> None:
    server = AmiServer([Transcript.named("answered_mobile")], secret="another", speed="fast")
    async with running(server) as (client, rec, _):
        await until(lambda: K.AUTH_FAILED in rec.kinds())
        assert client.status()["login_failures"] == 1
        assert not rec.events()


async def test_server_that_accepts_and_closes_does_not_cause_a_tight_loop() -> None:
    accepted = 0

    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    tcp = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    rec = Recorder()
    client = PbxClient(settings("slam", port, backoff_initial_s=0.1, backoff_max_s=0.4), rec, WANTED)
    task = asyncio.ensure_future(client.run())
    await asyncio.sleep(1.5)
    await client.stop()
    await asyncio.wait_for(task, 3)
    tcp.close()
    # 0.1, 0.2, 0.4, 0.4 ... (+ jitter up to 0.1): at most ~6 attempts in 1.5 s.
    assert 2 <= accepted <= 8
    assert client.status()["last_error"]


async def test_restart_mid_call_is_told_from_a_network_blip() -> None:
    server = server_for([Transcript.named("restart_during_call"), Transcript.named("restart_reconnect")])
    async with running(server) as (client, rec, _):
        await until(lambda: rec.kinds().count(K.RESYNCED) >= 2)
        shutdown = rec.events("Shutdown")
        assert shutdown and shutdown[0]["Restart"] == "True"
        kinds = rec.kinds()
        lost = kinds.index(K.LOST)
        # FullyBooted may be read in the same TCP read as the login answer, so the restart can be
        # reported before or after AUTHENTICATED; it must come before the resync and before any
        # event of the new PBX life.
        assert sorted(kinds[lost + 1 : lost + 4]) == sorted([K.CONNECTED, K.AUTHENTICATED, K.PBX_RESTARTED])
        assert kinds[lost + 1] is K.CONNECTED
        assert kinds[lost + 4 : lost + 6] == [K.RESYNC_STARTED, K.RESYNCED]
        restarted = next(c for c in rec.changes() if c.kind is K.PBX_RESTARTED)
        assert restarted.uptime == 0
        first_resync = next(c for c in rec.changes() if c.kind is K.RESYNCED)
        assert first_resync.uptime == 65
        # The Shutdown event comes before the LOST of that session.
        order = [
            p["Event"] if isinstance(p, dict) else p.kind
            for _, _, p, _ in rec.log
            if isinstance(p, dict | SessionChange)
        ]
        assert order.index("Shutdown") < order.index(K.LOST)
        assert client.status()["pbx_uptime"] is not None


async def test_two_pbxes_side_by_side_keep_separate_state() -> None:
    server_a = server_for([Transcript.named("answered_mobile")])
    server_b = server_for([Transcript.named("landline")])
    async with (
        running(server_a, name="north") as (client_a, rec_a, _),
        running(server_b, name="south") as (client_b, rec_b, _),
    ):
        await asyncio.wait_for(asyncio.gather(server_a.wait_done(), server_b.wait_done()), 10)
        await until(lambda: K.LOST in rec_a.kinds() and K.LOST in rec_b.kinds())
        assert rec_a.pbx_names() == {"north"} and rec_b.pbx_names() == {"south"}
        assert {e["Channel"] for e in rec_a.events("Newchannel")} == {"PJSIP/2001-00000000", "PJSIP/carrier-00000001"}
        assert {e["Channel"] for e in rec_b.events("Newchannel")} == {"PJSIP/2002-00000010", "PJSIP/carrier-00000011"}
        assert client_a.status()["name"] == "north" and client_b.status()["name"] == "south"
        assert client_a.status()["events_dispatched"] == len(rec_a.events()) + 1
        assert client_b.status()["events_dispatched"] == len(rec_b.events()) + 1


async def test_stop_returns_promptly_while_connected_and_while_backing_off() -> None:
    server = AmiServer([Transcript.named("answered_mobile")], secret=SECRET, speed="real")
    async with running(server) as (client, rec, task):
        await until(lambda: K.RESYNCED in rec.kinds())
        started = time.monotonic()
        await client.stop()
        await asyncio.wait_for(task, 3)
        assert time.monotonic() - started < 2.0
        assert rec.kinds()[-1] is K.LOST and rec.changes()[-1].detail == "stopped"
        assert not client.status()["connected"]

    # Nothing listens on this port: the client is sleeping in its backoff when stopped.
    rec2 = Recorder()
    gone = settings("gone", server.port, backoff_initial_s=5.0, backoff_max_s=30.0)
    client2 = PbxClient(gone, rec2, WANTED)
    task2 = asyncio.ensure_future(client2.run())
    await until(lambda: client2.status()["last_error"] is not None)
    started = time.monotonic()
    await client2.stop()
    await asyncio.wait_for(task2, 3)
    assert time.monotonic() - started < 2.0


async def test_loop_forever_replays_with_fresh_ids() -> None:
    server = server_for([Transcript.named("busy")], loop_forever=True)
    async with running(server) as (_client, rec, _):
        await until(lambda: len(rec.events("Newchannel")) >= 6)
        uids = [e["Uniqueid"] for e in rec.events("Newchannel")]
        assert len(uids) == len(set(uids))
        assert K.LOST not in rec.kinds()  # one connection, the replay goes on
        assert server.sessions_started >= 3
        assert server.blocks_sent > 100


async def test_sessions_replayed_out_of_recording_order_do_not_look_like_a_restart() -> None:
    # landline was recorded after answered_mobile: its Uptime (recorded) is larger.
    server = server_for([Transcript.named("landline"), Transcript.named("answered_mobile")])
    async with running(server) as (_client, rec, _):
        await until(lambda: rec.kinds().count(K.RESYNCED) >= 2)
        uptimes = [c.uptime for c in rec.changes() if c.kind is K.RESYNCED]
        assert uptimes[0] is not None and uptimes[1] is not None
        assert uptimes[1] >= uptimes[0] > 70
        assert K.PBX_RESTARTED not in rec.kinds()


async def test_pbx_down_for_a_while_is_one_reconnect_and_session_changes_use_the_pbx_clock() -> None:
    """The PBX dies mid-call (the connection drops, the port then refuses) and a restarted one
    listens later. Refused attempts are counted apart from reconnections; LOST is dated when
    the connection was lost and the new session's changes by the PBX's clock (its event stamps:
    here the recording's, months away from this machine's clock), as the events are."""
    before = Transcript.named("restart_during_call")
    cut = max(i for i, b in enumerate(before.body) if b.event_name == "BridgeEnter") + 1
    dying = server_for([SessionPlan(before, drop_after=cut)])  # its only session: then it refuses
    back: AmiServer | None = None
    async with running(dying) as (client, rec, _):
        try:
            await until(lambda: K.LOST in rec.kinds())
            await until(lambda: "cannot connect" in (client.status()["last_error"] or ""))
            refused_at = client.status()["last_error_at"]
            await until(lambda: client.status()["last_error_at"] != refused_at)
            assert client.status()["reconnects"] == 0
            back = server_for([Transcript.named("restart_reconnect")], port=dying.port)
            await back.start()
            await until(lambda: rec.kinds().count(K.RESYNCED) >= 2)
            status = client.status()
        finally:
            if back is not None:
                await back.stop()
    assert status["reconnects"] == 1
    assert status["connect_attempts"] >= 4  # the first, two refused at least, the one that logged in
    times = [(p, at) for _, kind, p, at in rec.log]
    lost_i = next(i for i, (p, _) in enumerate(times) if isinstance(p, SessionChange) and p.kind is K.LOST)
    last_event_at = next(at for p, at in reversed(times[:lost_i]) if isinstance(p, dict))
    assert 0 <= times[lost_i][1] - last_event_at < 1.0
    changes = {p.kind: at for p, at in times[lost_i:] if isinstance(p, SessionChange)}
    assert 0 <= changes[K.RESYNCED] - changes[K.PBX_RESTARTED] < 1.0
