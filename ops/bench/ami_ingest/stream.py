"""The benchmark's AMI byte streams, built from the recorded transcripts.

* `build_ingest_stream`: every call scenario's event blocks, repeated until about N
  events, with fresh Uniqueid/Linkedid values (`fresh_ids`) and fresh citizen numbers per
  repetition, so no call id and no mobile number ever repeats (the outbox guard would
  otherwise answer "duplicate" or "rate_limited" instead of lettering).
* `expected_outcome`: what the real pipeline must decide for such a stream, computed with
  the pure domain code (the same parse/map/track/decide steps, without TCP, Redis or
  carriers); it also gives the index of the last call-ending event, where the stream is cut
  so that "the last event was processed" is observable as "the last call was reported".
* `build_paced_calls`: answered_mobile calls cut in three segments around the carrier-leg
  DialBegin, for the lettering latency run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.calls.pbx.mapping import TRACKED_EVENTS, to_leg_event
from gateway.calls.pbx.protocol import CLIENT_EVENTS, parse_frame
from gateway.calls.pipeline import plan_of
from gateway.domain.calls import CallEnded, CallTracker, ExternalDial
from gateway.domain.lettering import Letter, decide
from gateway.domain.rules import Rules
from gateway.sim.amiserver import CYCLE_ID_OFFSET, TRANSCRIPTS_DIR, Transcript, fresh_ids

EOF = b"\r\n\r\n"
EOL = b"\r\n"

#: Transcripts that are not calls: a rejected login and a Ping/Logoff exchange.
NOT_CALLS = frozenset({"login_failed", "ping"})
#: Session-level events a continuous stream does not repeat: they answer a login that does not
#: happen mid-stream (FullyBooted, SuccessfulAuth), or end the session (Shutdown; panoramisk
#: would drop the connection on it).
SESSION_EVENTS = frozenset({b"FullyBooted", b"SuccessfulAuth", b"Shutdown"})

#: A Korean mobile number as the PBX writes it (national format, never inside a longer number).
_MOBILE = re.compile(rb"(?<![0-9])010[0-9]{8}(?![0-9])")
_CARRIER_DIAL = b"\r\nDestChannel: PJSIP/carrier-"
#: A bridge id (Asterisk names bridges with a UUID).
_UUID = re.compile(rb"[0-9a-f]{8}(-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def fresh_bridges(data: bytes, copy: int) -> bytes:
    """Give every bridge id in `data` a first group of its own (copy number in hex): distinct
    across copies, still distinct within one (Asterisk never reuses a bridge id, and copies
    sharing one would look like one huge conference to the tracker)."""
    return _UUID.sub(lambda m: b"%08x" % (copy % 2**32) + m[1], data)


def event_name(block: bytes) -> bytes:
    """The event name of an ``Event:`` frame (raw bytes)."""
    nl = block.find(EOL)
    return block[7 : nl if nl >= 0 else len(block)]


def call_transcripts(directory: Path = TRANSCRIPTS_DIR) -> list[Transcript]:
    """Every recorded call scenario, in name order."""
    return [Transcript.load(p) for p in sorted(directory.glob("*.ami")) if p.stem not in NOT_CALLS]


def event_blocks(transcript: Transcript) -> list[bytes]:
    """The event frames a continuous stream carries for one scenario (terminators kept)."""
    return [b.raw for b in transcript.body if b.is_event and event_name(b.raw) not in SESSION_EVENTS]


class NumberAllocator:
    """Hands out distinct mobile numbers (010 + 8 digits) from a base."""

    def __init__(self, base: int) -> None:
        self._next = base

    def take(self) -> bytes:
        number = b"010%08d" % (self._next % 100_000_000)
        self._next += 1
        return number

    def rewrite(self, data: bytes) -> bytes:
        """Give every distinct mobile number in `data` a new number (consistently within `data`)."""
        mapping: dict[bytes, bytes] = {}

        def repl(m: re.Match[bytes]) -> bytes:
            new = mapping.get(m[0])
            if new is None:
                new = mapping[m[0]] = self.take()
            return new

        return _MOBILE.sub(repl, data)


def _fresh(blocks: list[bytes], id_offset: int, numbers: NumberAllocator) -> list[bytes]:
    """One repetition of a scenario: fresh ids, bridge ids and numbers, rewritten on the joined bytes."""
    joined = numbers.rewrite(fresh_bridges(fresh_ids(b"".join(blocks), id_offset), id_offset // CYCLE_ID_OFFSET))
    parts = joined.split(EOF)
    parts.pop()  # the empty tail after the last terminator
    return [p + EOF for p in parts]


@dataclass(frozen=True, slots=True)
class IngestStream:
    """The throughput stream: N event frames, concatenated in `chunks` cut at frame boundaries."""

    chunks: tuple[bytes, ...]
    events: int
    size: int
    repetitions: int
    scenarios: tuple[str, ...]
    expected_calls: int
    expected_letterings: int
    expected_external_dials: int
    tracked_events: int  # events the gateway's prefilter lets through (parsed and mapped)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def _repetitions(transcripts: list[Transcript], events: int, number_base: int) -> Iterator[tuple[int, list[bytes]]]:
    """(repetition, fresh blocks of one scenario) until about `events` events were produced."""
    templates = [event_blocks(t) for t in transcripts]
    numbers = NumberAllocator(number_base)
    produced = 0
    rep = 0
    while produced < events:
        offset = (rep + 1) * CYCLE_ID_OFFSET
        for blocks in templates:
            if produced >= events:
                break
            fresh = _fresh(blocks, offset, numbers)
            produced += len(fresh)
            yield rep, fresh
        rep += 1


@dataclass(frozen=True, slots=True)
class Expected:
    """Counts up to and including `last_call_end` (what a stream cut there produces)."""

    calls: int
    letterings: int
    external_dials: int
    tracked_events: int
    last_call_end: int  # index of the event that ends the last call (-1: none)


def expected_outcome(blocks: list[bytes], rules: Rules, *, pbx: str, trunks: tuple[str, ...]) -> Expected:
    """What the pipeline decides for these frames, with the domain code only.

    Mirrors `AmiProtocol` (prefilter, UTF-8 decode, `parse_frame`) and `CallPipeline`
    (`to_leg_event`, `CallTracker.handle`, `decide`); events carry no Timestamp header, so
    the time passed along is irrelevant to the counts.
    """
    wanted = frozenset(n.encode("ascii") for n in TRACKED_EVENTS | CLIENT_EVENTS)
    tracker = CallTracker(pbx, plan_of(rules), trunks)
    calls = letterings = dials = tracked = 0
    at_end = Expected(0, 0, 0, 0, -1)
    for i, block in enumerate(blocks):
        if event_name(block) not in wanted:
            continue
        tracked += 1
        leg_event = to_leg_event(parse_frame(block[:-4].decode("utf-8", "replace")), 0.0)
        if leg_event is None:
            continue
        for output in tracker.handle(leg_event):
            if isinstance(output, ExternalDial):
                dials += 1
                if isinstance(decide(output, rules), Letter):
                    letterings += 1
            elif isinstance(output, CallEnded):
                calls += 1
                at_end = Expected(calls, letterings, dials, tracked, i)
    return at_end


def build_ingest_stream(
    events: int, rules: Rules, *, pbx: str, trunks: tuple[str, ...], number_base: int = 0, chunk_bytes: int = 256 * 1024
) -> IngestStream:
    """About `events` event frames of every call scenario, cut after the last call's end."""
    transcripts = call_transcripts()
    blocks: list[bytes] = []
    reps = 0
    for rep, fresh in _repetitions(transcripts, events, number_base):
        blocks.extend(fresh)
        reps = rep + 1
    cut = expected_outcome(blocks, rules, pbx=pbx, trunks=trunks)
    if cut.last_call_end < 0:
        raise ValueError("the stream ends no call: use more events")
    blocks = blocks[: cut.last_call_end + 1]
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for block in blocks:
        current.append(block)
        size += len(block)
        if size >= chunk_bytes:
            chunks.append(b"".join(current))
            current, size = [], 0
    if current:
        chunks.append(b"".join(current))
    return IngestStream(
        chunks=tuple(chunks),
        events=len(blocks),
        size=sum(len(c) for c in chunks),
        repetitions=reps,
        scenarios=tuple(t.name for t in transcripts),
        expected_calls=cut.calls,
        expected_letterings=cut.letterings,
        expected_external_dials=cut.external_dials,
        tracked_events=cut.tracked_events,
    )


