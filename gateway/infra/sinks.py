"""Decision sinks: where the pipeline's decisions go (JSON lines, the demo console)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, TextIO

from gateway.domain.numbers import mask


class JsonLinesSink:
    """One JSON object per line: the public contract of `gateway replay --json`.

    Thread-safe: the queue worker reports from its own thread."""

    def __init__(
        self,
        out: TextIO,
        *,
        kinds: frozenset[str] = frozenset({"call", "lettering", "skipped", "postcall", "alimtalk", "sent", "sms"}),
    ) -> None:
        self.out = out
        self.kinds = kinds
        self.records: list[Mapping[str, Any]] = []
        self._lock = threading.Lock()

    def decision(self, record: Mapping[str, Any]) -> None:
        if record.get("event") not in self.kinds:
            return
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.records.append(record)
            self.out.write(line)
            self.out.flush()


class ConsoleSink:
    """Human-readable lines for the demo, numbers masked as in the logs."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def decision(self, record: Mapping[str, Any]) -> None:
        kind = str(record.get("event"))
        line = self._format(kind, record)
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if line:
                self.out.write(line + "\n")
                self.out.flush()

    @staticmethod
    def _format(kind: str, r: Mapping[str, Any]) -> str:
        if kind == "call":
            transfers = "".join(f" ⇢ {t['kind']} {t['to']}" for t in r.get("transfers", []))
            return (
                f"[call]      {r['pbx']} #{r['call']} {r['direction']:<8} ext {r['extension'] or '-':<5} "
                f"↔ {mask(str(r['party'])):<14} {r['disposition']} ({r['cause']}) "
                f"talk {r['talk_seconds']}s{transfers}"
            )
        if kind == "lettering":
            return (
                f"[lettering] {r['pbx']} #{r['call']} ext {r['extension']} → {mask(str(r['to']))} via "
                f"{r['provider']}: {r['result']} | {r['organisation']} {r['department']} | {r['text']}"
            )
        if kind == "postcall":
            return f"[postcall]  {r['pbx']} #{r['call']} → {mask(str(r['to']))} content {r['content']}: {r['result']}"
        if kind == "alimtalk":
            return (
                f"[alimtalk]  {r['pbx']} #{r['call']} → {mask(str(r['to']))} {r['purpose']} "
                f"({r['template']}): {r['result']}"
            )
        if kind == "sent":
            return (
                f"[sent]      {r['pbx']} #{r['call']} {r['action']} as {r['channel']} → {mask(str(r['to']))} "
                f"via {r['provider']}: {r['result']} {r.get('detail', '')}".rstrip()
            )
        if kind == "sms":
            return f"[sms]       {r['pbx']} #{r['call']} {r['action']} → {mask(str(r['to']))}: {r['result']}"
        if kind == "inbound":
            opt = f" ({r['optout']})" if r.get("optout") else ""
            return (
                f"[inbound]   {r['provider']} {r['message_id']} -> queue {r['queue']} by rule "
                f"{r.get('rule') or '-'}: {r['status']}{opt}"
            )
        if kind == "notified":
            who = f" {r['officer']}" if r.get("officer") else ""
            return f"[notified]  thread {r['thread']} queue {r['queue']} -> {r['sink']}{who}: {r['result']}"
        if kind == "replied":
            return f"[replied]   thread {r['thread']} {r['action']} → {mask(str(r['to']))}: {r['result']}"
        if kind == "reply":
            return f"[reply]     thread {r['thread']} by {r['staff']}: {r['result']}"
        if kind == "skipped":
            return f"[skipped]   {r['pbx']} #{r['call']} no lettering: {r['reason']}"
        if kind == "pbx":
            detail = f" ({r['detail']})" if r.get("detail") else ""
            return f"[pbx]       {r['pbx']} {r['state']}{detail}"
        return ""


class LogSink:
    """`gateway run` and `gateway worker`: each decision is one structured log line.

    The decision's fields (event, pbx, call id or message id, result, ...) become top-level keys
    of the JSON line (`gateway.infra.logs.JsonFormatter`), so an operator follows one call end to end
    with e.g. `jq 'select(.call == "1763...")'`; `msg` is the human summary. Numbers are masked."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def decision(self, record: Mapping[str, Any]) -> None:
        shown = {k: (mask(str(v)) if k in ("party", "to", "from") and v else v) for k, v in record.items()}
        summary = ConsoleSink._format(str(record.get("event")), record) or str(record.get("event"))
        self.logger.info("%s", " ".join(summary.split()), extra={"decision": shown})
