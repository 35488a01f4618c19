"""The last decisions in memory, for the telecom team's status page; and `Tee`, one sink to many.

`RecentDecisions` is a `DecisionSink` that keeps the last N decisions (lettering delivered or
skipped and why, inbound messages, replies...) as small, display-ready records. Numbers are
masked when a decision is taken in, so the buffer never holds a citizen's full number: the
page that shows it cannot leak one. Free texts that may quote a citizen (none today; `detail`
of a send is a provider's message) are cut short. Thread-safe: the queue workers report from
their own threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.numbers import mask
from gateway.ports import DecisionSink

# Fields that hold a phone number: masked on the way in.
NUMBER_FIELDS = frozenset({"to", "from", "party", "sender", "phone", "number"})
# Fields kept (others are dropped: the buffer is for a glance, not an archive).
KEPT_FIELDS = frozenset(
    {
        "pbx",
        "call",
        "extension",
        "provider",
        "department",
        "result",
        "reason",
        "detail",
        "queue",
        "rule",
        "status",
        "optout",
        "thread",
        "action",
        "staff",
        "channel",
        "purpose",
        "template",
        "content",
        "state",
        "sink",
        "direction",
        "disposition",
        "message_id",
        *NUMBER_FIELDS,
    }
)
MAX_TEXT = 120  # characters of any kept text field
# Every call also ends in a "call" decision: most are of no interest on the status page and
# would push the lettering decisions out of the buffer.
DEFAULT_KINDS = frozenset(
    {
        "lettering",
        "skipped",
        "inbound",
        "reply",
        "closed",
        "replied",
        "sent",
        "sms",
        "postcall",
        "alimtalk",
        "notified",
        "pbx",
    }
)


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision as the status page shows it: when, what kind, and its fields (masked)."""

    at: float
    event: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)


def _shown(key: str, value: Any) -> str:
    text = "" if value is None else str(value)
    if key in NUMBER_FIELDS and text:
        return mask(text)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


class RecentDecisions:
    """The last `size` decisions of the kinds in `kinds`, newest first on `last()`."""

    def __init__(
        self, size: int = 200, *, kinds: frozenset[str] = DEFAULT_KINDS, clock: Callable[[], float] = time.time
    ) -> None:
        if size < 1:
            raise ValueError(f"RecentDecisions size {size}: keep at least one")
        self.size = size
        self.kinds = kinds
        self._clock = clock
        self._items: deque[Decision] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.seen = 0  # decisions taken in since start (the page shows "of N")

    def decision(self, record: Mapping[str, Any]) -> None:
        event = str(record.get("event", ""))
        if event not in self.kinds:
            return
        fields = {k: _shown(k, v) for k, v in record.items() if k in KEPT_FIELDS and v not in (None, "")}
        item = Decision(at=self._clock(), event=event, fields=fields)
        with self._lock:
            self._items.append(item)
            self.seen += 1

    def last(self, n: int | None = None, *, kinds: frozenset[str] | None = None) -> list[Decision]:
        """The newest `n` (all when None) decisions, newest first; only `kinds` when given."""
        with self._lock:
            items = list(self._items)
        items.reverse()
        if kinds is not None:
            items = [d for d in items if d.event in kinds]
        return items if n is None else items[:n]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class Tee:
    """Every decision to each of `sinks`, in order. One sink that raises does not keep the
    decision from the others (a status-page buffer must never break the JSON lines of replay);
    the first error is raised again after all were called."""

    def __init__(self, *sinks: DecisionSink) -> None:
        self.sinks = sinks

    def decision(self, record: Mapping[str, Any]) -> None:
        error: Exception | None = None
        for sink in self.sinks:
            try:
                sink.decision(record)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
