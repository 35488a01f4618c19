"""Fuzzing the AMI framing layer (`gateway.calls.pbx.protocol.AmiProtocol`) with recorded bytes.

* Any split of a recorded session into TCP reads yields exactly the events of the unsplit stream.
* Garbage between recorded frames (random bytes, invalid UTF-8, truncated frames, lines without a
  colon, responses nobody asked for) never raises, is counted, and the next good frame still
  arrives intact.
* A frame over `MAX_BUFFER` closes the connection with a clear log line, whatever the reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.calls.pbx.mapping import TRACKED_EVENTS
from gateway.calls.pbx.protocol import MAX_BUFFER, AmiCounters, AmiProtocol, parse_frame
from gateway.sim.amiserver import Transcript

pytestmark = pytest.mark.fuzz

TRANSCRIPTS = Path(__file__).resolve().parents[2] / "gateway" / "data" / "transcripts"
ALL_AMI = sorted(p.stem for p in TRANSCRIPTS.glob("*.ami"))
BANNER = b"Asterisk Call Manager/11.0.0\r\n"
EOF = b"\r\n\r\n"

_LOADED: dict[str, Transcript] = {}


def transcript(name: str) -> Transcript:
    if name not in _LOADED:
        _LOADED[name] = Transcript.named(name)
    return _LOADED[name]


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured_logs(level: int, name: str = "gateway.calls.pbx.protocol") -> Iterator[list[logging.LogRecord]]:
    """caplog for one hypothesis example (function-scoped fixtures are shared between examples)."""
    records: list[logging.LogRecord] = []
    logger = logging.getLogger(name)
    handler = _ListHandler(records)
    handler.setLevel(level)
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, old) if old else level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class Factory:
    """Stands in for panoramisk's Manager (the protocol's `factory`): receives unsolicited messages."""

    def __init__(self) -> None:
        self.dispatched: list[Any] = []

    def dispatch(self, message: Any) -> None:
        self.dispatched.append(message)


class Fed:
    """One protocol instance over a fake transport, recording what it hands on."""

    def __init__(self) -> None:
        self.events: list[dict[str, str]] = []
        self.lost: list[BaseException | None] = []
        self.proto = AmiProtocol(
            TRACKED_EVENTS, lambda e, _at: self.events.append(e), self.lost.append, AmiCounters(), "fuzz"
        )
        self.transport = FakeTransport()
        self.proto.connection_made(self.transport)
        self.proto.factory = Factory()

    def feed(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            if self.transport.closed:
                break
            self.proto.data_received(chunk)

    def summary(self) -> tuple[Any, ...]:
        c = self.proto.counters
        return (
            self.events,
            c.frames_in,
            c.dispatched,
            c.decode_errors,
            c.malformed,
            dict(c.discarded),
            self.proto.version,
            self.transport.closed,
        )


def cut(raw: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(raw), *(p % (len(raw) + 1) for p in points)})
    return [raw[a:b] for a, b in pairwise(edges)]


@given(name=st.sampled_from(ALL_AMI), points=st.lists(st.integers(min_value=0), max_size=40))
@example(name="inbound_queue_korean_name", points=[])
async def test_any_split_of_a_recorded_session_yields_the_same_events(name: str, points: list[int]) -> None:
    raw = (TRANSCRIPTS / f"{name}.ami").read_bytes()
    whole, split = Fed(), Fed()
    whole.feed([raw])
    split.feed(cut(raw, points))
    assert split.summary() == whole.summary()
    assert whole.proto.counters.decode_errors == 0 and whole.proto.counters.malformed == 0


async def test_byte_by_byte_equals_whole_on_every_transcript() -> None:
    for name in ALL_AMI:
        raw = (TRANSCRIPTS / f"{name}.ami").read_bytes()
        whole, split = Fed(), Fed()
        whole.feed([raw])
        split.feed([raw[i : i + 1] for i in range(len(raw))])
        assert split.summary() == whole.summary(), name


# ------------------------------------------------------------------------------ garbage frames


def _frames(name: str) -> list[bytes]:
    return [b.raw for b in transcript(name).blocks[1:]]  # block 0 is the banner


GOOD_FRAMES = [f for name in ALL_AMI for f in _frames(name) if f.endswith(EOF)]
WANTED_FRAMES = [
    f
    for f in GOOD_FRAMES
    if f.startswith(b"Event: ") and f[7 : f.find(b"\r\n")].decode() in TRACKED_EVENTS and b"ActionID" not in f
]


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """One piece of broken input that ends on a frame boundary."""
    frame = draw(st.sampled_from(GOOD_FRAMES))
    kind = draw(
        st.sampled_from(
            ["random", "truncated", "bad_utf8", "no_colon", "response", "event_noise", "crlf", "huge_header"]
        )
    )
    if kind == "random":
        body = draw(st.binary(max_size=300))
    elif kind == "truncated":
        body = frame[: draw(st.integers(0, max(0, len(frame) - 5)))]
    elif kind == "bad_utf8":
        at = draw(st.integers(0, len(frame) - 4))
        body = (
            frame[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xea\xb0", b"\x80\x80"]))
            + frame[at:-4]
        )
    elif kind == "no_colon":
        lines = frame[:-4].split(b"\r\n")
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = lines[i].replace(b":", b"")
        body = b"\r\n".join(lines)
    elif kind == "response":
        fields = draw(
            st.lists(
                st.sampled_from(
                    [
                        b"Response: Success",
                        b"Response: Error",
                        b"Response: Follows",
                        b"Response: Fail",
                        b"ActionID: fuzz-1",
                        b"ActionID: ",
                        b"Event: Shutdown",
                        b"EventList: Complete",
                        b"Message: x",
                        b"--END COMMAND--",
                        b"Output: \xff",
                    ]
                ),
                max_size=6,
            )
        )
        body = (
            b"Response: "
            + draw(st.sampled_from([b"Success", b"Error", b"Follows", b""]))
            + b"".join(b"\r\n" + f for f in fields)
        )
    elif kind == "event_noise":
        name = draw(st.sampled_from([*sorted(TRACKED_EVENTS), "VarSet", "", "Hangup\xff"]))
        extra = draw(st.lists(st.binary(max_size=40), max_size=5))
        body = b"Event: " + name.encode("utf-8", "surrogateescape") + b"".join(b"\r\n" + x for x in extra)
    elif kind == "crlf":
        body = b"\r\n" * draw(st.integers(0, 4))
    else:
        body = frame[:-4] + b"\r\nX-Fuzz: " + b"A" * draw(st.integers(1000, 20000))
    return body + EOF


@given(
    pieces=st.lists(st.tuples(garbage(), st.sampled_from(WANTED_FRAMES)), min_size=1, max_size=8),
    points=st.lists(st.integers(min_value=0), max_size=20),
    pending_action=st.booleans(),
)
@example(pieces=[(b"Response: Success\r\nEvent: Shutdown" + EOF, WANTED_FRAMES[0])], points=[], pending_action=False)
# Regressions: panoramisk made repeated headers lists and crashed on them (unhashable ActionID,
# list.lower() on Event), killing the connection from inside data_received.
@example(
    pieces=[(b"Response: Success\r\nActionID: fuzz-1\r\nActionID: fuzz-1" + EOF, WANTED_FRAMES[0])],
    points=[],
    pending_action=True,
)
@example(
    pieces=[(b"Response: Success\r\nEvent: Shutdown\r\nEvent: Shutdown" + EOF, WANTED_FRAMES[0])],
    points=[],
    pending_action=False,
)
async def test_garbage_between_recorded_frames_is_counted_and_the_next_good_frame_arrives(
    pieces: list[tuple[bytes, bytes]], points: list[int], pending_action: bool
) -> None:
    fed = Fed()
    fed.feed([BANNER])
    if pending_action:
        # An action of ours in flight: garbage carrying ActionIDs must not confuse it.
        future = fed.proto.send({"Action": "Ping", "ActionID": "fuzz-1"})
    stream = b"".join(g + good for g, good in pieces)
    with captured_logs(logging.WARNING) as records:
        fed.feed(cut(stream, points))
    counters = fed.proto.counters
    if fed.transport.closed:
        # Only a Shutdown (panoramisk closes on it) may end the session here: no frame is oversized.
        assert fed.lost or any(b"Shutdown" in g for g, _ in pieces)
        return
    # Every good frame arrived, in order, with all its headers, whatever came before it.
    assert is_subsequence([parse_frame(good.decode()) for _, good in pieces], fed.events)
    # Everything read is accounted for: dispatched, discarded by name, malformed or given to panoramisk.
    assert counters.frames_in >= counters.dispatched + sum(counters.discarded.values()) + counters.malformed
    assert counters.dispatched >= len(pieces)
    if counters.malformed:
        assert any("neither event nor response" in r.getMessage() for r in records)
    if counters.decode_errors:
        assert any("invalid UTF-8" in r.getMessage() for r in records)
    if pending_action:
        future.cancel()


def is_subsequence(want: list[dict[str, str]], got: list[dict[str, str]]) -> bool:
    it = iter(got)
    return all(any(w == g for g in it) for w in want)


@given(before=st.binary(max_size=300), points=st.lists(st.integers(min_value=0), max_size=10))
@example(before=b"HTTP/1.1 400 Bad Request\r\n", points=[])
@example(before=b"Asterisk Call Manager/", points=[5])
async def test_anything_but_a_banner_is_refused_clearly(before: bytes, points: list[int]) -> None:
    fed = Fed()
    stream = before + b"Event: FullyBooted\r\nUptime: 1\r\n\r\n"
    with captured_logs(logging.ERROR) as records:
        fed.feed(cut(stream, points))
    if fed.proto.version is None:
        assert fed.transport.closed
        assert fed.proto.counters.malformed == 1
        assert any("not an AMI server" in r.getMessage() for r in records)
    else:
        assert stream.startswith(BANNER[: -len("11.0.0\r\n")])


@given(size=st.integers(MAX_BUFFER - 8, MAX_BUFFER + 8), points=st.lists(st.integers(min_value=0), max_size=6))
@example(size=MAX_BUFFER - 1, points=[MAX_BUFFER + 2])  # rest = frame + "\r\n\r": still a legal frame
@example(size=MAX_BUFFER + 1, points=[])  # the whole oversized frame in one read
async def test_oversized_frames_close_the_connection_whatever_the_reads(size: int, points: list[int]) -> None:
    header = WANTED_FRAMES[0][:-4] + b"\r\nX-Fuzz: "
    frame = header + b"A" * (size - len(header)) + EOF
    assert len(frame) == size + 4
    stream = BANNER + frame + WANTED_FRAMES[1]
    fed = Fed()
    with captured_logs(logging.ERROR) as records:
        fed.feed(cut(stream, [p + len(BANNER) for p in points]))
    if size > MAX_BUFFER:
        assert fed.transport.closed and fed.proto.counters.malformed == 1
        assert fed.events == []
        assert any("malformed stream" in r.getMessage() for r in records)
    else:
        assert not fed.transport.closed
        assert len(fed.events) == 2


async def test_protocol_keeps_working_over_real_tcp_after_garbage() -> None:
    """A recorded session with junk frames spliced in, over loopback TCP: every good event arrives."""
    session = transcript("answered_mobile")
    junk = [
        b"\xff\xfe garbage" + EOF,
        b"Event: Hangup\r\nUniqueid" + EOF,
        b"no colon here" + EOF,
        b"Response: Success\r\nActionID: nobody" + EOF,
    ]
    stream = session.banner + b"".join(b.raw + junk[i % len(junk)] for i, b in enumerate(session.blocks[1:]))

    async def serve(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(0, len(stream), 777):
            writer.write(stream[i : i + 777])
            await writer.drain()
        await asyncio.sleep(5)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    events: list[dict[str, str]] = []
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(
        lambda: AmiProtocol(TRACKED_EVENTS, lambda e, _a: events.append(e), lambda _e: None, name="tcp"),
        "127.0.0.1",
        port,
    )
    proto.factory = Factory()
    expected = Fed()
    expected.feed([session.banner + b"".join(b.raw for b in session.blocks[1:])])
    want = [e for e in expected.events if e.get("Uniqueid")]
    for _ in range(500):
        if len([e for e in events if e.get("Uniqueid") and e in want]) >= len(want):
            break
        await asyncio.sleep(0.01)
    assert is_subsequence(want, events)
    assert proto.counters.malformed >= 1 and not proto.closed
    transport.close()
    server.close()
