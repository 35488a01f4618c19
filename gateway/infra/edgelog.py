"""Quiet, rate-limited logging of malformed input at the edges (webhooks, staff API, SMTP).

Bad input is the sender's problem, not ours: one WARNING line per kind of problem and edge at
most every `interval_s`, with how many more there were, and never the input itself (it may hold
a citizen's number or text) nor a traceback. Our own bugs stay ERROR with a traceback.

aiohttp's HTTP parser refuses a malformed request before any handler runs and logs it on
``aiohttp.server`` at ERROR, with a traceback and the offending line of the request (up to ~100
bytes of the sender's input). `ParserErrorFilter` turns those records into this module's
warnings.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

DEFAULT_INTERVAL_S = 60.0

# The leading words of aiohttp's parser message ("Invalid header value char"), up to the first
# character that is not a letter or a space: the input that follows is never included.
_PARSER_REASON = re.compile(r"[A-Za-z][A-Za-z ]{0,59}")


class MalformedLog:
    """At most one WARNING per (edge, reason) per `interval_s`, counting the ones held back.

    ``reason`` must be a fixed token chosen by the code (an exception class, a status code),
    never text from the input."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self.counts: dict[tuple[str, str], int] = {}  # every malformed request, logged or not

    def note(self, edge: str, reason: str) -> None:
        key = (edge, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return
        if len(self._last) > 1000:  # bounded: reasons are fixed tokens, but be safe
            self._last.clear()
        self._last[key] = now
        held = self._held.pop(key, 0)
        more = f" (+{held} more not logged since the last line)" if held else ""
        self.logger.warning("%s: malformed input refused: %s%s", edge, reason, more)


class ParserErrorFilter(logging.Filter):
    """On ``aiohttp.server``: a request the HTTP parser refused becomes one rate-limited
    WARNING without the input or a traceback; every other record passes unchanged."""

    def __init__(self, malformed: MalformedLog) -> None:
        super().__init__()
        self.malformed = malformed

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if record.levelno < logging.WARNING:
            # aiohttp logs a bad method on a fresh connection (port scanners, TLS to a plain
            # port) at DEBUG on purpose: dropped, its traceback quotes the input too.
            return False
        first = next((line.strip() for line in str(exc.message).splitlines() if line.strip()), "")
        match = _PARSER_REASON.match(first)
        reason = f"{exc.code} {type(exc).__name__}" + (f" ({match.group(0).strip()})" if match else "")
        self.malformed.note("http parser", reason)
        return False


def install_parser_filter(malformed: MalformedLog) -> Callable[[], None]:
    """Add a `ParserErrorFilter` to ``aiohttp.server``; returns the function that removes it."""
    logger = logging.getLogger("aiohttp.server")
    quiet = ParserErrorFilter(malformed)
    logger.addFilter(quiet)
    return lambda: logger.removeFilter(quiet)
