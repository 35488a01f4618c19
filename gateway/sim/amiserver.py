"""A small asyncio AMI server that replays transcripts recorded from a real Asterisk.

Used by `gateway demo`, `gateway replay`, the tests and the benchmarks: the gateway's AMI
client talks to it over real TCP exactly as it talks to Asterisk. Everything it sends is
recorded bytes; the few answers it composes (Pong, Goodbye, login answers, the
CoreShowChannels list) reuse the shape of recorded blocks with the ActionID substituted.

The server plays one PBX across its sessions: the live-channel table (for
CoreShowChannels) survives a dropped connection, FullyBooted uptimes never go backwards
unless a recorded restart came first (`PbxClock`), and loops get fresh Uniqueids. In fast
mode it waits, after the login and before closing, until the client has been quiet for a
moment, so a client's resync is answered where a real PBX would answer it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

TRANSCRIPTS_DIR = Path(__file__).resolve().parents[1] / "data" / "transcripts"

_EOF = b"\r\n\r\n"
_EOL = b"\r\n"
_BANNER = b"Asterisk Call Manager/"
#: Per loop_forever cycle, Uniqueid/Linkedid epochs move forward by this many seconds.
CYCLE_ID_OFFSET = 1_000_000
#: End of a transcript: close once the client was quiet this long (bounded by LINGER_MAX_S).
LINGER_QUIET_S = 0.1
LINGER_MAX_S = 1.0
#: Fast mode: after the login, replay the call once the client was quiet this long.
SETTLE_QUIET_S = 0.05
_ID_RE = re.compile(rb"(?im)^([A-Za-z-]*(?:Uniqueid|Linkedid): )(\d+)(\.\d+)\r?$")

Speed = Literal["real", "fast"] | float


@dataclass(frozen=True, slots=True)
class Block:
    """One recorded read unit: the banner line or one frame with its ``\\r\\n\\r\\n``."""

    t: float  # seconds since the recorded TCP connect
    raw: bytes

    @property
    def is_event(self) -> bool:
        """True for ``Event:`` frames."""
        return self.raw.startswith(b"Event: ")

    @property
    def is_response(self) -> bool:
        """True for ``Response:`` frames."""
        return self.raw.startswith(b"Response: ")

    @property
    def event_name(self) -> str:
        """The event name, or "" for non-events."""
        if not self.is_event:
            return ""
        return self.raw[7 : self.raw.index(_EOL)].decode("ascii", "replace")


@dataclass(frozen=True)
class Transcript:
    """A recorded AMI session: the bytes as read from Asterisk, split into blocks."""

    name: str
    blocks: tuple[Block, ...]

    @classmethod
    def load(cls, path: str | Path) -> Transcript:
        """Load ``X.ami``; timing comes from ``timed/X.jsonl`` beside it when present.

        The blocks are always cut from the .ami bytes themselves, so that concatenating
        them reproduces the file exactly.
        """
        path = Path(path)
        raw = path.read_bytes()
        chunks = split_blocks(raw)
        times = [0.0] * len(chunks)
        timed = path.parent / "timed" / f"{path.stem}.jsonl"
        if timed.exists():
            rows = [json.loads(line) for line in timed.read_text("utf-8").splitlines() if line.strip()]
            if [r["raw"].encode("utf-8") for r in rows] == chunks:
                times = [float(r["t"]) for r in rows]
            else:
                log.warning("%s: timing file does not match the recording; replaying with t=0", timed)
        return cls(path.stem, tuple(Block(t, c) for t, c in zip(times, chunks, strict=True)))

    @classmethod
    def named(cls, name: str) -> Transcript:
        """Load one of the transcripts shipped with the gateway."""
        return cls.load(TRANSCRIPTS_DIR / f"{name}.ami")

    @property
    def recorded_epoch(self) -> float | None:
        """Wall time at recorded t = 0, from the first `EventTV` header (SuccessfulAuth), if any."""
        for block in self.blocks:
            value = header(block.raw, b"EventTV")
            if value:
                try:
                    stamp = datetime.strptime(value.decode(), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
                except ValueError:
                    return None
                return stamp - block.t
        return None

    @property
    def banner(self) -> bytes:
        """The banner line (``Asterisk Call Manager/11.0.0\\r\\n``)."""
        first = self.blocks[0].raw if self.blocks else b""
        return first if first.startswith(_BANNER) else b"Asterisk Call Manager/11.0.0\r\n"

    @property
    def login_index(self) -> int | None:
        """Index of the recorded answer to the recorder's Login, if any."""
        for i, block in enumerate(self.blocks):
            if block.is_response and b"-login\r\n" in block.raw:
                return i
        for i, block in enumerate(self.blocks):
            if block.is_response:
                return i
        return None

    @property
    def login_failed(self) -> bool:
        """True when the recorded login was rejected."""
        i = self.login_index
        return i is not None and self.blocks[i].raw.startswith(b"Response: Error")

    @property
    def body(self) -> tuple[Block, ...]:
        """The blocks after the login answer: what the server replays."""
        i = self.login_index
        start = 1 if i is None else i + 1
        return self.blocks[start:] if not self.login_failed else ()

    @property
    def ends_with_close(self) -> bool:
        """True when Asterisk closed the connection at the end of the recording."""
        if self.login_failed or not self.blocks:
            return True
        last = self.blocks[-1].raw
        return last.startswith((b"Response: Goodbye", b"Event: Shutdown"))


