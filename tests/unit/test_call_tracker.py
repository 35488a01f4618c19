"""CallTracker on recorded events (no network) and on the general cases the recordings do not
cover: interleaved concurrent calls, attended transfers, Local channels, resync and restart."""

from __future__ import annotations

import pytest

from gateway.calls.pbx.mapping import TRACKED_EVENTS, to_leg_event
from gateway.domain.calls import (
    CallEnded,
    CallTracker,
    ExternalDial,
    TrackerOutput,
    dialed_number,
    split_channel,
)
from gateway.domain.events import (
    AttendedTransferred,
    BridgeJoin,
    ChannelListed,
    DialStart,
    DialStop,
    LegGone,
    LegInfo,
    LegNew,
    LegShutdown,
    LegsJoined,
)
from gateway.domain.models import Direction, Disposition
from gateway.domain.numbers import NumberPlan
from tests.support.transcripts import expected, timed_events


def run(tracker: CallTracker, events: list[tuple[float, dict[str, str]]]) -> list[TrackerOutput]:
    out: list[TrackerOutput] = []
    for at, fields in events:
        if fields.get("Event") in TRACKED_EVENTS:
            leg_event = to_leg_event(fields, at)
            if leg_event is not None:
                out += tracker.handle(leg_event)
    return out


def tracker() -> CallTracker:
    return CallTracker("pbx", NumberPlan(), ("carrier",))


@pytest.mark.parametrize("name", sorted(expected()))
def test_recorded_scenarios(name: str) -> None:
    want = expected()[name]
    t = tracker()
    out = run(t, list(timed_events(name)))
    calls = [o.record for o in out if isinstance(o, CallEnded)]
    dials = [o for o in out if isinstance(o, ExternalDial)]
    assert t.live_calls == 0 and t.live_legs == 0, "every finished call is dropped"
    if want["calls"] != "any":
        assert isinstance(want["calls"], list)
        assert len(calls) == len(want["calls"])
        for w in want["calls"]:
            got = next(c for c in calls if c.extension == w["extension"] and c.party == w["party"])
            assert got.direction.value == w["direction"]
            assert got.disposition.value in w["disposition"]
            lo, hi = w["talk_seconds"]
            assert lo <= got.talk_seconds <= hi
    if want["lettering"] != "any":
        assert isinstance(want["lettering"], list)
        mobile = sorted((d.extension, d.number.e164) for d in dials if d.number.kind.value == "mobile")
        assert mobile == sorted((w["extension"], w["to"]) for w in want["lettering"])


def test_interleaved_concurrent_calls_keep_apart() -> None:
    """Four recorded calls running at once (fresh ids each), merged by time."""
    names = ["answered_mobile", "busy", "inbound_queue_korean_name", "blind_transfer"]
    merged: list[tuple[float, dict[str, str]]] = []
    for i, name in enumerate(names):
        merged += list(timed_events(name, id_offset=(i + 1) * 1000, t0=0.003 * i))
    merged.sort(key=lambda item: item[0])
    t = tracker()
    out = run(t, merged)
    calls = {c.record.disposition.value + ":" + c.record.direction.value for c in out if isinstance(c, CallEnded)}
    assert calls == {"answered:outbound", "busy:outbound", "answered:inbound"}
    assert len([o for o in out if isinstance(o, CallEnded)]) == 4
    assert len([o for o in out if isinstance(o, ExternalDial)]) == 3
    assert t.live_calls == 0


def test_reconnect_gap_resync_ends_missing_and_keeps_live() -> None:
    """Events stop mid-call (connection lost); the channel list after reconnect decides."""
    events = list(timed_events("answered_mobile"))
    cut = next(i for i, (_, f) in enumerate(events) if f.get("Event") == "BridgeEnter")
    t = tracker()
    out = run(t, events[: cut + 2])
    assert [type(o) for o in out] == [ExternalDial]
    t.resync_started()
    # The PBX says the call is gone (it ended while we were away).
    ended = t.resynced(events[-1][0], [])
    assert len(ended) == 1 and isinstance(ended[0], CallEnded)
    assert ended[0].record.cause == "lost_while_disconnected"
    assert ended[0].record.disposition is Disposition.ANSWERED
    assert t.live_calls == 0


def _info(leg: str, group: str, channel: str, caller: str = "", exten: str = "", state: int = 0) -> LegInfo:  # noqa: PLR0917
    tech, endpoint = split_channel(channel)
    return LegInfo(leg, group, channel, tech, endpoint, caller, exten, state)


