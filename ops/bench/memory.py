"""Memory per tracked call: `CallTracker` holding 10,000 concurrent calls.

Each call is a recorded call scenario (``gateway/data/transcripts/*.ami``) with fresh
Uniqueid/Linkedid values (`gateway.sim.amiserver.fresh_ids`, a new offset per call), its own bridge
ids and its own citizen number, cut just before the first BridgeLeave or Hangup: the calls are in
conversation (bridged) or still ringing, the state a busy city hall holds them in. The bytes
are prepared first; their events then go through the production path (the AMI frame parser
`parse_frame`, the mapping `to_leg_event`, `CallTracker.handle`) one call at a time, inside
`tracemalloc`, so every string the tracker keeps is counted where it was made.

Figure: (traced memory with N calls - traced memory of the empty tracker) / live calls, after
a full garbage collection, goal <= 2 KB (2,048 bytes). The JSON also lists the largest
allocation sites (file:line) of what the tracker holds.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Any

from gateway.calls.pbx.mapping import TRACKED_EVENTS, to_leg_event
from gateway.calls.pbx.protocol import parse_frame
from gateway.calls.pipeline import plan_of
from gateway.domain.calls import CallTracker
from gateway.rules.lettering import load_rules
from gateway.sim.amiserver import CYCLE_ID_OFFSET, Transcript, fresh_ids
from ops.bench.ami_ingest.runner import RULES_DIR
from ops.bench.ami_ingest.stream import NumberAllocator, event_blocks, event_name, fresh_bridges

GOAL_BYTES = 2048
#: Call scenarios held open: mostly officials calling citizens' mobiles, some citizens calling in,
#: some internal and transferred calls (weights by repetition).
SCENARIOS = ("answered_mobile",) * 6 + (
    "inbound_from_citizen",
    "inbound_queue_korean_name",
    "internal",
    "blind_transfer",
    "no_answer",
    "landline",
)
_WANTED = frozenset(n.encode("ascii") for n in TRACKED_EVENTS)


def open_call_templates() -> list[bytes]:
    """For each scenario, its event frames up to (not including) the first BridgeLeave or Hangup, joined."""
    out: list[bytes] = []
    for name in SCENARIOS:
        blocks = [b for b in event_blocks(Transcript.named(name)) if event_name(b) in _WANTED]
        cut = next((i for i, b in enumerate(blocks) if event_name(b) in (b"BridgeLeave", b"Hangup")), len(blocks))
        out.append(b"".join(blocks[:cut]))
    return out


def feed(tracker: CallTracker, data: bytes, at: float) -> int:
    """Parse and hand every frame of `data` to the tracker; the number of leg events."""
    count = 0
    for frame in data.split(b"\r\n\r\n"):
        if not frame:
            continue
        event = to_leg_event(parse_frame(frame.decode("utf-8", "replace")), at)
        if event is not None:
            tracker.handle(event)
            count += 1
    return count


def run(*, calls: int = 10_000) -> dict[str, Any]:
    """Measure (see the module doc); returns the JSON section `memory`."""
    rules = load_rules(RULES_DIR)
    templates = open_call_templates()
    numbers = NumberAllocator(50_000_000)
    plan = plan_of(rules)
    streams = [
        numbers.rewrite(fresh_bridges(fresh_ids(templates[k % len(templates)], (k + 1) * CYCLE_ID_OFFSET), k + 1))
        for k in range(calls)
    ]
    gc.collect()
    tracemalloc.start(1)
    try:
        tracker = CallTracker("city-hall", plan, ("carrier",))  # as gateway.default.yaml
        gc.collect()
        empty = tracemalloc.get_traced_memory()[0]
        before = tracemalloc.take_snapshot()
        events = 0
        began = time.perf_counter()
        for k, data in enumerate(streams):
            events += feed(tracker, data, 1_800_000_000.0 + k * 0.01)
        elapsed = time.perf_counter() - began
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - empty
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    live = tracker.live_calls
    sites = after.compare_to(before, "lineno")[:8]
    per_call = held / live if live else 0.0
    return {
        "calls_fed": calls,
        "live_calls": live,
        "live_legs": tracker.live_legs,
        "events": events,
        "bytes_held": held,
        "bytes_per_call": round(per_call),
        "goal_bytes": GOAL_BYTES,
        "ok": live == calls and per_call <= GOAL_BYTES,
        "counts_ok": live == calls,
        "feed_seconds": round(elapsed, 3),
        "scenarios": sorted(set(SCENARIOS)),
        "top_sites": [
            {
                "site": f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno}",
                "bytes": s.size_diff,
                "blocks": s.count_diff,
            }
            for s in sites
        ],
    }


def figures(section: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "figure": f"memory per tracked call ({section['live_calls']:,} concurrent calls, "
            f"{section['live_legs']:,} legs)",
            "value": f"{section['bytes_per_call']:,} bytes",
            "goal": f"≤ {GOAL_BYTES:,} bytes",
            "baseline": "empty tracker (subtracted)",
            "met": section["ok"],
        }
    ]