def split_blocks(raw: bytes) -> list[bytes]:
    """Split recorded AMI bytes into the banner line and frames (terminators kept)."""
    out: list[bytes] = []
    pos = 0
    if raw.startswith(_BANNER):
        pos = raw.index(_EOL) + 2
        out.append(raw[:pos])
    while pos < len(raw):
        end = raw.find(_EOF, pos)
        end = len(raw) if end < 0 else end + 4
        out.append(raw[pos:end])
        pos = end
    return out


def fresh_ids(block: bytes, offset: int) -> bytes:
    """Shift the integer part of every ``*Uniqueid``/``*Linkedid`` header value by `offset`."""
    if not offset:
        return block
    return _ID_RE.sub(
        lambda m: m[1] + str(int(m[2]) + offset).encode() + m[3] + (b"\r" if m[0].endswith(b"\r") else b""), block
    )


def header(block: bytes, name: bytes) -> bytes | None:
    """The first value of header `name` in a frame (exact case), or None."""
    start = block.find(_EOL + name + b": ")
    if start < 0:
        if not block.startswith(name + b": "):
            return None
        start = -2
    start += len(name) + 4
    end = block.find(_EOL, start)
    return block[start : end if end >= 0 else len(block)]


def with_header(block: bytes, name: bytes, value: bytes | None) -> bytes:
    """Replace the value of header `name` (the line goes away when `value` is None)."""
    lines = block.split(_EOL)
    prefix = name + b":"
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            if value is None:
                del lines[i]
            else:
                lines[i] = prefix + b" " + value
            break
    return _EOL.join(lines)


def parse_action(raw: bytes) -> dict[str, str]:
    """Parse one client action (first value of repeated headers; keys lower-cased)."""
    out: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() not in out:
            out[key.strip().lower()] = value.strip()
    return out


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """What one TCP connection gets: a transcript and optional faults."""

    transcript: Transcript
    drop_after: int | None = None  # close TCP after this many replayed blocks
    silent_after: int | None = None  # stop sending and answering after this many blocks
    reject_login: bool = False