# ------------------------------------------------------------------------------ paced calls


@dataclass(frozen=True, slots=True)
class PacedCall:
    """One answered_mobile call cut around its carrier-leg DialBegin."""

    number: str  # E.164 of the citizen (unique per call)
    before: bytes  # every event up to the carrier-leg DialBegin
    dial: bytes  # the carrier-leg DialBegin frame alone
    after: bytes  # the rest of the call (answer, bridge, hang-up, noise)


def build_paced_calls(
    count: int, *, id_base: int, number_base: int, scenario: str = "answered_mobile"
) -> list[PacedCall]:
    """`count` copies of one call scenario with fresh ids and a distinct number each."""
    blocks = event_blocks(Transcript.named(scenario))
    numbers = NumberAllocator(number_base)
    out: list[PacedCall] = []
    for k in range(count):
        fresh = _fresh(blocks, id_base + (k + 1) * CYCLE_ID_OFFSET, numbers)
        at = next(
            (i for i, b in enumerate(fresh) if b.startswith(b"Event: DialBegin\r\n") and _CARRIER_DIAL in b), None
        )
        if at is None:
            raise ValueError(f"{scenario}: no carrier-leg DialBegin")
        match = _MOBILE.search(fresh[at])
        if match is None:
            raise ValueError(f"{scenario}: the carrier-leg DialBegin names no mobile number")
        number = "+82" + match[0][1:].decode("ascii")
        out.append(PacedCall(number, b"".join(fresh[:at]), fresh[at], b"".join(fresh[at + 1 :])))
    return out