def test_resync_rebuilds_unknown_ringing_call_once() -> None:
    """A call that began while we were disconnected is rebuilt; a ringing citizen is lettered."""
    t = tracker()
    t.resync_started()
    phone = _info("100.1", "100.1", "PJSIP/2002-00000010", "2002", "01055551234", 6)
    trunk = _info("100.2", "100.1", "PJSIP/carrier-00000011", "01055551234", "s", 5)
    listed = [
        ChannelListed(50.0, trunk, "AppDial", "(Outgoing Line)", "", 2.0),
        ChannelListed(50.0, phone, "Dial", "PJSIP/01055551234@carrier,20", "", 3.0),
    ]
    out = t.resynced(50.0, listed)
    dials = [o for o in out if isinstance(o, ExternalDial)]
    assert len(dials) == 1 and dials[0].recovered and dials[0].extension == "2002"
    assert dials[0].number.e164 == "+821055551234"
    # The same list again (a second resync) emits nothing new.
    t.resync_started()
    assert t.resynced(51.0, listed) == []
    out = t.handle(LegGone(60.0, "100.2", 16)) + t.handle(LegGone(60.0, "100.1", 16))
    record = next(o.record for o in out if isinstance(o, CallEnded))
    assert record.recovered and record.direction is Direction.OUTBOUND


def test_pbx_restart_ends_everything() -> None:
    events = list(timed_events("coreshowchannels"))
    cut = next(i for i, (_, f) in enumerate(events) if f.get("Event") == "CoreShowChannel")
    t = tracker()
    run(t, events[:cut])
    assert t.live_calls == 2
    out = t.pbx_restarted(100.0)
    assert {o.record.cause for o in out if isinstance(o, CallEnded)} == {"pbx_restart"}
    assert t.live_calls == 0 and t.live_legs == 0


def test_phone_originated_call_with_outside_line_prefix_and_early_media() -> None:
    """2005 dials 9-01012345678 itself; the carrier answers 183 (no Ringing) then 200."""
    t = tracker()
    phone = _info("7.1", "7.1", "PJSIP/2005-00000001", "2005", "901012345678", 6)
    trunk = _info("7.2", "7.1", "PJSIP/carrier-00000002", "", "s", 0)
    out = t.handle(LegNew(0.0, phone)) + t.handle(LegNew(0.1, trunk))
    out += t.handle(DialStart(0.1, phone, trunk, "901012345678@carrier"))
    assert [(o.extension, o.number.e164) for o in out if isinstance(o, ExternalDial)] == [("2005", "+821012345678")]
    out = t.handle(DialStop(2.0, "7.1", "7.2", "ANSWER"))
    out += t.handle(BridgeJoin(2.0, "7.2", "b1")) + t.handle(BridgeJoin(2.0, "7.1", "b1"))
    out += t.handle(LegGone(32.0, "7.1", 16)) + t.handle(LegGone(32.0, "7.2", 16))
    record = next(o.record for o in out if isinstance(o, CallEnded))
    assert record.disposition is Disposition.ANSWERED and record.talk_seconds == pytest.approx(30.0)


def test_attended_transfer_folds_consultation_into_citizens_call() -> None:
    """2001 talks to a citizen, consults 2004, completes an attended transfer."""
    t = tracker()
    a = _info("1.1", "1.1", "PJSIP/2001-00000001", "2001", "01012345678", 6)
    c = _info("1.2", "1.1", "PJSIP/carrier-00000002", "01012345678", "", 6)
    b = _info("2.1", "2.1", "PJSIP/2001-00000003", "2001", "2004", 6)
    d = _info("2.2", "2.1", "PJSIP/2004-00000004", "2004", "", 6)
    for ev in (
        LegNew(0, a),
        LegNew(0, c),
        DialStart(0, a, c, "01012345678@carrier"),
        DialStop(1, "1.1", "1.2", "ANSWER"),
        BridgeJoin(1, "1.1", "x"),
        BridgeJoin(1, "1.2", "x"),
        LegNew(5, b),
        LegNew(5, d),
        DialStart(5, b, d, "2004"),
        DialStop(6, "2.1", "2.2", "ANSWER"),
        BridgeJoin(6, "2.1", "y"),
        BridgeJoin(6, "2.2", "y"),
    ):
        t.handle(ev)
    assert t.live_calls == 2
    t.handle(AttendedTransferred(8, "1.2", "2.1", "2.2"))
    assert t.live_calls == 1
    out: list[TrackerOutput] = []
    for gone in (
        LegGone(8, "1.1", 16),
        LegGone(8, "2.1", 16),
        BridgeJoin(8, "1.2", "y"),
        LegGone(20, "2.2", 16),
        LegGone(20, "1.2", 16),
    ):
        out += t.handle(gone)
    records = [o.record for o in out if isinstance(o, CallEnded)]
    assert len(records) == 1
    assert records[0].party == "+821012345678" and records[0].extension == "2001"
    assert [(tr.kind, tr.to) for tr in records[0].transfers] == [("attended", "2004")]
    assert t.live_calls == 0 and t.live_legs == 0