class _Templates:
    """Recorded blocks used as the shape of composed answers."""

    def __init__(self) -> None:
        ping = Transcript.named("ping")
        failed = Transcript.named("login_failed")
        csc = Transcript.named("coreshowchannels")

        def find(t: Transcript, prefix: bytes, contains: bytes = b"") -> bytes:
            return next(b.raw for b in t.blocks if b.raw.startswith(prefix) and contains in b.raw)

        self.pong = find(ping, b"Response: Success", b"Ping: Pong")
        self.goodbye = find(ping, b"Response: Goodbye")
        self.auth_failed = find(failed, b"Response: Error")
        self.csc_start = find(csc, b"Response: Success", b"Channels will follow")
        self.csc_item = find(csc, b"Event: CoreShowChannel\r\n")
        self.csc_complete = find(csc, b"Event: CoreShowChannelsComplete\r\n")
        self.csc_fields = [line.split(b":", 1)[0] for line in self.csc_item.split(_EOL)[1:] if line]
        # No recorded example exists of Asterisk's answer to an unknown action; this is the
        # text manager.c sends.
        self.invalid = b"Response: Error\r\nActionID: x\r\nMessage: Invalid/unknown command\r\n\r\n"


_TEMPLATES: _Templates | None = None


def _templates() -> _Templates:
    global _TEMPLATES  # noqa: PLW0603 - loaded once, on first use
    if _TEMPLATES is None:
        _TEMPLATES = _Templates()
    return _TEMPLATES


# Standard channel snapshot headers every channel event carries (manager_channels.c).
_SNAPSHOT = (
    b"Channel",
    b"ChannelState",
    b"ChannelStateDesc",
    b"CallerIDNum",
    b"CallerIDName",
    b"ConnectedLineNum",
    b"ConnectedLineName",
    b"Language",
    b"AccountCode",
    b"Context",
    b"Exten",
    b"Priority",
    b"Uniqueid",
    b"Linkedid",
)
_LOGIN_EVENTS = frozenset({"FullyBooted", "SuccessfulAuth"})
_TABLE_EVENTS = frozenset(
    {
        b"Newchannel",
        b"Newstate",
        b"NewCallerid",
        b"NewConnectedLine",
        b"Newexten",
        b"BridgeEnter",
        b"BridgeLeave",
        b"Hangup",
    }
)


class ChannelTable:
    """The live channels of the replayed PBX, kept from replayed events, for CoreShowChannels."""

    def __init__(self) -> None:
        self._channels: dict[bytes, dict[bytes, bytes]] = {}  # by Uniqueid, in creation order
        self._born: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._channels)

    def apply(self, block: bytes, t: float) -> None:
        """Update the table from one replayed frame (recorded time `t`)."""
        if not block.startswith(b"Event: "):
            return
        name = block[7 : block.index(_EOL)]
        if name == b"Shutdown":
            self._channels.clear()  # the PBX is going down with all its channels
            self._born.clear()
            return
        if name not in _TABLE_EVENTS:
            return
        uid = header(block, b"Uniqueid")
        if uid is None:
            return
        if name == b"Hangup":
            self._channels.pop(uid, None)
            self._born.pop(uid, None)
            return
        chan = self._channels.get(uid)
        if chan is None:
            if name != b"Newchannel":
                return
            chan = self._channels[uid] = {b"Application": b"", b"ApplicationData": b"", b"BridgeId": b""}
            self._born[uid] = t
        for key in _SNAPSHOT:
            value = header(block, key)
            if value is not None:
                chan[key] = value
        if name == b"Newexten":
            chan[b"Application"] = header(block, b"Application") or b""
            chan[b"ApplicationData"] = header(block, b"AppData") or b""
        elif name == b"BridgeEnter":
            chan[b"BridgeId"] = header(block, b"BridgeUniqueid") or b""
        elif name == b"BridgeLeave":
            chan[b"BridgeId"] = b""

    def render(self, action_id: bytes | None, now_t: float) -> bytes:
        """The whole CoreShowChannels answer, in the recorded block shapes."""
        tpl = _templates()
        out = [with_header(tpl.csc_start, b"ActionID", action_id)]
        for uid, chan in self._channels.items():
            secs = max(0, int(now_t - self._born[uid]))
            values = dict(chan)
            values[b"ActionID"] = action_id or b""
            values[b"Duration"] = f"{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}".encode()
            lines = [b"Event: CoreShowChannel"]
            for key in tpl.csc_fields:
                if key == b"ActionID" and action_id is None:
                    continue
                lines.append(key + b": " + values.get(key, b""))
            out.append(_EOL.join(lines) + _EOF)
        done = with_header(tpl.csc_complete, b"ActionID", action_id)
        out.append(with_header(done, b"ListItems", str(len(self._channels)).encode()))
        return b"".join(out)


