"""This gateway instance's liveness heartbeat in Redis, which its lettering leases are tied to.

Two gateways follow one PBX; the first to claim a call letters it, its claim a lease until the
carrier answered (`Outbox.deliver`). A lease alone made a survivor wait out a dead peer's lease
(seconds: the slowest carrier's deadline + 2 s), by which time the phone had stopped ringing.
So each `gateway run` gets a random instance id at start and renews `gw:alive:<instance>`
every `EVERY_S` with a `TTL_S` expiry; its leases name the instance, and a peer that finds a
lease whose owner's heartbeat is gone takes the call over in the claim's own atomic step
(claim.lua `claim_lease`): within about `TTL_S` of a SIGKILL or SIGSTOP.

The price of a short TTL: an event loop stalled longer than `TTL_S - EVERY_S` looks dead, and
the peer letters a call this gateway is still asking about. Both requests carry the same
idempotency key (the adapter's per-call reference), so a carrier that honours it letters once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Protocol

from gateway.errors import StoreUnavailable

log = logging.getLogger(__name__)

EVERY_S = 0.25  # renewal period
TTL_S = 0.7  # a heartbeat not renewed for this long means: the instance is gone


class HeartbeatStore(Protocol):
    """Where heartbeats live, and the lettering claim that reads them (`RedisOutboxStore`)."""

    async def heartbeat(self, instance: str, ttl_ms: int) -> None: ...

    async def forget(self, instance: str) -> None: ...

    async def claim_lease(
        self,
        *,
        dedupe_key: str,
        recipient_hash: str,
        ttl_s: float,
        rate_limit: int,
        rate_window_s: int,
        owner: str,
        peek: bool = False,
    ) -> str: ...


class Liveness:
    """Renews this instance's heartbeat; `beating` says whether its leases may name it.

    A lease names the instance only while the last renewal is younger than the TTL: a claim
    made while Redis refused the heartbeat would look dead to a peer at once, so it is taken
    as a plain lease (waited out by a peer, as before liveness existed)."""

    def __init__(
        self, store: HeartbeatStore, *, every_s: float = EVERY_S, ttl_s: float = TTL_S, instance: str = ""
    ) -> None:
        self.store = store
        self.instance = instance or secrets.token_hex(6)
        self.every_s = every_s
        self.ttl_s = ttl_s
        self.beats = 0
        self.failures = 0
        self._last_ok = -1e9  # time.monotonic() of the last renewal Redis took
        self._task: asyncio.Task[None] | None = None

    @property
    def beating(self) -> bool:
        """The heartbeat is in Redis now (renewed within the TTL, with a margin of one period)."""
        return time.monotonic() - self._last_ok < self.ttl_s - self.every_s

    async def beat(self) -> bool:
        """Renew once; False (and logged once per outage) when Redis did not take it."""
        sent = time.monotonic()
        try:
            await self.store.heartbeat(self.instance, int(self.ttl_s * 1000))
        except StoreUnavailable as exc:
            if self.failures == 0 or self.beating:
                log.warning("liveness heartbeat of gateway instance %s not renewed: %s", self.instance, exc)
            self.failures += 1
            return False
        self.beats += 1
        self._last_ok = sent  # the expiry counts from when it was sent, at the latest
        return True

    def start(self) -> None:
        if self._task is None or self._task.done():
            log.info(
                "gateway instance %s: liveness heartbeat every %.2f s, ttl %.2f s",
                self.instance,
                self.every_s,
                self.ttl_s,
            )
            self._task = asyncio.get_running_loop().create_task(self._run(), name="liveness")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.beat()
            next_at = max(next_at + self.every_s, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def stop(self) -> None:
        """Stop renewing and remove the heartbeat: what this instance still holds (nothing after
        a drain) is a peer's to take at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._last_ok = -1e9
        try:
            await self.store.forget(self.instance)
        except StoreUnavailable as exc:
            log.warning("liveness heartbeat of gateway instance %s not removed: %s", self.instance, exc)


__all__ = ["EVERY_S", "TTL_S", "HeartbeatStore", "Liveness"]
