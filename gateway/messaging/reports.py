"""Delivery reports: `POST /webhooks/report/{provider}` updates each message's state.

The route is declared here (`add_routes`); the composition root (`gateway.app.httpapps`) puts
it on the public listener. Answers: 200 with counts, 404 for an unknown provider, 401 for a
forged report (`ReportForged`), 400 for an unreadable one (`ReportRejected`), 503 while Redis is
down (the provider retries on 5xx: nothing is lost).

The state of a message only moves forward (queued < sent < delivered | failed): reports
arrive out of order and more than once, so a late "sent" after "delivered" is ignored and a
repeated report changes nothing. Terminal states do not replace each other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from adapters.nhn_alimtalk import parse_report as nhn_parse_report
from gateway.domain.models import DeliveryReport, ReportStatus
from gateway.domain.records import SendFact
from gateway.errors import ConfigError, GatewayError, ReportForged, ReportRejected, StoreUnavailable
from gateway.infra.crypto import same_secret
from gateway.infra.http import error_response, read_body
from gateway.ports import NoRecords, RecordSink

log = logging.getLogger(__name__)

RANK = {ReportStatus.QUEUED: 0, ReportStatus.SENT: 1, ReportStatus.DELIVERED: 3, ReportStatus.FAILED: 3}

Parser = Callable[[Mapping[str, str], bytes], list[DeliveryReport]]

MAX_REPORT_BODY = 256 * 1024  # a provider may batch many delivery reports in one call


class UnknownProvider(GatewayError):
    """No report parser is configured under this name (HTTP 404)."""

    http_status = 404


def sandbox_parser(secret: str, provider: str = "sandbox") -> Parser:
    """Reports of the sandbox twins: `{"reports": [{"reference", "status", "at", "detail"}]}`
    with the shared secret in `X-Sandbox-Signature`."""

    def parse(headers: Mapping[str, str], body: bytes) -> list[DeliveryReport]:
        given = next((v for k, v in headers.items() if k.lower() == "x-sandbox-signature"), "")
        if not secret or not same_secret(given, secret):
            raise ReportForged("bad or missing signature")
        try:
            data = json.loads(body.decode("utf-8"))
            return [
                DeliveryReport(
                    provider,
                    str(r["reference"]),
                    ReportStatus(r["status"]),
                    float(r["at"]),
                    str(r.get("detail", "")),
                    bool(r.get("fallback_used", False)),
                )
                for r in data["reports"]
            ]
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


def send_fact(report: DeliveryReport, key: str) -> SendFact:
    """The archive's record of a report that moved a send's state. The report knows the send
    only by the provider's reference; the delivery state (`gw:msg:...`) names its idempotency
    key, '<pbx>:<call>:<action>:<recipient hash>', which gives the purpose and the hash. The
    channel is what the send's own record says (the latest state only updates the state)."""
    parts = key.split(":")
    purpose = parts[2] if len(parts) >= 4 else ""
    return SendFact(
        key=key,
        purpose=purpose,
        channel="",
        provider=report.provider,
        state=report.status.value,
        at=report.at,
        party_hash=parts[-1] if len(parts) >= 4 else "",
        reference=report.reference,
        detail=report.detail[:128],
        fallback_used=report.fallback_used,
    )


class ReportIntake:
    def __init__(self, parsers: Mapping[str, Parser], store: Any, records: RecordSink | None = None) -> None:
        self.parsers = dict(parsers)
        self.store = store
        self.counts: dict[str, int] = {}
        # The SQL archive: a report that moves a send's state updates the send's record.
        self.records: RecordSink = records if records is not None else NoRecords()

    async def handle(self, provider: str, headers: Mapping[str, str], body: bytes) -> dict[str, int]:
        """Apply every report of one webhook call. Raises UnknownProvider, ReportForged (a bad
        signature), ReportRejected (an unreadable body) or StoreUnavailable."""
        parser = self.parsers.get(provider)
        if parser is None:
            raise UnknownProvider(f"no delivery-report webhook named {provider!r}")
        reports = parser(headers, body)
        # Oldest first, so that one body with several states of a message ends in the newest.
        reports.sort(key=lambda r: (r.at, RANK[r.status]))
        counts = {"updated": 0, "stale": 0, "unknown": 0}
        for report in reports:
            outcome = await self.store.apply_report(
                provider=report.provider,
                reference=report.reference,
                rank=RANK[report.status],
                status=report.status.value,
                at=report.at,
                detail=report.detail,
            )
            counts[outcome] = counts.get(outcome, 0) + 1
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            if outcome == "updated" and not isinstance(self.records, NoRecords):
                await self._record(report)
        log.info("delivery reports from %s: %s", provider, counts)
        return counts

    async def _record(self, report: DeliveryReport) -> None:
        """The send's new state for the archive (best effort: the report itself is applied)."""
        try:
            state = await self.store.message_state(report.provider, report.reference)
        except Exception as exc:
            log.warning("delivery report of %s not recorded: %s", report.provider, type(exc).__name__)
            return
        key = state.get("key", "")
        if key:
            self.records.record(send_fact(report, key))


def add_routes(app: web.Application, reports: ReportIntake | None) -> None:
    """`POST /webhooks/report/{provider}`; without `reports` (none configured) it answers 404."""

    async def report(request: web.Request) -> web.Response:
        if reports is None:
            raise web.HTTPNotFound(text="delivery reports are not configured")
        provider = request.match_info["provider"]
        body = await read_body(request, MAX_REPORT_BODY)
        try:
            counts = await reports.handle(provider, request.headers, body)
        except (UnknownProvider, ReportRejected, StoreUnavailable) as exc:
            return error_response(exc)
        return web.json_response(counts)

    app.router.add_post("/webhooks/report/{provider}", report)