class PbxClock:
    """Keeps FullyBooted ``Uptime`` consistent across the sessions one server replays.

    Transcripts were recorded at different moments of one Asterisk's life and may be
    replayed in any order or looped: their recorded uptimes would then go backwards,
    which a client rightly reads as a PBX restart. Unless a recorded restart (a
    ``Shutdown`` event) came first, the uptime sent is never less than the last one sent
    plus the wall time since.
    """

    def __init__(self) -> None:
        self._uptime: int | None = None
        self._at = 0.0
        self._restarted = False

    def apply(self, block: bytes) -> bytes:
        """Rewrite a FullyBooted frame when needed; note Shutdown frames."""
        if block.startswith(b"Event: Shutdown\r\n"):
            self._restarted = True
            return block
        if not block.startswith(b"Event: FullyBooted\r\n"):
            return block
        value = header(block, b"Uptime")
        if value is None or not value.isdigit():
            return block
        recorded = int(value)
        now = time.monotonic()
        sent = recorded
        if self._uptime is not None and not self._restarted:
            sent = max(recorded, self._uptime + math.ceil(now - self._at))
        self._uptime, self._at, self._restarted = sent, now, False
        if sent == recorded:
            return block
        out = with_header(block, b"Uptime", str(sent).encode())
        reload = header(block, b"LastReload")
        if reload is not None and reload.isdigit():
            out = with_header(out, b"LastReload", str(int(reload) + sent - recorded).encode())
        return out


def add_timestamp(block: bytes, epoch: float) -> bytes:
    """Insert ``Timestamp:`` after the Privilege line, as Asterisk's timestampevents does."""
    start = block.find(b"\r\nPrivilege: ")
    if start < 0:
        return block
    end = block.find(_EOL, start + 2)
    return block[:end] + b"\r\nTimestamp: %.6f" % epoch + block[end:]


