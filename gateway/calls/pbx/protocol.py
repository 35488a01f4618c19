"""AMI framing on top of panoramisk's `AMIProtocol`: bytes-level, UTF-8 safe, prefiltered.

panoramisk 1.4 decodes every TCP read on its own with ``errors='ignore'`` and frames the
resulting text, so a Hangul character split across two reads silently disappears. It also
parses every frame into a `CaseInsensitiveDict`, although about half of Asterisk's events
(VarSet, RTCP*, DeviceStateChange...) are of no interest to the gateway.

`AmiProtocol` therefore:

* buffers bytes and splits frames on ``b"\\r\\n\\r\\n"``, decoding per frame;
* reads the event name from the raw first line and drops unwanted events with a counter,
  before any decoding or parsing;
* parses wanted events into a plain ``dict[str, str]`` and hands them to a callback;
* lets responses, and events answering one of *our* pending actions, go through
  panoramisk's `Message.from_line` + `handle_message`, so action futures keep working.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from gateway.errors import AmiError

log = logging.getLogger(__name__)

#: A frame larger than this without a terminator means the stream is not AMI any more.
MAX_BUFFER = 1 << 20

#: Events the client itself needs, whatever the listener wants.
CLIENT_EVENTS = frozenset({"FullyBooted", "Shutdown"})

_BANNER = b"Asterisk Call Manager/"
_EOF = b"\r\n\r\n"
_EOL = b"\r\n"
_EVENT = b"Event: "
_RESPONSE = b"Response: "
_ACTION_ID = b"\r\nActionID: "
#: Headers panoramisk's `handle_message` needs as one string.
_SINGLE_VALUED = ("ActionID", "CommandID", "Event", "Response")

EventCallback = Callable[[dict[str, str], float], None]
LostCallback = Callable[[BaseException | None], None]


class AmiCounters:
    """Counters shared by every connection of one client (they survive reconnects)."""

    __slots__ = (
        "decode_errors",
        "discarded",
        "dispatched",
        "frames_in",
        "last_frame_at",
        "last_stamp",
        "last_stamp_read_at",
        "malformed",
    )

    def __init__(self) -> None:
        self.frames_in = 0
        self.dispatched = 0
        self.decode_errors = 0
        self.malformed = 0
        # Event name (raw bytes, as on the wire) -> number of frames dropped by the prefilter.
        self.discarded: dict[bytes, int] = {}
        self.last_frame_at: float | None = None  # time.monotonic() of the last complete frame
        # The PBX's clock: the `Timestamp` of the last event that carried one (epoch s, as the
        # PBX stamps it) and time.monotonic() when it was read. See `pbx_time`.
        self.last_stamp: float | None = None
        self.last_stamp_read_at: float | None = None

    def pbx_time(self, monotonic: float) -> float | None:
        """The PBX's clock at `monotonic` (a time.monotonic() value), from the last stamped event.

        Events are stamped by the PBX (`timestampevents = yes`); the gateway's own clock may
        differ from it (or, in a replay, be months away). None before any stamped event."""
        if self.last_stamp is None or self.last_stamp_read_at is None:
            return None
        return self.last_stamp + (monotonic - self.last_stamp_read_at)

    def discarded_by_name(self) -> dict[str, int]:
        """The prefilter's drop counts keyed by event name (for metrics)."""
        return {k.decode("ascii", "replace"): v for k, v in self.discarded.items()}


def parse_frame(text: str) -> dict[str, str]:
    """Parse one decoded AMI frame into a dict; the first value of a repeated header wins."""
    out: dict[str, str] = {}
    for line in text.split("\r\n"):
        key, sep, value = line.partition(": ")
        if not sep:
            # Tolerate "Key:" with nothing after it; anything else is not a header line.
            key, sep, value = line.partition(":")
            if not sep:
                continue
            value = value.strip()
        if key not in out:
            out[key] = value
    return out


