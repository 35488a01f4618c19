"""A small loopback TCP proxy for fault tests (no toxiproxy here).

    proxy = TcpProxy("127.0.0.1", upstream_port)
    host, port = await proxy.start()      # point the client at (host, port)
    proxy.cut()                            # reset every open connection (both sides)
    await proxy.refuse()                   # stop listening: new connects get ECONNREFUSED
    await proxy.accept()                   # listen again on the same port
    proxy.silence()                        # accept and keep connections open, forward nothing
    proxy.delay(0.2)                       # every chunk waits 200 ms before it is forwarded
    proxy.throttle(2_000)                  # at most ~2,000 bytes/s per direction and connection
    proxy.resume()                         # back to a plain pipe (delay, throttle, silence off)

Silence drops what it does not forward, as a hung peer does: a client must notice by its own
liveness checks (a ping without a pong) and reconnect. Everything runs on the caller's
event loop, on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    accepted: int = 0  # client connections accepted
    upstream_failures: int = 0  # the upstream refused or was unreachable
    cut: int = 0  # connections reset by cut()
    bytes_up: int = 0  # client -> upstream, forwarded
    bytes_down: int = 0  # upstream -> client, forwarded
    dropped: int = 0  # bytes read while silent and thrown away
    peers: list[int] = field(default_factory=list)  # client ports, in accept order


class _Link:
    """One proxied connection: two pumps and the four stream ends."""

    def __init__(self, proxy: TcpProxy, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client_r, self.client_w = client_r, client_w
        self.upstream_w: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        proxy = self.proxy
        try:
            upstream_r, self.upstream_w = await asyncio.open_connection(proxy.target_host, proxy.target_port)
        except OSError:
            proxy.stats.upstream_failures += 1
            self.abort()
            return
        self.tasks = [
            asyncio.ensure_future(self._pump(self.client_r, self.upstream_w, up=True)),
            asyncio.ensure_future(self._pump(upstream_r, self.client_w, up=False)),
        ]
        try:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        proxy = self.proxy
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    # Half-close: pass the EOF on, keep the other direction running.
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                if proxy.silent:
                    proxy.stats.dropped += len(data)
                    continue
                if proxy.delay_s > 0:
                    await asyncio.sleep(proxy.delay_s)
                rate = proxy.rate_bps
                if rate:
                    # Forward in small pieces at about `rate` bytes per second.
                    piece = max(1, rate // 20)
                    for i in range(0, len(data), piece):
                        writer.write(data[i : i + piece])
                        await writer.drain()
                        await asyncio.sleep(len(data[i : i + piece]) / rate)
                else:
                    writer.write(data)
                    await writer.drain()
                if up:
                    proxy.stats.bytes_up += len(data)
                else:
                    proxy.stats.bytes_down += len(data)

    def abort(self) -> None:
        """Reset both sides (RST, no FIN), as a crashed middlebox or a pulled cable would."""
        for writer in (self.client_w, self.upstream_w):
            if writer is not None:
                transport = writer.transport
                with contextlib.suppress(Exception):
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                transport.abort()
        for task in self.tasks:
            task.cancel()

    def close(self) -> None:
        for writer in (self.client_w, self.upstream_w):
            if writer is not None:
                writer.close()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to (target_host, target_port), with faults on demand."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.host, self.port = host, port
        self.silent = False
        self.delay_s = 0.0
        self.rate_bps = 0
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def start(self) -> tuple[str, int]:
        """Listen (on a free port the first time, on the same port after refuse())."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.host, self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link = _Link(self, reader, writer)
        self._links.add(link)
        self.stats.accepted += 1
        peer = writer.get_extra_info("peername")
        if peer:
            self.stats.peers.append(int(peer[1]))
        try:
            await link.run()
        finally:
            self._links.discard(link)
            self._tasks.discard(task)

    # ------------------------------------------------------------------ faults

    def cut(self) -> int:
        """Reset every open connection; returns how many. New connections are still accepted."""
        links = list(self._links)
        for link in links:
            link.abort()
        self.stats.cut += len(links)
        return len(links)

    async def refuse(self) -> None:
        """Stop listening (connects are refused) and reset the open connections."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        self.cut()

    async def accept(self) -> None:
        """Listen again on the same port after refuse()."""
        if self._server is None:
            await self.start()

    def silence(self) -> None:
        """Keep every connection open and accept new ones, but forward nothing (a hung peer)."""
        self.silent = True

    def delay(self, seconds: float) -> None:
        self.delay_s = seconds

    def throttle(self, bytes_per_s: int) -> None:
        self.rate_bps = bytes_per_s

    def resume(self) -> None:
        self.silent, self.delay_s, self.rate_bps = False, 0.0, 0

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
