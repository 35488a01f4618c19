"""The benchmark's PBX side, run in a helper process so it never competes with the
measured client for its event loop (or its GIL).

``python -m ops.bench.ami_ingest.server ingest --stream FILE`` listens on two loopback
ports with a minimal AMI server: banner, Login answered Success with the client's ActionID
(plus the FullyBooted Asterisk pushes after a login), Ping answered Pong, CoreShowChannels
answered with an empty channel list; then the whole stream is written as fast as the
socket takes it (chunks cut at frame boundaries, so a Pong can slip in between) and the
connection is closed. On ``bare_port`` the stream starts right after the Login answer
(panoramisk's `Manager` sends nothing else); on ``gateway_port`` it starts after the
CoreShowChannels answer, i.e. once the gateway's AMI client has finished its session set-up
(a resync racing the stream would end the calls it does not list).

``python -m ops.bench.ami_ingest.server lettering --rate R --seconds S ...`` runs the same
AMI server, paced: call k's carrier-leg DialBegin is written at k/R s, its earlier events
`lead` before and the rest of the call `hold` after. It also runs the fake carrier
(`gateway.sim.fake_carrier.FakeCarrierServer`, SKT profile). DialBegin write times and carrier
receive times are both `time.perf_counter()` of this process.

Protocol with the parent: one JSON object per line on stdout (``ready``, ``served``,
``played``, ``report``); the parent closes stdin (or writes ``report``) to end the helper.
The helper also ends by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from adapters.carrier_http import PROFILES
from gateway.sim.amiserver import ChannelTable, parse_action, with_header

EOF = b"\r\n\r\n"
BANNER = b"Asterisk Call Manager/11.0.0\r\n"
LOGIN_OK = b"Response: Success\r\nActionID: x\r\nMessage: Authentication accepted\r\n\r\n"
FULLY_BOOTED = (
    b"Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 3600\r\nLastReload: 3600\r\nStatus: Fully Booted\r\n\r\n"
)
PONG = b"Response: Success\r\nActionID: x\r\nPing: Pong\r\nTimestamp: 0\r\n\r\n"
GOODBYE = b"Response: Goodbye\r\nActionID: x\r\nMessage: Thanks for all the fish.\r\n\r\n"
INVALID = b"Response: Error\r\nActionID: x\r\nMessage: Invalid/unknown command\r\n\r\n"
TOKEN_ENV = "BENCH_CARRIER_TOKEN"

#: Writes bytes to the client, between frames only; returns `perf_counter()` taken just
#: before the bytes were handed to the socket.
Send = Callable[[bytes], Awaitable[float]]
#: What a connection does once its session is set up: write something, return a summary.
Player = Callable[[Send], Awaitable[dict[str, Any]]]


def emit(**record: Any) -> None:
    """One line to the parent."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class MiniAmiServer:
    """A minimal AMI server: session set-up, then `player` writes, then the connection closes."""

    def __init__(self, player: Player, *, start_after: str, on_served: Callable[[dict[str, Any]], None]) -> None:
        if start_after not in ("login", "coreshowchannels"):
            raise ValueError(f"start_after must be 'login' or 'coreshowchannels', not {start_after!r}")
        self.player = player
        self.start_after = start_after
        self.on_served = on_served
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()
        play: asyncio.Task[None] | None = None

        async def send(data: bytes) -> float:
            async with lock:  # a Pong must not land inside a frame
                stamp = time.perf_counter()
                writer.write(data)
                await writer.drain()
                return stamp

        async def run_player() -> None:
            try:
                summary = await self.player(send)
                self.on_served(summary)
            except (ConnectionError, RuntimeError) as exc:
                self.on_served({"error": f"{type(exc).__name__}: {exc}"})
            finally:
                writer.close()

        try:
            await send(BANNER)
            logged_in = False
            while True:
                action = parse_action(await reader.readuntil(EOF))
                name = action.get("action", "").lower()
                aid = action.get("actionid", "").encode("utf-8") or None
                if name == "login" and not logged_in:
                    logged_in = True
                    await send(with_header(LOGIN_OK, b"ActionID", aid) + FULLY_BOOTED)
                    trigger = self.start_after == "login"
                elif name == "coreshowchannels":
                    await send(ChannelTable().render(aid, 0.0))
                    trigger = self.start_after == "coreshowchannels"
                elif name == "ping":
                    await send(with_header(with_header(PONG, b"ActionID", aid), b"Timestamp", b"%.6f" % time.time()))
                    trigger = False
                elif name == "logoff":
                    await send(with_header(GOODBYE, b"ActionID", aid))
                    break
                else:
                    await send(with_header(INVALID, b"ActionID", aid))
                    trigger = False
                if trigger and play is None:
                    play = asyncio.ensure_future(run_player())
                    self._tasks.add(play)
                    play.add_done_callback(self._tasks.discard)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away, or the player closed the connection
        finally:
            if play is not None and not play.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(play), 60)
            writer.close()


# ------------------------------------------------------------------------------ ingest mode


