"""Delivery reports: `POST /webhooks/report/{provider}` updates each message's state.

The state of a message only moves forward (queued < sent < delivered | failed): reports
arrive out of order and more than once, so a late "sent" after "delivered" is ignored and a
repeated report changes nothing. Terminal states do not replace each other.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from adapters.nhn_alimtalk import ReportRejected
from adapters.nhn_alimtalk import parse_report as nhn_parse_report
from gateway.domain.models import DeliveryReport, ReportStatus
from gateway.errors import ConfigError, GatewayError

log = logging.getLogger(__name__)

RANK = {ReportStatus.QUEUED: 0, ReportStatus.SENT: 1, ReportStatus.DELIVERED: 3, ReportStatus.FAILED: 3}

Parser = Callable[[Mapping[str, str], bytes], list[DeliveryReport]]


class UnknownProvider(GatewayError):
    """No report parser is configured under this name."""


def sandbox_parser(secret: str, provider: str = "sandbox") -> Parser:
    """Reports of the sandbox twins: `{"reports": [{"reference", "status", "at", "detail"}]}`
    with the shared secret in `X-Sandbox-Signature`."""

    def parse(headers: Mapping[str, str], body: bytes) -> list[DeliveryReport]:
        given = next((v for k, v in headers.items() if k.lower() == "x-sandbox-signature"), "")
        if not secret or not hmac.compare_digest(given.encode(), secret.encode()):
            raise ReportRejected("bad or missing signature")
        try:
            data = json.loads(body.decode("utf-8"))
            return [DeliveryReport(provider, str(r["reference"]), ReportStatus(r["status"]), float(r["at"]),
                                   str(r.get("detail", "")), bool(r.get("fallback_used", False)))
                    for r in data["reports"]]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise ReportRejected(f"malformed report body: {type(exc).__name__}: {exc}") from None

    return parse


def build_parsers(specs: Mapping[str, Mapping[str, Any]], environ: Mapping[str, str]) -> dict[str, Parser]:
    parsers: dict[str, Parser] = {}
    for name, spec in specs.items():
        variable = spec.get("signature_env", "")
        secret = environ.get(variable, "") if variable else ""
        if not secret:
            raise ConfigError(f"webhooks.{name}: environment variable {variable or '(signature_env)'} is not set")
        if spec.get("kind") == "nhn":
            def nhn(headers: Mapping[str, str], body: bytes, _s: str = secret, _n: str = name) -> list[DeliveryReport]:
                return nhn_parse_report(headers, body, _s, provider=_n)
            parsers[name] = nhn
        elif spec.get("kind") == "sandbox":
            parsers[name] = sandbox_parser(secret, name)
        else:
            raise ConfigError(f"webhooks.{name}: unknown kind {spec.get('kind')!r} (nhn, sandbox)")
    return parsers


class ReportIntake:
    def __init__(self, parsers: Mapping[str, Parser], store: Any) -> None:
        self.parsers = dict(parsers)
        self.store = store
        self.counts: dict[str, int] = {}

    async def handle(self, provider: str, headers: Mapping[str, str], body: bytes) -> dict[str, int]:
        """Apply every report of one webhook call. Raises UnknownProvider, ReportRejected
        (a ValueError: forged or malformed) or StoreUnavailable."""
        parser = self.parsers.get(provider)
        if parser is None:
            raise UnknownProvider(f"no delivery-report webhook named {provider!r}")
        reports = parser(headers, body)
        # Oldest first, so that one body with several states of a message ends in the newest.
        reports.sort(key=lambda r: (r.at, RANK[r.status]))
        counts = {"updated": 0, "stale": 0, "unknown": 0}
        for report in reports:
            outcome = await self.store.apply_report(provider=report.provider, reference=report.reference,
                                                    rank=RANK[report.status], status=report.status.value,
                                                    at=report.at, detail=report.detail)
            counts[outcome] = counts.get(outcome, 0) + 1
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
        log.info("delivery reports from %s: %s", provider, counts)
        return counts
