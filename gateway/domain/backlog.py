"""What the delayed jobs of a queue add up to: how many, how old, when they run, and how many
will be past their queue's age limit when their time comes (dramatiq's AgeLimit then drops
them to the dead letters instead of running them).

Pure: the Redis reads are `gateway.messaging.backlog.read_backlog`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DelayedJob:
    """One delayed job's times, in ms since the epoch (dramatiq's units)."""

    enqueued_ms: int  # `message_timestamp`: the first enqueue; retries keep it, the age counts from it
    eta_ms: int  # `options.eta`: not run before this
    max_age_ms: int  # the job's own `max_age` option, else its queue's

    @property
    def expiring(self) -> bool:
        """Its age limit is reached by its eta: AgeLimit (`now - message_timestamp >= max_age`)
        will refuse it whenever a worker takes it."""
        return self.eta_ms - self.enqueued_ms >= self.max_age_ms


@dataclass(frozen=True, slots=True)
class DelayedSummary:
    readable: int = 0  # jobs whose times could be read (the others are counted, not summarised)
    expiring: int = 0
    oldest_enqueued_ms: int | None = None
    next_eta_ms: int | None = None
    last_eta_ms: int | None = None


def summarize(jobs: Iterable[DelayedJob]) -> DelayedSummary:
    readable = expiring = 0
    oldest: int | None = None
    first: int | None = None
    last: int | None = None
    for job in jobs:
        readable += 1
        expiring += job.expiring
        oldest = job.enqueued_ms if oldest is None else min(oldest, job.enqueued_ms)
        first = job.eta_ms if first is None else min(first, job.eta_ms)
        last = job.eta_ms if last is None else max(last, job.eta_ms)
    return DelayedSummary(readable, expiring, oldest, first, last)
