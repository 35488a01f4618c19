"""Decision sinks: where the pipeline's decisions go (JSON lines, the demo console)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, TextIO

from gateway.domain.numbers import mask


class JsonLinesSink:
    """One JSON object per line: the public contract of `gateway replay --json`."""

    def __init__(self, out: TextIO, *, kinds: frozenset[str] = frozenset(
            {"call", "lettering", "skipped", "postcall", "alimtalk", "sent", "sms"})) -> None:
        self.out = out
        self.kinds = kinds
        self.records: list[Mapping[str, Any]] = []

    def decision(self, record: Mapping[str, Any]) -> None:
        if record.get("event") not in self.kinds:
            return
        self.records.append(record)
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.out.flush()


class ConsoleSink:
    """Human-readable lines for the demo, numbers masked as in the logs."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.counts: dict[str, int] = {}

    def decision(self, record: Mapping[str, Any]) -> None:
        kind = str(record.get("event"))
        self.counts[kind] = self.counts.get(kind, 0) + 1
        line = self._format(kind, record)
        if line:
            self.out.write(line + "\n")
            self.out.flush()

    @staticmethod
    def _format(kind: str, r: Mapping[str, Any]) -> str:
        if kind == "call":
            transfers = "".join(f" ⇢ {t['kind']} {t['to']}" for t in r.get("transfers", []))
            return (f"[call]      {r['pbx']} #{r['call']} {r['direction']:<8} ext {r['extension'] or '-':<5} "
                    f"↔ {mask(str(r['party'])):<14} {r['disposition']} ({r['cause']}) "
                    f"talk {r['talk_seconds']}s{transfers}")
        if kind == "lettering":
            return (f"[lettering] {r['pbx']} #{r['call']} ext {r['extension']} → {mask(str(r['to']))} via "
                    f"{r['provider']}: {r['result']} | {r['organisation']} {r['department']} | {r['text']}")
        if kind == "skipped":
            return f"[skipped]   {r['pbx']} #{r['call']} no lettering: {r['reason']}"
        if kind == "pbx":
            detail = f" ({r['detail']})" if r.get("detail") else ""
            return f"[pbx]       {r['pbx']} {r['state']}{detail}"
        return ""


class LogSink:
    """`gateway run`: each decision is one structured log line (numbers masked)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def decision(self, record: Mapping[str, Any]) -> None:
        shown = {k: (mask(str(v)) if k in ("party", "to") and v else v) for k, v in record.items()}
        self.logger.info("%s", json.dumps(shown, ensure_ascii=False))
