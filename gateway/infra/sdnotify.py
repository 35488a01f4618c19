"""systemd's notify protocol: READY=1, WATCHDOG=1, STOPPING=1 and STATUS= over $NOTIFY_SOCKET.

The protocol is one datagram per message to an AF_UNIX socket (a leading '@' names an abstract
socket). It is a dozen lines, so no library: outside systemd (no NOTIFY_SOCKET) every call is a
no-op, which is what tests, the demo and a shell want.

The watchdog is fed from the event loop itself (`watchdog_task`), not from a thread: a thread
would keep feeding systemd while the loop is stuck, which is exactly what the watchdog must catch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to systemd; silent when not started by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process meant to feed the watchdog; a child must not.
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s: float | None = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self.sent: list[str] = []  # what was sent (watchdog pings only counted), for tests
        self.watchdog_pings = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        if self.address is None:
            return False
        message = "\n".join(lines)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode("utf-8"))
        except OSError as exc:
            log.warning("systemd notify failed (%s): %s", message.split("\n", 1)[0], exc)
            return False
        if message == "WATCHDOG=1":
            self.watchdog_pings += 1
        else:
            self.sent.append(message)
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    async def watchdog_task(self, alive: Callable[[], bool] = lambda: True) -> None:
        """Feed the watchdog at half its period while the loop runs and `alive()` holds.

        `alive` lets the owner withhold the ping when something essential is wedged
        (a worker with no live threads), so systemd restarts the service."""
        if self.watchdog_s is None or self.address is None:
            return
        period = self.watchdog_s / 2
        while True:
            if alive():
                self.notify("WATCHDOG=1")
            else:
                log.error("watchdog not fed: the service reports itself wedged")
            await asyncio.sleep(period)
