"""Structured logging with phone numbers masked.

Code masks numbers where it logs them (`gateway.domain.numbers.mask`); this formatter
masks again whatever still looks like a Korean phone number, so a careless log line does
not leak personal data.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_PHONE = re.compile(r"(?<![\d.])(\+?82[-\s]?|0)(1[016789]|[2-6]\d?|70|50\d?)[-\s]?(\d{3,4})[-\s]?(\d{4})(?!\d)")


def scrub(text: str) -> str:
    """Mask phone numbers in free text: `01012345678` -> `010-****-5678`."""

    def repl(m: re.Match[str]) -> str:
        lead, area, middle, last = m.groups()
        prefix = "0" + area if lead == "0" else "+82-" + area
        return f"{prefix}-{'*' * len(middle)}-{last}"

    return _PHONE.sub(repl, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        decision = getattr(record, "decision", None)
        if isinstance(decision, dict):  # gateway.infra.sinks.LogSink: the decision's fields, top level
            for key, value in decision.items():
                entry.setdefault(key, scrub(value) if isinstance(value, str) else value)
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # panoramisk logs every reconnect attempt at ERROR with tracebacks; our client reports them.
    logging.getLogger("panoramisk").setLevel(logging.CRITICAL)
    # aiosmtpd logs every SMTP command at INFO and every DATA line (a citizen's text) at DEBUG:
    # personal data our own SMTP handler already reports, masked, when it matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
