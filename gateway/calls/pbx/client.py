"""Supervised AMI client for one PBX, built on panoramisk's `Manager`.

panoramisk's own reconnect (fixed 2 s, no backoff) and pinger (never checks the answer)
are disabled; a supervisor coroutine (`PbxClient.run`) owns the connection life cycle:
connect → login (bounded) → FullyBooted uptime check → CoreShowChannels resync → ping
until the session ends → backoff (tenacity) → again. Every step is reported to an
`AmiListener` as a `SessionChange`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from panoramisk.manager import Manager
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from gateway.calls.pbx.protocol import AmiCounters, AmiProtocol
from gateway.errors import AmiAuthError, AmiError, AmiTimeout
from gateway.ports import AmiListener, SessionChange, SessionKind

log = logging.getLogger(__name__)

#: How much smaller than expected a FullyBooted Uptime may be before we call it a restart
#: (Uptime has one-second resolution and the clocks of two hosts are involved).
UPTIME_TOLERANCE_S = 5.0


@dataclass(frozen=True, slots=True)
class AmiSettings:
    """Connection settings of one PBX (one `ami:` entry of gateway.yaml)."""

    name: str
    host: str
    port: int
    username: str
    secret: str
    events: str = "on"
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    action_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    auth_backoff_initial_s: float = 5.0
    auth_backoff_max_s: float = 300.0
    stable_after_s: float = 30.0


class _SessionEndedError(AmiError):
    """A session ended before it was stable: retry with backoff."""


class _SupervisedManager(Manager):  # type: ignore[misc]  # panoramisk is untyped
    """panoramisk `Manager` without its reconnect loop, pinger and action re-sending.

    We keep `send_action` and the factory role towards the protocol; the supervisor in
    `PbxClient` decides when to connect again.
    """

    def __init__(self, settings: AmiSettings) -> None:
        super().__init__(
            host=settings.host,
            port=settings.port,
            username=settings.username,
            secret=settings.secret,
            events=settings.events,
            encoding="utf-8",
            loop=asyncio.get_running_loop(),
            forgetable_actions=("ping", "login", "logoff"),
        )
        # The base class registers `send_awaiting_actions` for FullyBooted; actions are
        # never re-sent on a new session (an Originate twice rings a citizen twice).
        self.callbacks.clear()
        self.patterns.clear()

    def attach(self, protocol: AmiProtocol) -> None:
        """Adopt a freshly connected protocol (what `Manager.connection_made` would do)."""
        protocol.factory = self
        protocol.config = self.config
        self.protocol = protocol
        self.responses = protocol.responses
        self._connected = True
        self.authenticated = False

    def connection_made(self, f: Any) -> None:  # pragma: no cover - never called
        raise NotImplementedError("PbxClient connects by itself")

    def connection_lost(self, exc: Any) -> None:
        """Panoramisk would schedule a reconnect here; the supervisor does that instead."""
        self._connected = False
        self.authenticated = False

    def ping(self) -> None:  # pragma: no cover - the base pinger is never started
        """Disabled: `PbxClient` pings and checks the answer."""

    async def send_awaiting_actions(self, *_: Any) -> None:  # pragma: no cover
        """Disabled: see `__init__`."""


class PbxClient:
    """Follows one PBX over AMI and reports events and session changes to a listener."""

    def __init__(self, settings: AmiSettings, listener: AmiListener, wanted_events: frozenset[str]) -> None:
        self.settings = settings
        self._listener = listener
        self._wanted = frozenset(wanted_events)
        self._counters = AmiCounters()
        self._manager: _SupervisedManager | None = None
        self._protocol: AmiProtocol | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._running = False
        self._run_done = asyncio.Event()
        self._session_end: asyncio.Future[str] | None = None
        self._fully_booted: asyncio.Future[int] | None = None
        self._shutdown_seen = False
        self._connected = False
        self._authenticated = False
        self._authenticated_at: float | None = None  # epoch of the current session's login
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        # Every TCP connection attempt (refused ones included), and successful logins after the
        # first one: a PBX restart is one reconnect, however many attempts it took.
        self._connect_attempts = 0
        self._logins = 0
        self._reconnects = 0
        self._lost_at: float | None = None  # PBX clock when this session's connection was lost
        self._login_failures = 0
        self._consecutive_failures = 0
        self._consecutive_auth_failures = 0
        self._pbx_uptime: int | None = None
        self._uptime_seen_at: float | None = None  # monotonic time of the last FullyBooted
        self._ami_version: str | None = None
        self._wait_net = wait_exponential_jitter(
            multiplier=settings.backoff_initial_s, max=settings.backoff_max_s, jitter=settings.backoff_initial_s
        )
        self._wait_auth = wait_exponential_jitter(
            multiplier=settings.auth_backoff_initial_s,
            max=settings.auth_backoff_max_s,
            jitter=settings.auth_backoff_initial_s,
        )

    @property
    def name(self) -> str:
        """The PBX name used in events, logs and /health."""
        return self.settings.name

    # -- public API -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and stay connected until `stop()`; never returns earlier, never raises AmiError.

        A stopped client stays stopped: make a new `PbxClient` to start again.
        """
        if self._running:
            raise RuntimeError(f"PbxClient {self.name!r} is already running")
        self._running = True
        self._run_done.clear()
        try:
            while not self._stop.is_set():
                # A new AsyncRetrying after each stable session: that resets the backoff.
                retrying = AsyncRetrying(
                    wait=self._wait,
                    sleep=self._sleep,
                    reraise=True,
                    retry=retry_if_exception_type(AmiError),
                )
                async for attempt in retrying:
                    with attempt:
                        await self._session()
        finally:
            self._running = False
            self._run_done.set()

    async def stop(self) -> None:
        """Log off if connected, close, cancel our tasks; returns within about a second."""
        self._stop.set()
        manager, protocol = self._manager, self._protocol
        if self._authenticated and manager is not None and protocol is not None and not protocol.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    manager.send_action({"Action": "Logoff"}), min(1.0, self.settings.action_timeout_s)
                )
        self._end_session("stopped")
        if protocol is not None:
            protocol.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._run_done.wait(), 2.0)

    async def send_action(self, action: Mapping[str, str]) -> Any:
        """Send one AMI action on the current session and return panoramisk's answer.

        The answer is a panoramisk `Message` (a case-insensitive mapping), or a list of
        them for actions answered with an event list. Raises `AmiError` when not logged
        in or the connection closes, `AmiTimeout` after `action_timeout_s`.
        """
        return await self._send(dict(action), self.settings.action_timeout_s)

    def status(self) -> dict[str, Any]:
        """A snapshot for /health and /metrics."""
        last = self._counters.last_frame_at
        return {
            "name": self.name,
            # (the internal listener's /health and the staff console's status page: never the
            # public listener)
            "host": self.settings.host,
            "port": self.settings.port,
            "connected": self._connected,
            "authenticated": self._authenticated,
            "connected_since": self._authenticated_at if self._authenticated else None,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            # Any frame counts: discarded noise is still proof that the PBX talks to us.
            "seconds_since_last_event": None if last is None else round(time.monotonic() - last, 3),
            "reconnects": self._reconnects,
            "connect_attempts": self._connect_attempts,
            "login_failures": self._login_failures,
            "pbx_uptime": self._current_uptime(),
            "ami_version": self._ami_version,
            "frames_in": self._counters.frames_in,
            "events_dispatched": self._counters.dispatched,
            "events_discarded_by_name": self._counters.discarded_by_name(),
            "decode_errors": self._counters.decode_errors,
            "malformed_frames": self._counters.malformed,
        }

    # -- the supervisor ----------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        # Our own failure counts pick the exponent, so that auth and network failures each
        # have their own curve whatever tenacity's attempt number is.
        shifted = copy.copy(state)
        if isinstance(exc, AmiAuthError):
            shifted.attempt_number = max(1, self._consecutive_auth_failures)
            delay = self._wait_auth(shifted)
        else:
            shifted.attempt_number = max(1, self._consecutive_failures)
            delay = self._wait_net(shifted)
        log.info("AMI %s: next connection attempt in %.2f s", self.name, delay)
        return delay

    async def _sleep(self, delay: float) -> None:
        # Backoff sleeps end early on stop(), so stop() returns promptly.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _session(self) -> None:
        """One TCP session; returns normally after a stable session, raises to back off."""
        if self._stop.is_set():
            return
        self._connect_attempts += 1
        self._lost_at = None
        loop = asyncio.get_running_loop()
        self._session_end = loop.create_future()
        self._fully_booted = loop.create_future()
        self._shutdown_seen = False
        manager = self._manager = _SupervisedManager(self.settings)
        healthy_since: float | None = None
        try:
            protocol = await self._connect()
        except AmiError:
            self._consecutive_failures += 1
            raise
        self._protocol = protocol
        if self._stop.is_set():  # stop() came while we were connecting
            protocol.close()
            return
        manager.attach(protocol)
        self._connected = True
        self._emit(SessionChange(SessionKind.CONNECTED, detail=f"AMI {self._ami_version}"))
        detail = "closed"
        try:
            if not await self._login(manager):
                detail = "login rejected"
                raise AmiAuthError(self._last_error or "login rejected")
            healthy_since = time.monotonic()
            await self._check_restart()
            self._emit(SessionChange(SessionKind.RESYNC_STARTED))
            channels = await self._resync()
            self._emit(SessionChange(SessionKind.RESYNCED, channels=channels, uptime=self._pbx_uptime))
            self._spawn(self._pinger(manager))
            detail = await self._session_end
        except AmiAuthError:
            raise
        except (AmiError, OSError) as exc:
            detail = str(exc)
            self._note_error(detail)
        finally:
            self._teardown(protocol, detail)
        if self._stop.is_set():
            return
        if healthy_since is not None and time.monotonic() - healthy_since >= self.settings.stable_after_s:
            self._consecutive_failures = 0
            return
        self._consecutive_failures += 1
        raise _SessionEndedError(detail)

    async def _connect(self) -> AmiProtocol:
        loop = asyncio.get_running_loop()
        s = self.settings

        end = self._session_end

        def on_lost(exc: BaseException | None) -> None:
            # Bound to this session: a late connection_lost of an old transport must not
            # end the session that replaced it.
            self._on_lost(exc, end)

        def factory() -> AmiProtocol:
            return AmiProtocol(self._wanted, self._on_event, on_lost, self._counters, s.name)

        protocol: AmiProtocol | None = None
        try:
            _transport, connected = await asyncio.wait_for(
                loop.create_connection(factory, s.host, s.port), s.connect_timeout_s
            )
            protocol = connected
            self._ami_version = await asyncio.wait_for(asyncio.shield(connected.banner_received), s.connect_timeout_s)
        except (OSError, TimeoutError, AmiError) as exc:
            why = f"cannot connect to {s.host}:{s.port}: {str(exc) or type(exc).__name__}"
            self._note_error(why)
            log.warning("AMI %s: %s", s.name, why)
            if protocol is not None:
                protocol.close()
            raise AmiError(why) from exc
        return connected

    async def _login(self, manager: _SupervisedManager) -> bool:
        s = self.settings
        answer = await self._send(
            {"Action": "Login", "Username": s.username, "Secret": s.secret, "Events": s.events},
            s.action_timeout_s,
            require_login=False,
        )
        if answer.success:
            if self._logins:
                self._reconnects += 1
            self._logins += 1
            manager.authenticated = True
            self._authenticated = True
            self._authenticated_at = time.time()
            self._consecutive_auth_failures = 0
            self._emit(SessionChange(SessionKind.AUTHENTICATED))
            return True
        self._login_failures += 1
        self._consecutive_auth_failures += 1
        why = (
            f"AMI login rejected for user {s.username!r} on pbx {s.name!r} ({answer.get('Message', 'no reason given')})"
        )
        self._note_error(why)
        log.error(why)
        self._emit(SessionChange(SessionKind.AUTH_FAILED, detail=why))
        return False

    async def _check_restart(self) -> None:
        """Wait for this session's FullyBooted; emit PBX_RESTARTED when its Uptime went backwards.

        Asterisk queues FullyBooted at login (when the login's event mask has `system` and
        the PBX is booted), and a session's frames arrive in order: so a Ping sent now is
        answered after it. The Pong is the barrier: no FullyBooted before it means none
        is coming now (a booting PBX sends it later, and `_on_fully_booted` checks it then).
        """
        booted = self._fully_booted
        if booted is None:
            return
        if not booted.done():
            barrier = asyncio.ensure_future(self._send({"Action": "Ping"}, self.settings.action_timeout_s))
            await asyncio.wait({booted, barrier}, return_when=asyncio.FIRST_COMPLETED)
            if not booted.done():
                booted.cancel()
                barrier.result()  # raises AmiTimeout / AmiError: the session is not usable
                return
            if not barrier.done():
                self._tasks.add(barrier)  # let it finish; stop()/teardown cancel it
                barrier.add_done_callback(_discard_result(self._tasks))
        # The Uptime itself was checked when FullyBooted arrived (`_on_fully_booted`).

    async def _resync(self) -> list[dict[str, str]]:
        answer = await self._send({"Action": "CoreShowChannels"}, self.settings.action_timeout_s, as_list=True)
        items = answer if isinstance(answer, list) else [answer]
        return [_plain(m) for m in items if m.get("Event") == "CoreShowChannel"]

    async def _pinger(self, manager: _SupervisedManager) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.ping_interval_s)
            try:
                await self._send({"Action": "Ping"}, s.ping_timeout_s)
            except AmiTimeout:
                why = "peer silent"
                self._note_error(f"{why}: no Pong within {s.ping_timeout_s} s")
                # The PBX was last heard from with its last frame, not now.
                last = self._counters.last_frame_at
                self._lost_at = self._pbx_now(last) if last is not None else None
                log.warning("AMI %s: no Pong within %.1f s, replacing the connection", self.name, s.ping_timeout_s)
                self._end_session(why)
                return
            except AmiError:
                return  # the connection is already gone; _on_lost ends the session

    def _teardown(self, protocol: AmiProtocol, detail: str) -> None:
        protocol.close()
        for task in list(self._tasks):
            task.cancel()
        was_connected = self._connected
        self._connected = False
        self._authenticated = False
        if was_connected:
            lost_at = self._lost_at if self._lost_at is not None else self._pbx_now()
            self._emit(SessionChange(SessionKind.LOST, detail=detail, uptime=self._pbx_uptime), lost_at)

    # -- callbacks from the protocol (synchronous, on the loop) -------------------------------

    def _on_event(self, event: dict[str, str], at: float) -> None:
        name = event.get("Event", "")
        if name == "FullyBooted":
            self._on_fully_booted(event, at)
            if name not in self._wanted:
                return
        elif name == "Shutdown":
            self._shutdown_seen = True
            log.warning(
                "AMI %s: PBX is shutting down (%s, restart=%s)",
                self.name,
                event.get("Shutdown", "?"),
                event.get("Restart", "?"),
            )
        try:
            self._listener.ami_event(self.name, event, at)
        except Exception:
            log.exception("AMI %s: listener failed on %s", self.name, name)

    def _on_fully_booted(self, event: dict[str, str], at: float) -> None:
        try:
            uptime = int(event.get("Uptime", ""))
        except ValueError:
            return
        # Checked here, synchronously, so that PBX_RESTARTED reaches the listener before any
        # event that follows FullyBooted in the stream: calls of the new PBX life must not be
        # ended by news about the old one.
        self._apply_uptime(uptime, at)
        booted = self._fully_booted
        if booted is not None and not booted.done():
            booted.set_result(uptime)  # releases `_check_restart`'s barrier

    def _apply_uptime(self, uptime: int, at: float) -> None:
        """Compare a session's FullyBooted Uptime with what the last session predicts."""
        now = time.monotonic()
        if self._pbx_uptime is not None and self._uptime_seen_at is not None:
            expected = self._pbx_uptime + (now - self._uptime_seen_at) - UPTIME_TOLERANCE_S
            if uptime < expected:
                log.warning(
                    "AMI %s: PBX restarted (uptime %d s, expected about %.0f s)",
                    self.name,
                    uptime,
                    expected + UPTIME_TOLERANCE_S,
                )
                self._emit(SessionChange(SessionKind.PBX_RESTARTED, detail=f"uptime {uptime} s", uptime=uptime), at)
        self._pbx_uptime = uptime
        self._uptime_seen_at = now

    def _on_lost(self, exc: BaseException | None, end: asyncio.Future[str] | None) -> None:
        if self._stop.is_set():
            why = "stopped"
        elif exc is not None:
            why = f"connection lost: {exc}"
        elif self._shutdown_seen:
            why = "PBX shut down"
        else:
            why = "connection closed by the PBX"
        if end is not None and not end.done():
            if self._lost_at is None:
                self._lost_at = self._pbx_now()
            end.set_result(why)

    # -- helpers -----------------------------------------------------------------------------

    async def _send(
        self, action: dict[str, str], limit_s: float, *, as_list: bool | None = None, require_login: bool = True
    ) -> Any:
        manager, protocol = self._manager, self._protocol
        if manager is None or protocol is None or protocol.closed or (require_login and not self._authenticated):
            raise AmiError(f"AMI {self.name}: not connected")
        future = manager.send_action(action, as_list=as_list)
        try:
            return await asyncio.wait_for(future, limit_s)
        except TimeoutError:
            # Forget the action so a late answer does not linger in panoramisk's table.
            for key in [k for k, v in protocol.responses.items() if v.future is future]:
                protocol.responses.pop(key, None)
            raise AmiTimeout(f"AMI {self.name}: no answer to {action.get('Action')} within {limit_s} s") from None

    def _end_session(self, detail: str) -> None:
        end = self._session_end
        if end is not None and not end.done():
            end.set_result(detail)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _current_uptime(self) -> int | None:
        if self._pbx_uptime is None or self._uptime_seen_at is None:
            return None
        return self._pbx_uptime + int(time.monotonic() - self._uptime_seen_at)

    def _note_error(self, why: str) -> None:
        self._last_error = why
        self._last_error_at = time.time()

    def _pbx_now(self, monotonic: float | None = None) -> float:
        """The PBX's clock now (or at `monotonic`), as its event stamps run; the gateway's own
        clock until the PBX stamped an event. Session changes are dated with it, so that the
        listener can compare them with event times (a resync's channel ages, a lost connection)."""
        at = self._counters.pbx_time(time.monotonic() if monotonic is None else monotonic)
        return time.time() if at is None else at

    def _emit(self, change: SessionChange, at: float | None = None) -> None:
        log.info("AMI %s: %s %s", self.name, change.kind.value, change.detail)
        try:
            self._listener.ami_session(self.name, change, self._pbx_now() if at is None else at)
        except Exception:
            log.exception("AMI %s: listener failed on %s", self.name, change.kind.value)


def _plain(message: Any) -> dict[str, str]:
    """A panoramisk Message as a plain dict (first value of repeated headers)."""
    out: dict[str, str] = {}
    for key, value in message.items():
        out[key] = value[0] if isinstance(value, list) else value
    return out


def _discard_result(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback that forgets a background task and swallows its outcome."""

    def done(task: asyncio.Future[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done
