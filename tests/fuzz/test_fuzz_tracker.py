"""Fuzzing the CallTracker with recorded call events: drops, duplicates, reorderings, interleavings.

Whatever the stream, the tracker must not raise, must report each finished call at most once, must
keep its numbers sane (talk time >= 0, no more talk than the call lasted) and must hold nothing once
every call has hung up or expired.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.calls.pbx.mapping import TRACKED_EVENTS, to_leg_event
from gateway.domain.calls import CallEnded, CallTracker, ExternalDial, TrackerOutput
from gateway.domain.events import LegEvent
from gateway.domain.models import CallRecord
from gateway.domain.numbers import NumberPlan
from tests.support.transcripts import expected, timed_events

pytestmark = pytest.mark.fuzz

CALL_NAMES = sorted(name for name, want in expected().items() if want["calls"] != [])
_CHANNEL_SEQ = re.compile(r"-([0-9a-f]{8})(;[12])?$")


def leg_events(name: str, *, id_offset: int = 0, t0: float = 0.0, copy: int = 0) -> list[LegEvent]:
    """The recorded leg events of one transcript; `copy` makes its bridge ids unique (as Asterisk's are)."""
    out: list[LegEvent] = []
    for at, fields in timed_events(name, id_offset=id_offset, t0=t0):
        if fields.get("Event") not in TRACKED_EVENTS:
            continue
        event = to_leg_event({k: _unique(k, v, copy) for k, v in fields.items()} if copy else fields, at)
        if event is not None:
            out.append(event)
    return out


def _unique(key: str, value: str, copy: int) -> str:
    """Bridge ids and channel sequence numbers of copy `copy` (both are unique on a real PBX)."""
    if key in ("BridgeUniqueid", "BridgeId") and value:
        return f"{value}-copy{copy}"
    if key.endswith("Channel"):
        return _CHANNEL_SEQ.sub(lambda m: f"-{copy}{m[1][1:]}{m[2] or ''}", value)
    return value


_EVENTS = {name: leg_events(name) for name in CALL_NAMES}


def tracker() -> CallTracker:
    return CallTracker("pbx", NumberPlan(), ("carrier",), max_call_age_s=3600)


def run(t: CallTracker, events: list[LegEvent]) -> list[TrackerOutput]:
    out: list[TrackerOutput] = []
    for event in events:
        out += t.handle(event)
    return out


def check_invariants(t: CallTracker, out: list[TrackerOutput], *, monotonic: bool) -> list[CallRecord]:
    records = [o.record for o in out if isinstance(o, CallEnded)]
    ids = [r.call_id for r in records]
    assert len(ids) == len(set(ids)), f"a call was reported twice: {ids}"
    dials = sum(1 for o in out if isinstance(o, ExternalDial))
    for o in out:
        if isinstance(o, CallEnded):
            assert 0 <= o.external_dials <= dials
            r = o.record
            assert r.talk_seconds >= 0
            if monotonic:
                assert r.ended_at >= r.started_at
                assert r.talk_seconds <= r.ended_at - r.started_at + 1e-6
                if r.answered_at is not None:
                    assert r.started_at <= r.answered_at <= r.ended_at
    return records


def assert_empty(t: CallTracker) -> None:
    """Nothing is held once every call is over (memory stays bounded)."""
    assert t.live_calls == 0 and t.live_legs == 0
    assert not t._groups, t._groups
    assert not t._bridges, t._bridges
    assert len(t._gone) <= t._tombstones


# ----------------------------------------------------------------------------- mutated streams

Op = tuple[str, int, int]


def mutate(events: list[LegEvent], ops: list[Op]) -> list[LegEvent]:
    out = list(events)
    for kind, a, b in ops:
        if not out:
            break
        i, j = a % len(out), b % len(out)
        if kind == "drop":
            del out[i]
        elif kind == "dup":
            out.insert(j, out[i])
        elif kind == "swap":
            out[i], out[j] = out[j], out[i]
        elif kind == "move":
            out.insert(j, out.pop(i))
    return out


ops = st.lists(
    st.tuples(st.sampled_from(["drop", "dup", "swap", "move"]), st.integers(0, 10_000), st.integers(0, 10_000)),
    max_size=12,
)


@given(name=st.sampled_from(CALL_NAMES), mutations=ops, restamp=st.booleans())
@example(name="blind_transfer", mutations=[], restamp=False)
def test_dropped_duplicated_reordered_events_never_break_the_tracker(
    name: str, mutations: list[Op], restamp: bool
) -> None:
    events = mutate(_EVENTS[name], mutations)
    if restamp:
        # The order of arrival is the order of time (AMI stamps events as it sends them).
        stamps = sorted(e.at for e in events)
        events = [replace(e, at=at) for e, at in zip(events, stamps, strict=True)]
    t = tracker()
    out = run(t, events)
    out += t.expire(10**9)
    check_invariants(t, out, monotonic=restamp)
    assert_empty(t)


@given(name=st.sampled_from(CALL_NAMES))
def test_every_event_delivered_twice_changes_nothing(name: str) -> None:
    """An event repeated at once (a re-sent frame) decides nothing new."""
    once, twice = tracker(), tracker()
    want = run(once, _EVENTS[name])
    got = run(twice, [e for event in _EVENTS[name] for e in (event, event)])
    assert got == want
    assert_empty(twice)


@given(
    names=st.lists(st.sampled_from(CALL_NAMES), min_size=2, max_size=5, unique=True),
    offsets=st.lists(st.floats(0, 30, allow_nan=False), min_size=5, max_size=5),
)
def test_interleaved_calls_with_fresh_ids_keep_apart(names: list[str], offsets: list[float]) -> None:
    """Several recorded calls at once (fresh ids, shifted in time) give the calls each gives alone.

    Distinct recordings only: an OriginateResponse names the desk phone, not the channel, so two
    click-to-calls to one phone at once cannot be told apart (a known limit, see FUZZING.md).
    """
    alone: list[tuple[object, ...]] = []
    merged: list[tuple[float, int, int, LegEvent]] = []
    for copy, name in enumerate(names, start=1):
        events = leg_events(name, id_offset=copy * 1000, t0=offsets[copy - 1], copy=copy)
        t = tracker()
        alone += [_shape(o) for o in run(t, events)]
        merged += [(e.at, copy, i, e) for i, e in enumerate(events)]
    merged.sort(key=lambda item: item[:3])
    t = tracker()
    out = run(t, [e for *_, e in merged])
    check_invariants(t, out, monotonic=True)
    assert sorted(map(_shape, out), key=repr) == sorted(alone, key=repr)
    out += t.expire(10**9)
    assert_empty(t)


def _shape(o: TrackerOutput) -> tuple[object, ...]:
    """What a decision says, without the times shared by the copies."""
    if isinstance(o, ExternalDial):
        return ("dial", o.call_id, o.extension, o.number.e164, o.trunk, o.direction, o.recovered)
    r = o.record
    return (
        "ended",
        r.call_id,
        r.direction,
        r.extension,
        r.party,
        r.disposition,
        r.cause,
        r.talk_seconds,
        tuple((tr.kind, tr.to) for tr in r.transfers),
        o.external_dials,
    )


@given(name=st.sampled_from(CALL_NAMES), cut=st.integers(0, 10_000), restart=st.booleans())
def test_connection_lost_mid_call_then_resync_or_restart_ends_every_call_once(
    name: str, cut: int, restart: bool
) -> None:
    events = _EVENTS[name]
    cut %= len(events) + 1
    t = tracker()
    out = run(t, events[:cut])
    at = events[-1].at + 1
    if restart:
        out += t.pbx_restarted(at)
    else:
        t.resync_started()
        out += t.resynced(at, [])
    # The rest of the stream arrives late (e.g. a replayed buffer): nothing is resurrected.
    late = run(t, events[cut:])
    check_invariants(t, out + late, monotonic=True)
    assert not [o for o in late if isinstance(o, CallEnded)] or t.live_calls == 0
    out += late + t.expire(10**9)
    check_invariants(t, out, monotonic=True)
    assert_empty(t)