class AmiProtocol(AMIProtocol):  # type: ignore[misc]  # panoramisk is untyped
    """One AMI TCP connection: framing, prefilter, dispatch to a callback.

    `on_event(event, at)` receives each wanted event (plus FullyBooted and Shutdown);
    `on_lost(exc)` is called exactly once when the connection ends, whoever closed it
    (panoramisk only tells its factory when the *peer* closed).
    """

    def __init__(
        self,
        wanted: frozenset[str],
        on_event: EventCallback,
        on_lost: LostCallback,
        counters: AmiCounters | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        self._wanted = frozenset(n.encode("ascii") for n in wanted | CLIENT_EVENTS)
        self._on_event = on_event
        self._on_lost = on_lost
        self.counters = counters if counters is not None else AmiCounters()
        self.pbx_name = name
        self._pending = b""
        self._banner_done = False
        self._lost_reported = False
        self.banner_received: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # Also (re)set by AMIProtocol.connection_made; declared here for the type checker.
        self.version: str | None = None
        self.closed = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        """Set up panoramisk's state; actions are encoded as UTF-8 (not ASCII)."""
        super().connection_made(transport)
        self.log = log
        self.encoding = "utf-8"

    def data_received(self, data: bytes) -> None:
        """Frame the bytes; parse only what is wanted."""
        if self._pending:
            data = self._pending + data
        if not self._banner_done:
            data = self._read_banner(data)
            if not self._banner_done:
                return
        frames = data.split(_EOF)
        rest = frames.pop()
        # The same limit whatever the TCP reads: a frame of up to MAX_BUFFER bytes may wait for
        # the first 3 bytes of its terminator; a longer one fails here or in the loop below.
        if len(rest) > MAX_BUFFER + len(_EOF) - 1:
            self._fail(f"over {MAX_BUFFER} bytes without a frame terminator")
            return
        self._pending = rest
        if not frames:
            return
        counters = self.counters
        counters.frames_in += len(frames)
        counters.last_frame_at = time.monotonic()
        wanted = self._wanted
        discarded = counters.discarded
        responses = self.responses
        for raw in frames:
            if len(raw) > MAX_BUFFER:
                self._fail(f"a frame of {len(raw)} bytes (over {MAX_BUFFER})")
                return
            frame = raw
            if frame[:2] == _EOL:
                # Asterisk occasionally sends a lone extra CRLF between frames.
                frame = frame.lstrip(b"\r\n")
                if not frame:
                    counters.frames_in -= 1
                    continue
            if frame[:7] == _EVENT:
                nl = frame.find(_EOL)
                name = frame[7:nl] if nl >= 0 else frame[7:]
                if responses and _ACTION_ID in frame and self._answers_pending(frame):
                    self._to_panoramisk(frame)
                elif name in wanted:
                    self._dispatch(frame)
                else:
                    discarded[name] = discarded.get(name, 0) + 1
            elif frame[:10] == _RESPONSE:
                self._to_panoramisk(frame)
            else:
                counters.malformed += 1
                log.warning(
                    "AMI %s: ignoring a frame that is neither event nor response: %r", self.pbx_name, frame[:80]
                )

    def connection_lost(self, exc: BaseException | None) -> None:
        """Fail pending actions and report the loss once."""
        self.close()
        self._report_lost(exc)

    # -- panoramisk overrides ----------------------------------------------------------------

    def close(self) -> None:
        """Close the transport and fail every pending action at once.

        panoramisk would queue unanswered actions and re-send them after the next login;
        re-sending an Originate on a new session could ring a citizen twice, so we don't.
        """
        pending = list(self.responses.values())
        self.responses.clear()
        for action in pending:
            fut = action.future
            if not fut.done():
                fut.set_exception(AmiError("AMI connection closed before the answer"))
                fut.exception()  # mark retrieved: nobody may be waiting any more
        if not self.closed:
            self.closed = True
            self.transport.close()

    # -- internals ---------------------------------------------------------------------------

    def _read_banner(self, data: bytes) -> bytes:
        nl = data.find(_EOL)
        if nl < 0:
            if len(data) > 256 or not (_BANNER.startswith(data) or data.startswith(_BANNER)):
                self._fail(f"peer is not an AMI server (got {data[:40]!r})")
            else:
                self._pending = data
            return b""
        line = data[:nl]
        if not line.startswith(_BANNER):
            self._fail(f"peer is not an AMI server (banner {line[:40]!r})")
            return b""
        self.version = line[len(_BANNER) :].decode("ascii", "replace").strip()
        self._banner_done = True
        self._pending = b""
        if not self.banner_received.done():
            self.banner_received.set_result(self.version)
        return data[nl + 2 :]

    def _answers_pending(self, frame: bytes) -> bool:
        start = frame.find(_ACTION_ID) + len(_ACTION_ID)
        end = frame.find(_EOL, start)
        action_id = frame[start:end] if end >= 0 else frame[start:]
        return action_id.decode("utf-8", "replace") in self.responses

    def _decode(self, frame: bytes) -> str:
        try:
            return frame.decode("utf-8")
        except UnicodeDecodeError:
            self.counters.decode_errors += 1
            nl = frame.find(_EOL)
            log.warning(
                "AMI %s: invalid UTF-8 in %r (replaced; %d so far)",
                self.pbx_name,
                frame[: nl if nl >= 0 else 60].decode("ascii", "replace"),
                self.counters.decode_errors,
            )
            return frame.decode("utf-8", "replace")

    def _dispatch(self, frame: bytes) -> None:
        event = parse_frame(self._decode(frame))
        stamp = event.get("Timestamp")
        try:  # (a plain try, not contextlib.suppress: this runs for every event)
            if stamp:
                at = float(stamp)
                if math.isfinite(at):
                    counters = self.counters
                    counters.last_stamp, counters.last_stamp_read_at = at, counters.last_frame_at
            else:
                at = time.time()
        except ValueError:
            at = time.time()
        self.counters.dispatched += 1
        self._on_event(event, at)

    def _to_panoramisk(self, frame: bytes) -> None:
        message = Message.from_line(self._decode(frame))
        if message is None:
            return
        for key in _SINGLE_VALUED:
            value = message.get(key)
            if isinstance(value, list):
                # panoramisk turns a repeated header into a list and then fails on it (unhashable
                # ActionID, list.lower()): the first value wins, as in `parse_frame`.
                message[key] = value[0]
        self.handle_message(message)

    def _fail(self, why: str) -> None:
        log.error("AMI %s: malformed stream, closing the connection: %s", self.pbx_name, why)
        self.counters.malformed += 1
        self._pending = b""
        self.close()

    def _report_lost(self, exc: BaseException | None) -> None:
        if not self._lost_reported:
            self._lost_reported = True
            if not self.banner_received.done():
                self.banner_received.set_exception(AmiError("connection closed before the banner"))
                self.banner_received.exception()
            self._on_lost(exc)
