"""Stopping dramatiq's worker within a time limit, whatever Redis does.

`dramatiq.Worker.stop()` talks to Redis (it hands prefetched and delayed messages back) and was
written for a Redis that answers: with Redis dead it raises half-way, before the middleware's
`after_worker_shutdown` stops the actors' event loop (a non-daemon thread, so the process never
exits); with Redis paused every command waits for its socket timeout and retries. Its `timeout`
bounds only the joins, and is spent twice (worker threads, then consumers).

So the stop runs on a thread of its own and the caller waits for it at most `timeout_s`:
running jobs get most of that time, the hand-back the rest. What a stop that did not complete
leaves in the worker's acks sets is not lost: Redis's maintenance puts those messages back on
their queues once the worker's heartbeat lapses (worker.heartbeat_timeout_ms).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# `gateway worker`'s exit code when its stop did not complete (README, ops/runbook.md): 1, the
# CLI's "the run failed". 0 means every job finished or was handed back.
EXIT_STOP_INCOMPLETE = 1

# Share of the budget running jobs may use before the consumers are stopped and the messages
# the worker holds are handed back.
JOBS_SHARE = 0.75


@dataclass(frozen=True, slots=True)
class StopResult:
    complete: bool
    detail: str = ""  # why the stop did not complete ("" when it did)


def _join_until(threads: Iterable[threading.Thread], deadline: float) -> None:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def stop_within(worker: Any, timeout_s: float) -> StopResult:
    """Stop `worker` (a started `dramatiq.Worker`), waiting at most `timeout_s` seconds.

    Complete: the jobs finished (or were abandoned at their share of the time), the held
    messages went back to Redis, the middleware closed the runtime and the event loop. Not
    complete: the stop raised or is still waiting for Redis; its thread is left behind (a
    daemon) and the caller decides how to end."""
    started = time.monotonic()
    deadline = started + max(0.0, timeout_s)
    errors: list[BaseException] = []
    running: list[int] = []  # jobs still running once their share of the time was spent

    def run() -> None:
        try:
            # Jobs first, with most of the budget: dramatiq's stop would give its worker
            # threads and then its consumers the same timeout each, twice the budget in all.
            workers: list[Any] = list(worker.workers)
            for thread in workers:
                thread.stop()  # dramatiq's WorkerThread: takes no new job
            _join_until(workers, started + JOBS_SHARE * timeout_s)
            running.append(sum(1 for thread in workers if thread.is_alive()))
            remaining_ms = (deadline - time.monotonic()) * 1000
            worker.stop(timeout=max(1, int(remaining_ms / 2)))
        except BaseException as exc:  # reported to the caller, who decides
            errors.append(exc)

    thread = threading.Thread(target=run, name="worker-stop", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        why = f"{running[0]} job(s) still running" if running and running[0] else "Redis unreachable or slow"
        return StopResult(False, f"still stopping after {timeout_s:.1f} s: {why}")
    if errors:
        exc = errors[0]
        return StopResult(False, f"{type(exc).__name__}: {str(exc) or 'no detail'}")
    if running and running[0]:
        # dramatiq's own stop may return in time while those jobs still run on its (daemon)
        # threads: they were abandoned, not finished, so the stop did not complete.
        return StopResult(False, f"{running[0]} job(s) still running after {JOBS_SHARE * timeout_s:.1f} s")
    return StopResult(True)


def release_event_loop(timeout_s: float = 2.0) -> bool:
    """Stop dramatiq's asyncio event-loop thread if an incomplete stop left it running (it is
    not a daemon: an in-process caller, the demo or replay, could not exit). True once stopped."""
    from dramatiq.asyncio import get_event_loop_thread, set_event_loop_thread

    loop_thread = get_event_loop_thread()
    if loop_thread is None:
        return True
    if loop_thread.loop.is_running():
        loop_thread.loop.call_soon_threadsafe(loop_thread.loop.stop)
    loop_thread.join(timeout_s)
    if loop_thread.is_alive():
        return False
    set_event_loop_thread(None)
    return True
