"""Live updates: `GET /events`, server-sent events for the inbox and thread pages.

Each open page holds one stream. The process's `EventHub` (one Redis subscription, fanned out)
gives every stream the compact events {"k": kind, "q": queue, "t": thread, "at": epoch}; a
stream forwards only the events of queues its person may see, plus {"k": "resync"} (the hub lost
events: reload what is shown). Events carry ids only, never a text or a number. console.js
reloads the shown list or conversation when one concerns it: no polling.

A stream sends a comment every `HEARTBEAT_S` (proxies keep it open, a closed connection is
noticed) and ends when the server stops (`on_shutdown`), when the person's account is disabled,
or after the session's idle time: an open page is not activity, so it must not keep a session
alive forever; the last event then is {"k": "idle"} and console.js reconnects only after the
person does something.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.console.app import DEPS, SECURITY_HEADERS, SESSION_COOKIE, account_of, session_of
from gateway.domain.staff import Account

log = logging.getLogger(__name__)

_WIRE = "__sse"  # the encoded form cached in a shared event (see `_encoded`)
HEARTBEAT_S = 15.0
RETRY_MS = 5000  # how long EventSource waits before it reconnects after a drop


class Streams:
    """The open streams of this app: each one's stop signal, set on shutdown."""

    def __init__(self) -> None:
        self.stops: set[asyncio.Event] = set()

    def close_all(self) -> int:
        for stop in self.stops:
            stop.set()
        return len(self.stops)


STREAMS: web.AppKey[Streams] = web.AppKey("console_streams", Streams)


def _encoded(event: dict[str, Any]) -> bytes:
    """An event as one SSE message, encoded once: the hub hands the same dict to every page, so
    the bytes are kept in it under a key that is never sent."""
    wire = event.get(_WIRE)
    if not isinstance(wire, bytes):
        body = {k: v for k, v in event.items() if k != _WIRE}
        wire = b"data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
        event[_WIRE] = wire
    return wire


def forwarded(account: Account, event: dict[str, Any]) -> bool:
    """Whether a person's stream carries `event`: hub-wide signals, and their queues' events."""
    if event.get("k") == "resync":
        return True
    queue = event.get("q")
    return isinstance(queue, str) and account.may_see(queue)


async def _still_valid(request: web.Request, account: Account, session_id: str) -> bool:
    """The account is still enabled and, when the session store can look without restarting the
    idle timer (an optional `peek`), the session still exists."""
    deps = request.app[DEPS]
    current = await deps.directory.account(account.id)
    if current is None or current.disabled:
        return False
    peek = getattr(deps.sessions, "peek", None)
    if peek is not None:
        return await peek(session_id) is not None
    return True


async def events(request: web.Request) -> web.StreamResponse:
    account, session = account_of(request), session_of(request)
    deps = request.app[DEPS]
    hub = deps.extras.get("events")
    if hub is None:
        # 204 tells EventSource not to reconnect: no live updates in this gateway.
        return web.Response(status=204)
    response = web.StreamResponse(
        headers={
            **SECURITY_HEADERS,
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
        }
    )
    stop = asyncio.Event()
    streams = request.app[STREAMS]
    streams.stops.add(stop)
    subscription = hub.subscribe()
    idle_s = float(deps.config.session_idle_minutes) * 60.0
    # (`events_heartbeat_s` in the extras: a shorter interval, for a proxy that drops quiet
    # connections sooner, or a test that must see a stream end without waiting 15 s)
    heartbeat_s = float(deps.extras.get("events_heartbeat_s", HEARTBEAT_S))
    ends_at = time.monotonic() + idle_s
    sid = request.cookies.get(SESSION_COOKIE, "") or session.id
    events_in: AsyncIterator[dict[str, Any]] = aiter(subscription)
    pending: asyncio.Future[Any] | None = None
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        while not stop.is_set():
            if pending is None:
                pending = asyncio.ensure_future(anext(events_in))
            wait_s = min(heartbeat_s, max(0.0, ends_at - time.monotonic()))
            done, _ = await asyncio.wait({pending, stopping}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                break
            if pending in done:
                try:
                    event = pending.result()
                except StopAsyncIteration:  # the hub stopped
                    break
                pending = None
                # Everything already waiting goes out in one write (a burst of texts: one
                # wake-up and one send per page, not one per event), each event encoded once
                # for all the pages that carry it.
                batch = [e for e in (event, *subscription.ready()) if forwarded(account, e)]
                if batch:
                    await response.write(b"".join(_encoded(e) for e in batch))
                continue
            # A quiet interval: the heartbeat, the session's idle limit, the account's state.
            if time.monotonic() >= ends_at:
                await response.write(b'data: {"k":"idle"}\n\n')
                break
            if not await _still_valid(request, account, sid):
                await response.write(b'data: {"k":"ended"}\n\n')
                break
            await response.write(b": hb\n\n")
    except ConnectionResetError:
        pass  # the page was closed: nothing to tell anyone
    finally:
        streams.stops.discard(stop)
        for future in (pending, stopping):
            if future is not None and not future.done():
                future.cancel()
        with contextlib.suppress(Exception):
            done_with = hub.unsubscribe(subscription)
            if inspect.isawaitable(done_with):
                await done_with
    return response


async def _close_streams(app: web.Application) -> None:
    closed = app[STREAMS].close_all()
    if closed:
        log.info("console: closed %d live-update stream(s)", closed)


def add_routes(app: web.Application) -> None:
    app[STREAMS] = Streams()
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/events", events)