def stream_player(chunks: list[bytes]) -> Player:
    async def play(send: Send) -> dict[str, Any]:
        first: float | None = None
        for chunk in chunks:
            stamp = await send(chunk)
            if first is None:
                first = stamp
        return {"first_byte": first, "last_write": time.perf_counter(), "bytes": sum(len(c) for c in chunks)}

    return play


def load_chunks(path: Path, chunk_bytes: int = 256 * 1024) -> list[bytes]:
    """The stream file cut into chunks that end at frame boundaries."""
    data = path.read_bytes()
    chunks: list[bytes] = []
    pos = 0
    while pos < len(data):
        end = data.find(EOF, min(pos + chunk_bytes, len(data)) - 3)
        end = len(data) if end < 0 else end + 4
        chunks.append(data[pos:end])
        pos = end
    return chunks


async def run_ingest(args: argparse.Namespace) -> int:
    chunks = load_chunks(Path(args.stream))

    def served(kind: str) -> Callable[[dict[str, Any]], None]:
        return lambda summary: emit(event="served", kind=kind, **summary)

    bare = MiniAmiServer(stream_player(chunks), start_after="login", on_served=served("bare"))
    gateway = MiniAmiServer(stream_player(chunks), start_after="coreshowchannels", on_served=served("pipeline"))
    emit(event="ready", bare_port=await bare.start(), gateway_port=await gateway.start())
    await wait_for_parent(args.max_seconds)
    await bare.stop()
    await gateway.stop()
    return 0


# ------------------------------------------------------------------------------ lettering mode


async def run_lettering(args: argparse.Namespace) -> int:
    from gateway.sim.fake_carrier import FakeCarrierServer
    from ops.bench.ami_ingest.stream import build_paced_calls

    count = max(1, round(args.rate * args.seconds))
    calls = build_paced_calls(count, id_base=args.id_base, number_base=args.number_base)
    lead, hold, interval = args.lead_ms / 1000, args.hold_ms / 1000, 1.0 / args.rate
    # (due time, order, call, segment): segment 0 = before, 1 = DialBegin, 2 = after.
    schedule = sorted((k * interval + (-lead, 0.0, hold)[seg], seg, k, seg) for k in range(count) for seg in range(3))
    shift = lead + 0.05  # the first "before" segment is due a little after the start
    dial_at: list[float | None] = [None] * count

    async def play(send: Send) -> dict[str, Any]:
        t0 = time.perf_counter() + shift
        i, writes, late = 0, 0, 0.0
        while i < len(schedule):
            now = time.perf_counter() - t0
            due = schedule[i][0]
            if due > now:
                await asyncio.sleep(due - now)
                continue
            late = max(late, now - due)
            parts: list[bytes] = []
            dialled: list[int] = []
            while i < len(schedule) and schedule[i][0] <= now:
                _, _, k, seg = schedule[i]
                call = calls[k]
                parts.append((call.before, call.dial, call.after)[seg])
                if seg == 1:
                    dialled.append(k)
                i += 1
            stamp = await send(b"".join(parts))
            for k in dialled:
                dial_at[k] = stamp
            writes += 1
        await asyncio.sleep(0.05)
        return {
            "calls": count,
            "writes": writes,
            "max_late_ms": round(late * 1000, 3),
            "duration_s": round(time.perf_counter() - t0, 3),
        }

    token = os.environ.get(TOKEN_ENV, "")
    carrier = FakeCarrierServer(PROFILES["skt"], token)
    url = await carrier.start()
    ami = MiniAmiServer(play, start_after="coreshowchannels", on_served=lambda s: emit(event="played", **s))
    emit(event="ready", ami_port=await ami.start(), carrier_url=url, calls=count)
    await wait_for_parent(args.max_seconds)
    await ami.stop()
    await carrier.stop()
    emit(
        event="report",
        calls=[{"number": c.number, "dial_at": t} for c, t in zip(calls, dial_at, strict=True)],
        requests=[{"recipient": r.recipient, "received_at": r.received_at, "error": r.error} for r in carrier.requests],
    )
    return 0


# ------------------------------------------------------------------------------ entry point


async def wait_for_parent(max_seconds: float) -> None:
    """Until the parent writes a line or closes stdin, at most `max_seconds`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.readline(), max_seconds)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ops.bench.ami_ingest.server")
    p.add_argument("--max-seconds", type=float, default=600.0, help="end by itself after this long")
    sub = p.add_subparsers(dest="mode", required=True)
    ingest = sub.add_parser("ingest")
    ingest.add_argument("--stream", required=True)
    let = sub.add_parser("lettering")
    let.add_argument("--rate", type=float, required=True, help="new calls per second")
    let.add_argument("--seconds", type=float, required=True)
    let.add_argument("--lead-ms", type=float, default=20.0, help="call set-up events this long before DialBegin")
    let.add_argument("--hold-ms", type=float, default=200.0, help="the rest of the call this long after")
    let.add_argument("--id-base", type=int, default=0)
    let.add_argument("--number-base", type=int, default=0)
    return p


def main() -> int:
    args = parser().parse_args()
    import uvloop

    return uvloop.run(run_ingest(args) if args.mode == "ingest" else run_lettering(args))


if __name__ == "__main__":
    raise SystemExit(main())
