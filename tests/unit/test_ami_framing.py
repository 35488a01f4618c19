"""The AMI framing layer and the transcript tools, driven by recorded bytes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.calls.pbx.protocol import MAX_BUFFER, AmiCounters, AmiProtocol, parse_frame
from gateway.sim.amiserver import (
    ChannelTable,
    Transcript,
    add_timestamp,
    fresh_ids,
    header,
    split_blocks,
    with_header,
)

TRANSCRIPTS = Path(__file__).resolve().parents[2] / "gateway" / "data" / "transcripts"
ALL_AMI = sorted(TRANSCRIPTS.glob("*.ami"))
HONG = "홍길동"


class FakeTransport:
    """Just enough of an asyncio transport for feeding `data_received` by hand."""

    def __init__(self) -> None:
        self.closed = False
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], float]] = []
        self.lost: list[BaseException | None] = []

    def on_event(self, event: dict[str, str], at: float) -> None:
        self.events.append((event, at))

    def on_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def named(self, name: str) -> list[dict[str, str]]:
        return [e for e, _ in self.events if e.get("Event") == name]


def make_protocol(wanted: set[str]) -> tuple[AmiProtocol, Sink, FakeTransport]:
    sink = Sink()
    proto = AmiProtocol(frozenset(wanted), sink.on_event, sink.on_lost, AmiCounters(), "test")
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, sink, transport


def korean_block() -> bytes:
    transcript = Transcript.named("inbound_queue_korean_name")
    return next(b.raw for b in transcript.blocks if b.raw.startswith(b"Event: Newchannel") and HONG.encode() in b.raw)


async def test_korean_name_split_at_every_byte_position_stays_intact() -> None:
    banner = Transcript.named("inbound_queue_korean_name").banner
    stream = banner + korean_block()
    for cut in range(1, len(stream)):
        proto, sink, _ = make_protocol({"Newchannel"})
        proto.data_received(stream[:cut])
        proto.data_received(stream[cut:])
        events = sink.named("Newchannel")
        assert len(events) == 1, cut
        assert events[0]["CallerIDName"] == HONG, cut
        assert proto.version == "11.0.0"
        assert proto.counters.decode_errors == 0


async def test_whole_transcript_fed_byte_by_byte() -> None:
    raw = (TRANSCRIPTS / "inbound_queue_korean_name.ami").read_bytes()
    proto, sink, _ = make_protocol({"Newchannel", "QueueCallerJoin"})
    for i in range(len(raw)):
        proto.data_received(raw[i : i + 1])
    names = [e["CallerIDName"] for e in sink.named("Newchannel")]
    assert HONG in names
    assert all("\ufffd" not in n for n in names)


async def test_invalid_utf8_is_replaced_counted_and_the_frame_kept(caplog: pytest.LogCaptureFixture) -> None:
    # A recorded frame with its Hangul cut in the middle of a character.
    block = korean_block().replace(HONG.encode(), HONG.encode()[:4] + b"X")
    proto, sink, _ = make_protocol({"Newchannel"})
    with caplog.at_level(logging.WARNING, logger="gateway.calls.pbx.protocol"):
        proto.data_received(b"Asterisk Call Manager/11.0.0\r\n" + block)
    events = sink.named("Newchannel")
    assert len(events) == 1
    assert events[0]["CallerIDName"].startswith("홍\ufffd")
    assert events[0]["Uniqueid"]  # the rest of the frame is intact
    assert proto.counters.decode_errors == 1
    assert any("invalid UTF-8" in r.getMessage() and "Newchannel" in r.getMessage() for r in caplog.records)


async def test_prefilter_discards_unwanted_events_without_parsing_them() -> None:
    transcript = Transcript.named("answered_mobile")
    proto, sink, _ = make_protocol({"DialBegin", "Hangup"})
    proto.data_received(b"".join(b.raw for b in transcript.blocks))
    names = [e["Event"] for e, _ in sink.events]
    # FullyBooted is always wanted: the client needs its Uptime.
    assert sorted(names) == ["DialBegin", "DialBegin", "FullyBooted", "Hangup", "Hangup"]
    assert proto.counters.discarded[b"VarSet"] == 45
    assert b"DialBegin" not in proto.counters.discarded
    assert proto.counters.dispatched == 5
    # 97 blocks: the banner is not a frame, the login answer is.
    assert proto.counters.frames_in == 96
    assert proto.counters.discarded_by_name()["VarSet"] == 45


async def test_parsed_event_is_a_plain_dict_with_first_value_and_empty_values() -> None:
    block = next(
        b.raw
        for b in Transcript.named("answered_mobile").blocks
        if b.raw.startswith(b"Event: DialBegin") and b"DestChannel: PJSIP/carrier" in b.raw
    )
    event = parse_frame(block.decode())
    assert type(event) is dict
    assert event["DestChannel"].startswith("PJSIP/carrier-")
    assert event["DialString"] == "01012345678@carrier"
    assert event["AccountCode"] == ""
    assert parse_frame("Event: X\r\nA: 1\r\nA: 2")["A"] == "1"


async def test_timestamp_header_is_used_as_event_time() -> None:
    block = next(b.raw for b in Transcript.named("answered_mobile").blocks if b.raw.startswith(b"Event: DialBegin"))
    stamped = add_timestamp(block, 1795339616.25)
    assert header(stamped, b"Timestamp") == b"1795339616.250000"
    assert stamped.split(b"\r\n")[2].startswith(b"Timestamp: ")  # right after Privilege
    proto, sink, _ = make_protocol({"DialBegin"})
    proto.data_received(b"Asterisk Call Manager/11.0.0\r\n" + stamped + block)
    assert sink.events[0][1] == pytest.approx(1795339616.25)
    assert sink.events[1][1] > 1_700_000_000  # no header: receipt time


async def test_responses_and_own_list_events_resolve_action_futures() -> None:
    csc = Transcript.named("coreshowchannels")
    proto, sink, _ = make_protocol({"CoreShowChannel"})
    proto.data_received(csc.banner)
    future = proto.send({"Action": "CoreShowChannels"}, as_list=True)
    action_id = next(iter(proto.responses)).encode()
    answer = [b.raw for b in csc.blocks if b"ActionID: coreshowchannels-csc\r\n" in b.raw]
    assert len(answer) == 6  # response, 4 channels, complete
    # The same recorded list once for someone else's action, then for ours.
    proto.data_received(b"".join(answer))
    proto.data_received(b"".join(with_header(a, b"ActionID", action_id) for a in answer))
    result = await asyncio.wait_for(future, 1)
    assert [m["Event"] for m in result[1:]] == ["CoreShowChannel"] * 4 + ["CoreShowChannelsComplete"]
    # Someone else's CoreShowChannel events are ordinary (wanted) events.
    assert len(sink.named("CoreShowChannel")) == 4
    assert not proto.responses


async def test_pending_actions_fail_fast_when_the_connection_closes() -> None:
    proto, sink, transport = make_protocol(set())
    proto.data_received(b"Asterisk Call Manager/11.0.0\r\n")
    future = proto.send({"Action": "Ping"})
    proto.connection_lost(None)
    with pytest.raises(Exception, match="closed before the answer"):
        await future
    assert transport.closed
    assert sink.lost == [None]


async def test_oversize_frame_closes_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    proto, _sink, transport = make_protocol({"Newchannel"})
    proto.data_received(b"Asterisk Call Manager/11.0.0\r\n")
    with caplog.at_level(logging.ERROR, logger="gateway.calls.pbx.protocol"):
        chunk = b"X" * 65536 + b"\r\n"
        for _ in range(MAX_BUFFER // len(chunk) + 2):
            proto.data_received(chunk)
            if transport.closed:
                break
    assert transport.closed
    assert any("malformed" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


async def test_garbage_peer_over_real_tcp_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = Sink()
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.ERROR, logger="gateway.calls.pbx.protocol"):
        _t, proto = await loop.create_connection(
            lambda: AmiProtocol(frozenset(), sink.on_event, sink.on_lost, name="junk"), "127.0.0.1", port
        )
        for _ in range(200):
            if sink.lost:
                break
            await asyncio.sleep(0.01)
    assert sink.lost
    assert proto.closed
    assert any("not an AMI server" in r.getMessage() for r in caplog.records)
    server.close()


@pytest.mark.parametrize("path", ALL_AMI, ids=lambda p: p.stem)
def test_transcript_round_trip_is_byte_exact(path: Path) -> None:
    transcript = Transcript.load(path)
    raw = path.read_bytes()
    assert b"".join(b.raw for b in transcript.blocks) == raw
    assert split_blocks(raw) == [b.raw for b in transcript.blocks]
    times = [b.t for b in transcript.blocks]
    assert times == sorted(times) and times[-1] > 0  # timing came from timed/X.jsonl
    assert transcript.blocks[0].raw == transcript.banner


def test_transcript_without_timing_file_gets_t_zero(tmp_path: Path) -> None:
    src = TRANSCRIPTS / "busy.ami"
    copy = tmp_path / "busy.ami"
    copy.write_bytes(src.read_bytes())
    transcript = Transcript.load(copy)
    assert {b.t for b in transcript.blocks} == {0.0}
    assert b"".join(b.raw for b in transcript.blocks) == src.read_bytes()


def test_transcript_kinds() -> None:
    assert Transcript.named("login_failed").login_failed
    assert Transcript.named("restart_during_call").ends_with_close
    assert Transcript.named("ping").ends_with_close
    assert not Transcript.named("answered_mobile").ends_with_close
    body = Transcript.named("answered_mobile").body
    assert body[0].event_name == "FullyBooted"


def test_fresh_ids_shifts_only_the_integer_part_of_uniqueid_and_linkedid_headers() -> None:
    block = next(
        b.raw
        for b in Transcript.named("answered_mobile").blocks
        if b.raw.startswith(b"Event: DialBegin") and b"DestChannel: PJSIP/carrier" in b.raw
    )
    shifted = fresh_ids(block, 1000)
    for name in (b"Uniqueid", b"Linkedid", b"DestUniqueid", b"DestLinkedid"):
        before, after = header(block, name), header(shifted, name)
        assert before is not None and after is not None
        b_int, b_frac = before.split(b".")
        a_int, a_frac = after.split(b".")
        assert int(a_int) == int(b_int) + 1000 and a_frac == b_frac
    # Everything else is untouched.
    strip = [line for line in block.split(b"\r\n") if b"id: " not in line.lower()]
    assert [line for line in shifted.split(b"\r\n") if b"id: " not in line.lower()] == strip
    assert fresh_ids(block, 0) is block
    bridge = next(b.raw for b in Transcript.named("answered_mobile").blocks if b.raw.startswith(b"Event: BridgeEnter"))
    assert header(fresh_ids(bridge, 5), b"BridgeUniqueid") == header(bridge, b"BridgeUniqueid")
    lower = b"Event: X\r\nuniqueID: 12.5\r\n\r\n"
    assert fresh_ids(lower, 3) == b"Event: X\r\nuniqueID: 15.5\r\n\r\n"


def test_channel_table_reproduces_the_recorded_coreshowchannels_answer() -> None:
    transcript = Transcript.named("coreshowchannels")
    table = ChannelTable()
    at = 0.0
    for block in transcript.blocks:
        if b"Channels will follow" in block.raw:
            at = block.t
            break
        table.apply(block.raw, block.t)
    rendered = split_blocks(table.render(b"coreshowchannels-csc", at))
    recorded = [b.raw for b in transcript.blocks if b"ActionID: coreshowchannels-csc\r\n" in b.raw]
    assert rendered[0] == recorded[0]
    assert rendered[-1] == recorded[-1]
    assert sorted(rendered[1:-1]) == sorted(recorded[1:-1])
