"""Helpers to read the recorded transcripts (bytes as recorded, timing from timed/)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from gateway.sim.amiserver import fresh_ids

TRANSCRIPTS = Path(__file__).resolve().parents[2] / "gateway" / "data" / "transcripts"


def expected() -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads((TRANSCRIPTS / "EXPECTED.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def parse_block(raw: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in raw.split("\r\n"):
        key, sep, value = line.partition(": ")
        if sep and key not in fields:
            fields[key] = value
    return fields


def timed_events(name: str, *, id_offset: int = 0, t0: float = 0.0) -> Iterator[tuple[float, dict[str, str]]]:
    """(recorded time, fields) of every event block of a transcript."""
    for line in (TRANSCRIPTS / "timed" / f"{name}.jsonl").read_text("utf-8").splitlines():
        row = json.loads(line)
        raw = row["raw"]
        if id_offset:
            raw = fresh_ids(raw.encode(), id_offset).decode()
        fields = parse_block(raw)
        if "Event" in fields:
            yield t0 + float(row["t"]), fields