def test_local_channels_join_one_call() -> None:
    """Phone -> Local/;1 ... Local/;2 -> trunk (a dialplan macro in between)."""
    t = tracker()
    p = _info("3.1", "3.1", "PJSIP/2003-0000000a", "2003", "0212345678", 6)
    l1 = _info("3.2", "3.1", "Local/0212345678@out-0000001;1", "", "0212345678", 0)
    l2 = _info("3.3", "3.1", "Local/0212345678@out-0000001;2", "", "0212345678", 0)
    tr = _info("3.4", "3.1", "PJSIP/carrier-0000000b", "", "s", 0)
    out: list[TrackerOutput] = []
    for ev in (
        LegNew(0, p),
        LegNew(0, l1),
        LegNew(0, l2),
        LegsJoined(0, "3.2", "3.3", "local"),
        DialStart(0, p, l1, "Local/0212345678@out"),
        DialStart(0.1, l2, tr, "PJSIP/0212345678@carrier"),
    ):
        out += t.handle(ev)
    dial = next(o for o in out if isinstance(o, ExternalDial))
    assert dial.extension == "2003" and dial.number.kind.value == "landline"
    for leg in ("3.4", "3.3", "3.2", "3.1"):
        out += t.handle(LegGone(5, leg, 17))
    record = next(o.record for o in out if isinstance(o, CallEnded))
    assert record.disposition is Disposition.BUSY


def test_stale_calls_expire_and_late_events_do_not_resurrect() -> None:
    t = CallTracker("pbx", NumberPlan(), ("carrier",), max_call_age_s=60)
    p = _info("9.1", "9.1", "PJSIP/2001-00000001", "2001", "", 6)
    t.handle(LegNew(0, p))
    out = t.expire(1000)
    assert len(out) == 1 and isinstance(out[0], CallEnded) and out[0].record.cause == "expired"
    assert t.handle(LegNew(1001, p)) == [] and t.live_calls == 0


def test_memory_is_bounded_over_many_calls() -> None:
    t = tracker()
    for i in range(50):
        for at, fields in timed_events("busy", id_offset=i * 10, t0=i * 10.0):
            if fields.get("Event") in TRACKED_EVENTS:
                leg_event = to_leg_event(fields, at)
                if leg_event is not None:
                    t.handle(leg_event)
    assert t.live_calls == 0 and t.live_legs == 0
    assert len(t._gone) <= 8192


@pytest.mark.parametrize(
    ("dial", "number"),
    [
        ("01012345678@carrier", "01012345678"),
        ("PJSIP/01012345678@carrier,20", "01012345678"),
        ("PJSIP/carrier/sip:01012345678@10.0.0.1:5060", "01012345678"),
        ("SIP/trunk/901012345678", "901012345678"),
        ("2001", "2001"),
    ],
)
def test_dialed_number(dial: str, number: str) -> None:
    assert dialed_number(dial) == number


def test_pbx_shutdown_soft_hangup_is_the_cause_of_only_the_calls_it_cut() -> None:
    """`core restart now`: SoftHangupRequest Cause 4 on each live channel, then Hangup Cause 16.
    Calls running beside it that ended before (their own SoftHangupRequest has another Cause)
    keep their causes."""
    merged: list[tuple[float, dict[str, str]]] = []
    for i, name in enumerate(["answered_mobile", "busy", "restart_during_call"]):
        merged += list(timed_events(name, id_offset=(i + 1) * 1000, t0=0.002 * i))
    merged.sort(key=lambda item: item[0])
    t = tracker()
    records = [o.record for o in run(t, merged) if isinstance(o, CallEnded)]
    assert sorted((r.cause, r.disposition.value) for r in records) == [
        ("busy", "busy"),
        ("normal", "answered"),
        ("pbx_restart", "answered"),
    ]
    restarted = next(r for r in records if r.cause == "pbx_restart")
    assert 2 <= restarted.talk_seconds <= 5
    assert t.live_calls == 0