class AmiServer:
    """Replays transcripts to AMI clients over TCP; each connection consumes the next session."""

    def __init__(
        self,
        sessions: Sequence[SessionPlan | Transcript],
        *,
        username: str = "gateway",
        secret: str,
        speed: Speed = "fast",
        loop_forever: bool = False,
        add_timestamps: bool | None = None,
        write_chunk: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        broadcast: bool = False,
        on_block: Callable[[bytes], None] | None = None,
        max_write_buffer: int = 4 * 1024 * 1024,
    ) -> None:
        if not sessions:
            raise ValueError("AmiServer needs at least one session")
        self.plans = [s if isinstance(s, SessionPlan) else SessionPlan(s) for s in sessions]
        self.username = username
        self.secret = secret
        self.fast = speed == "fast"
        self.multiplier = 1.0 if speed in ("real", "fast") else float(speed)
        if not self.fast and self.multiplier <= 0:
            raise ValueError(f"speed must be 'real', 'fast' or a positive multiplier, not {speed!r}")
        self.loop_forever = loop_forever
        self.add_timestamps = self.fast if add_timestamps is None else add_timestamps
        self.write_chunk = write_chunk
        self.host = host
        self.port = port
        self.sessions_started = 0
        self.blocks_sent = 0
        # The PBX's live channels. They belong to the server, not to a connection: a client
        # that reconnects after a network blip must find the calls that are still up.
        self.channels = ChannelTable()
        self.clock = PbxClock()
        self._next = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._done = asyncio.Event()
        self._exhausted = False
        # Broadcast mode: one PBX timeline, every logged-in connection receives the same
        # events (several gateways following one Asterisk). See `_broadcast`.
        self.broadcast = broadcast
        self.on_block = on_block  # called with every block the broadcast sends (test bookkeeping)
        self.max_write_buffer = max_write_buffer
        self.dropped_consumers = 0
        self._subscribers: set[_Connection] = set()
        self._broadcaster: asyncio.Task[None] | None = None
        self._broadcast_t = 0.0  # recorded time the broadcast has reached
        if broadcast and self.fast:
            raise ValueError("broadcast needs a timed replay ('real' or a multiplier)")

    async def start(self) -> tuple[str, int]:
        """Start listening; returns the (host, port) actually bound."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.host, self.port = str(sock[0]), int(sock[1])
        return self.host, self.port

    async def wait_done(self) -> None:
        """Return when every session was served (never with loop_forever)."""
        await self._done.wait()

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        if self._broadcaster is not None:
            self._broadcaster.cancel()
            await asyncio.gather(self._broadcaster, return_exceptions=True)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._done.set()

    # -- session bookkeeping ------------------------------------------------------------------

    def _take(self) -> tuple[SessionPlan, int] | None:
        """The next session and its id offset, or None when all were served."""
        if self._exhausted:
            return None
        cycle, index = divmod(self._next, len(self.plans))
        self._next += 1
        if not self.loop_forever and self._next >= len(self.plans):
            # The last session is handed out: accept nothing more.
            self._exhausted = True
            if self._server is not None:
                self._server.close()
        return self.plans[index], cycle * CYCLE_ID_OFFSET

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn: _Connection | None = None
        try:
            taken = (self.plans[0], 0) if self.broadcast else self._take()
            if taken is None:
                writer.close()
                return
            self.sessions_started += 1
            conn = _Connection(self, taken[0], taken[1], reader, writer)
            await conn.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if conn is not None:
                self._subscribers.discard(conn)
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if self._exhausted and not self._connections:
                self._done.set()

    # -- broadcast mode -------------------------------------------------------------------------

    def _subscribe(self, conn: _Connection) -> None:
        self._subscribers.add(conn)
        if self._broadcaster is None:
            self._broadcaster = asyncio.get_running_loop().create_task(self._broadcast(), name="ami-broadcast")

    async def _broadcast(self) -> None:
        """Play the sessions' calls once, in a loop with fresh ids, to every logged-in client.

        Starts with the first login and keeps the PBX's pace whoever is connected, as a real
        PBX does: a client that is away misses what happens meanwhile (its CoreShowChannels
        resync finds the calls still up). Login events and recorded closes are per connection
        and are not broadcast. A client that does not read is dropped once
        `max_write_buffer` bytes wait for it (Asterisk's writetimeout).
        """
        loop = asyncio.get_running_loop()
        epoch = time.time()
        cycle = 0
        while True:
            for plan in self.plans:
                blocks = tuple(
                    b
                    for b in plan.transcript.body
                    if b.event_name not in _LOGIN_EVENTS
                    and not b.raw.startswith((b"Response: Goodbye", b"Event: Shutdown"))
                )
                if not blocks:
                    continue
                t0, start = blocks[0].t, loop.time()
                for block in blocks:
                    delay = start + (block.t - t0) / self.multiplier - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    data = self.clock.apply(fresh_ids(block.raw, cycle * CYCLE_ID_OFFSET))
                    if self.add_timestamps and block.is_event:
                        data = add_timestamp(data, epoch + block.t)
                    self._broadcast_t = block.t
                    self.channels.apply(data, block.t)
                    self.blocks_sent += 1
                    if self.on_block is not None:
                        self.on_block(data)
                    for conn in list(self._subscribers):
                        conn.push(data)
                epoch += blocks[-1].t + 1.0
                await asyncio.sleep(0.2 / self.multiplier)
            cycle += 1


@dataclass
class _Replay:
    """Timing state of what one connection is replaying."""

    plan: SessionPlan
    offset: int
    epoch: float  # wall time matching recorded t = 0 (for Timestamp headers)
    clock_t: float = 0.0  # recorded time of the last block sent
    t0: float = 0.0  # recorded time of the first replayed block
    started: float | None = None  # loop.time() when the first block was due
    sent: int = 0
    blocks: tuple[Block, ...] = field(default=())


class _Connection:
    """One client connection: login, replay, answers to actions."""

    def __init__(
        self,
        server: AmiServer,
        plan: SessionPlan,
        offset: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()
        self.silent = False
        self.closing = asyncio.Event()
        # A fast replay stamps events with the time they were recorded (deterministic output:
        # quiet hours, holidays); a timed replay plays "now".
        recorded = plan.transcript.recorded_epoch if server.fast else None
        self.replay = _Replay(plan, offset, recorded or time.time(), blocks=plan.transcript.body)
        self.replay_task: asyncio.Task[None] | None = None
        self.last_activity = time.monotonic()  # last action read or block written

    async def run(self) -> None:
        transcript = self.replay.plan.transcript
        await self.write(transcript.banner)
        reader_task = asyncio.ensure_future(self.read_actions())
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({reader_task, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader_task, closing, self.replay_task):
                if task is not None:
                    task.cancel()
            await asyncio.gather(reader_task, closing, *(t for t in [self.replay_task] if t), return_exceptions=True)

    # -- writing ------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        async with self.lock:
            chunk = self.server.write_chunk
            if not chunk:
                self.writer.write(data)
                await self.writer.drain()
                return
            for i in range(0, len(data), chunk):
                self.writer.write(data[i : i + chunk])
                await self.writer.drain()
                # Two loop turns let a client on the same loop read this piece on its own.
                await asyncio.sleep(0)
                await asyncio.sleep(0)

    def push(self, data: bytes) -> None:
        """Broadcast mode: queue `data` without waiting; drop a client that stopped reading."""
        if self.silent or self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > self.server.max_write_buffer:
            log.warning("AMI client not reading: dropped (as Asterisk's writetimeout does)")
            self.server.dropped_consumers += 1
            self.server._subscribers.discard(self)
            self.writer.transport.abort()
            self.closing.set()
            return
        self.writer.write(data)
        self.last_activity = time.monotonic()

    def recorded_now(self) -> float:
        """The recorded time the replay has reached (for Duration of live channels)."""
        if self.server.broadcast:
            return self.server._broadcast_t
        replay = self.replay
        if self.server.fast or replay.started is None:
            return replay.clock_t
        elapsed = asyncio.get_running_loop().time() - replay.started
        return max(replay.clock_t, replay.t0 + elapsed * self.server.multiplier)

    # -- the client's actions -----------------------------------------------------------------

    async def read_actions(self) -> None:
        logged_in = False
        while True:
            raw = await self.reader.readuntil(_EOF)
            self.last_activity = time.monotonic()
            if self.silent:
                continue  # a hung PBX reads and says nothing
            action = parse_action(raw)
            name = action.get("action", "").lower()
            action_id = action.get("actionid")
            aid = action_id.encode("utf-8") if action_id is not None else None
            if name == "login":
                if logged_in:
                    continue
                if not await self.login(action, aid):
                    return
                logged_in = True
            elif not logged_in:
                msg = b"Response: Error\r\nActionID: x\r\nMessage: Authentication Required\r\n\r\n"
                await self.write(with_header(msg, b"ActionID", aid))
            elif name == "ping":
                pong = with_header(_templates().pong, b"ActionID", aid)
                await self.write(with_header(pong, b"Timestamp", b"%.6f" % time.time()))
            elif name == "logoff":
                await self.write(with_header(_templates().goodbye, b"ActionID", aid))
                self.closing.set()
                return
            elif name == "coreshowchannels":
                await self.write(self.server.channels.render(aid, self.recorded_now()))
            else:
                await self.write(with_header(_templates().invalid, b"ActionID", aid))

    async def login(self, action: dict[str, str], aid: bytes | None) -> bool:
        plan = self.replay.plan
        ok = (
            action.get("username") == self.server.username
            and action.get("secret") == self.server.secret
            and not plan.reject_login
            and not plan.transcript.login_failed
        )
        transcript = plan.transcript
        if not ok:
            await self.write(with_header(_templates().auth_failed, b"ActionID", aid))
            # Asterisk closes about a second after a failed login.
            await asyncio.sleep(0.05 if self.server.fast else 1.0 / self.server.multiplier)
            self.closing.set()
            return False
        index = transcript.login_index
        answer = (
            transcript.blocks[index].raw
            if index is not None
            else (b"Response: Success\r\nActionID: x\r\nMessage: Authentication accepted\r\n\r\n")
        )
        await self.write(with_header(answer, b"ActionID", aid))
        if self.server.broadcast:
            # This connection's own login events, then the PBX's shared stream.
            for block in transcript.body:
                if block.event_name in _LOGIN_EVENTS:
                    data = self.server.clock.apply(block.raw)
                    if self.server.add_timestamps:
                        data = add_timestamp(data, time.time())
                    await self.write(data)
            self.server._subscribe(self)
            return True
        self.replay_task = asyncio.ensure_future(self.play_then_close())
        return True

    # -- the replay ---------------------------------------------------------------------------

    async def play_then_close(self) -> None:
        """Replay; a client that went away ends the connection."""
        try:
            await self.play()
        except (ConnectionError, RuntimeError) as exc:
            log.debug("replay ended: %s", exc)
            self.closing.set()

    async def play(self) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        replay = self.replay
        settled = False
        while True:
            plan = replay.plan
            blocks = replay.blocks
            t0 = replay.t0 = blocks[0].t if blocks else 0.0
            start = replay.started = loop.time()
            for n, block in enumerate(blocks):
                if plan.drop_after is not None and replay.sent >= plan.drop_after:
                    self.closing.set()
                    return
                if plan.silent_after is not None and replay.sent >= plan.silent_after:
                    self.silent = True
                    return
                if server.fast and not settled and block.event_name not in _LOGIN_EVENTS:
                    # The recording has most of a second between the login and the call;
                    # a fast replay keeps only the part a client needs: its resync.
                    settled = True
                    await self.linger(SETTLE_QUIET_S)
                if not server.fast:
                    delay = start + (block.t - t0) / server.multiplier - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif n % 8 == 7:
                    await asyncio.sleep(0)  # let the client (maybe on this loop) read
                data = server.clock.apply(fresh_ids(block.raw, replay.offset))
                if server.add_timestamps and block.is_event:
                    data = add_timestamp(data, replay.epoch + block.t)
                replay.clock_t = block.t
                self.server.channels.apply(data, block.t)
                await self.write(data)
                replay.sent += 1
                server.blocks_sent += 1
                self.last_activity = time.monotonic()
            if plan.transcript.ends_with_close or not server.loop_forever:
                # Asterisk closes a moment after Shutdown / Goodbye; a finished replay closes too.
                await self.linger()
                self.closing.set()
                return
            nxt = self._continue_on_this_connection(replay)
            if nxt is None:
                self.closing.set()
                return
            replay = self.replay = nxt

    async def linger(self, quiet_s: float = 0.0) -> None:
        """Wait until the connection was quiet for `quiet_s` (at most LINGER_MAX_S).

        Used before closing at the end of a transcript, and in fast mode after the login,
        so that a client's login-time actions (its resync) are answered in the place
        where a real PBX would answer them: a fast replay collapses the recorded seconds
        that give a client that time.
        """
        quiet_s = quiet_s or LINGER_QUIET_S
        deadline = time.monotonic() + LINGER_MAX_S
        while True:
            now = time.monotonic()
            quiet = now - self.last_activity
            if quiet >= quiet_s or now >= deadline:
                return
            await asyncio.sleep(min(quiet_s - quiet, deadline - now))

    def _continue_on_this_connection(self, done: _Replay) -> _Replay | None:
        """With loop_forever, the next session continues on the open connection."""
        for _ in range(len(self.server.plans)):
            taken = self.server._take()
            if taken is None:
                return None
            plan, offset = taken
            if not plan.transcript.login_failed and plan.transcript.body:
                self.server.sessions_started += 1
                last_t = done.blocks[-1].t if done.blocks else 0.0
                epoch = done.epoch + last_t + 1.0
                # FullyBooted and SuccessfulAuth answer a login that does not happen here.
                body = tuple(b for b in plan.transcript.body if b.event_name not in _LOGIN_EVENTS)
                return _Replay(plan, offset, epoch, blocks=body)
        return None