def test_pbx_shutdown_while_ringing_keeps_the_disposition() -> None:
    t = tracker()
    phone = _info("5.1", "5.1", "PJSIP/2001-00000001", "2001", "01012345678", 6)
    trunk = _info("5.2", "5.1", "PJSIP/carrier-00000002", "", "s", 5)
    for ev in (
        LegNew(0, phone),
        LegNew(0.1, trunk),
        DialStart(0.1, phone, trunk, "01012345678@carrier"),
        LegShutdown(3.0, "5.2"),
        LegShutdown(3.0, "5.1"),
        DialStop(3.0, "5.1", "5.2", "CANCEL"),
    ):
        t.handle(ev)
    out = t.handle(LegGone(3.0, "5.2", 16)) + t.handle(LegGone(3.0, "5.1", 16))
    record = next(o.record for o in out if isinstance(o, CallEnded))
    assert record.disposition is Disposition.CANCELLED and record.cause == "pbx_restart"


@pytest.mark.parametrize("noticed_by", ["restart", "resync"])
def test_calls_gone_after_a_reconnect_end_when_the_connection_was_lost(noticed_by: str) -> None:
    """The connection is lost mid-call; the PBX comes back much later (restarted, or listing no
    channel). The calls ended when the connection was lost, not when that was noticed."""
    events = [(at, f) for at, f in timed_events("coreshowchannels") if f.get("Event") != "CoreShowChannel"]
    bridged = [at for at, f in events if f.get("Event") == "BridgeEnter"]
    cut = max(i for i, (_, f) in enumerate(events) if f.get("Event") == "BridgeEnter") + 1
    t = tracker()
    run(t, events[:cut])
    assert t.live_calls == 2
    lost = bridged[-1] + 2.0
    t.connection_lost(lost)
    t.connection_lost(lost + 1.0)  # a second loss before any resync: the first one counts
    if noticed_by == "restart":
        out = t.pbx_restarted(lost + 60.0)
        t.resync_started()
        out += t.resynced(lost + 60.1, [])
    else:
        t.resync_started()
        out = t.resynced(lost + 60.0, [])
    records = [o.record for o in out if isinstance(o, CallEnded)]
    assert len(records) == 2
    for r in records:
        assert r.ended_at == pytest.approx(lost)
        assert r.talk_seconds == pytest.approx(lost - max(bridged), abs=0.01)
        assert r.cause == ("pbx_restart" if noticed_by == "restart" else "lost_while_disconnected")
    # The loss was settled by that resync: a later restart is dated by itself.
    phone = _info("8.1", "8.1", "PJSIP/2001-00000009", "2001", "", 6)
    t.handle(LegNew(lost + 70.0, phone))
    (late,) = [o.record for o in t.pbx_restarted(lost + 80.0) if isinstance(o, CallEnded)]
    assert late.ended_at == lost + 80.0


def test_a_call_alive_after_the_reconnect_keeps_its_real_end() -> None:
    events = list(timed_events("answered_mobile"))
    cut = max(i for i, (_, f) in enumerate(events) if f.get("Event") == "BridgeEnter") + 1
    t = tracker()
    run(t, events[:cut])
    t.connection_lost(events[cut][0])
    t.resync_started()
    listed = [
        ChannelListed(
            events[cut][0] + 1.0,
            LegInfo(f["Uniqueid"], f["Linkedid"], f["Channel"], *split_channel(f["Channel"]), "", "", 6),
            "",
            "",
            "",
            3.0,
        )
        for _, f in events[:cut]
        if f.get("Event") == "Newchannel"
    ]
    assert t.resynced(events[cut][0] + 1.0, listed) == []
    out = run(t, events[cut:])
    (record,) = [o.record for o in out if isinstance(o, CallEnded)]
    assert record.ended_at == pytest.approx(max(at for at, f in events if f.get("Event") == "Hangup"))
    assert record.cause == "normal" and 4 <= record.talk_seconds <= 7
