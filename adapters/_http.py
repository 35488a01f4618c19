"""What the HTTP adapters (`carrier_http`, `nhn_alimtalk`, `nhn_sms`) share.

- configuration checks for a gateway.yaml entry (base URL, deadline, secrets from the
  environment, header values that could otherwise surface in an aiohttp error message);
- `HttpAdapter`: one lazily created keep-alive session (an injected one is not closed by
  `close()`), a deadline and the closed flag;
- `post_within_deadline`: one request within what is left of a hard deadline, retried once
  only when the connection could not be opened (nothing was sent) and time remains;
- answer and webhook parsing common to both NHN products: JSON objects, result codes,
  national numbers, the `X-Toast-Webhook-Signature` check (`ReportForged`: HTTP 401) and
  `ReportRejected` (an unreadable webhook: HTTP 400), both from `gateway.errors`.

Private to the adapters package: each adapter re-exports the public names it has always had.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp

from gateway.domain.numbers import display
from gateway.errors import CarrierError, ReportForged, ReportRejected  # unreadable (400) / forged (401)

SIGNATURE_HEADER = "X-Toast-Webhook-Signature"
NHN_MAX_BODY = 256 * 1024  # largest NHN answer or webhook body read
_MIN_RETRY_S = 0.1  # below this a second connect + request cannot finish: do not start it
_RETRY_WAIT_S = 0.02
_KEEPALIVE_S = 15.0  # below common server idle timeouts, so we rarely reuse a dead socket
_NATIONAL_RECIPIENT = re.compile(r"0\d{8,10}")
_NATIONAL_SENDER = re.compile(r"0\d{8,10}|1\d{7}")


# --------------------------------------------------------------------------- configuration


def check_spec(where: str, spec: Mapping[str, Any], allowed: frozenset[str], kind: str) -> None:
    """CarrierError for a key not in `allowed` or a `kind` other than `kind` (the default)."""
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise CarrierError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    if spec.get("kind", kind) != kind:
        raise CarrierError(f"{where}: kind must be {kind!r}, got {spec.get('kind')!r}")


def check_url(where: str, base_url: object) -> str:
    """`base_url` if it is an http(s) URL with a host and nothing that could leak; else CarrierError."""
    parts = urlsplit(base_url) if isinstance(base_url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise CarrierError(f"{where}: base_url must be an http(s) URL with a host, got {base_url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        # Credentials in the URL would end up in logs and tracebacks.
        raise CarrierError(f"{where}: base_url must not contain credentials, a query or a fragment")
    return str(base_url)


def deadline_from_spec(where: str, spec: Mapping[str, Any], *, default_ms: int, max_ms: int) -> float:
    """`spec["deadline_ms"]` (or `default_ms`) in seconds; CarrierError unless in (0, max_ms]."""
    deadline_ms = spec.get("deadline_ms", default_ms)
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int | float) or not 0 < deadline_ms <= max_ms:
        raise CarrierError(f"{where}: deadline_ms must be a number in (0, {max_ms}], got {deadline_ms!r}")
    return float(deadline_ms) / 1000


def secret_from_env(where: str, spec: Mapping[str, Any], key: str, environ: Mapping[str, str]) -> str:
    """The secret named by `spec[key]`; CarrierError names the key or the variable, never the value."""
    var = spec.get(key)
    if not var or not isinstance(var, str):
        raise CarrierError(f"{where}: {key} is missing (name of the environment variable)")
    value = environ.get(var)
    if value is None:
        raise CarrierError(f"{where}: environment variable {var} is not set ({key})")
    if not value.strip():
        raise CarrierError(f"{where}: environment variable {var} is empty ({key})")
    return value.strip()


def check_header_value(where: str, what: str, value: str) -> None:
    if not value or any(c in value for c in "\r\n\x00"):
        # Checked early so a bad value can never surface later in an aiohttp error message.
        raise CarrierError(f"{where}: {what} is empty or contains a line break or NUL")


# --------------------------------------------------------------------------- session and request


class HttpAdapter:
    """The session, deadline and closed state of one HTTP adapter (see the module docstring)."""

    _connection_limit = 50

    def __init__(
        self,
        where: str,
        name: str,
        base_url: str,
        *,
        deadline_s: float,
        session: aiohttp.ClientSession | None,
        secrets: Mapping[str, str],
    ) -> None:
        """`secrets` (what -> value) are header values, checked here and kept by the subclass."""
        if deadline_s <= 0:
            raise CarrierError(f"{where}: deadline must be positive, got {deadline_s}")
        for what, value in secrets.items():
            check_header_value(where, what, value)
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.deadline_s = deadline_s
        self._session = session
        self._owns_session = session is None
        self._closed = False

    async def close(self) -> None:
        """Close the session this adapter created (an injected one belongs to its owner)."""
        self._closed = True
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _session_for_use(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Created lazily because a ClientSession must be made inside the running loop.
            connector = aiohttp.TCPConnector(
                limit=self._connection_limit, keepalive_timeout=_KEEPALIVE_S, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.deadline_s)
            )
        return self._session


def _never_sent(exc: BaseException) -> bool:
    # Only a refused/unreachable connection is safe to retry: nothing reached the provider.
    # Certificate/TLS failures are configuration problems: a retry cannot fix them.
    return isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
        exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError
    )


async def post_within_deadline(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    data: bytes,
    headers: Mapping[str, str],
    *,
    started: float,
    deadline_s: float,
    max_body: int,
) -> tuple[int, bytes]:
    """(status, up to `max_body` + 1 bytes of answer) within what is left of the deadline.

    One retry only if the connection never opened. Raises TimeoutError or aiohttp.ClientError:
    `transport_failure` words them.
    """
    deadline = started + deadline_s
    # One deadline for everything, a retry included (it never gets a fresh budget). The retry
    # rule is two lines, so it is written out: tenacity's AsyncRetrying cost ~50 µs of CPU per
    # request on the lettering hot path (500 calls/s), and so did a per-request ClientTimeout.
    async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
        for attempt in (1, 2):
            try:
                async with session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    allow_redirects=False,  # a redirect would resend the secret to wherever it points
                ) as resp:
                    return resp.status, await resp.content.read(max_body + 1)
            except aiohttp.ClientError as exc:
                if attempt == 2 or not _never_sent(exc) or deadline - time.monotonic() < _MIN_RETRY_S:
                    raise
            await asyncio.sleep(_RETRY_WAIT_S)
    raise TimeoutError  # unreachable: the second attempt returns or raises


def transport_failure(exc: TimeoutError | aiohttp.ClientError, deadline_s: float) -> str:
    """The outcome detail for a request that `post_within_deadline` could not complete."""
    if isinstance(exc, TimeoutError):
        return f"timeout after {deadline_s * 1000:.0f} ms"
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Connection refused, DNS or TLS failure: nothing reached the provider.
        return f"connect failed: {exc.os_error}"
    # Dropped connection, truncated answer...: the provider may or may not have acted.
    return f"connection error: {type(exc).__name__}"


# --------------------------------------------------------------------------- answers and webhooks


def parse_json(payload: bytes, max_body: int = NHN_MAX_BODY) -> dict[str, Any] | None:
    """The payload as a JSON object, or None for anything else (HTML error page, truncation)."""
    if len(payload) > max_body:
        return None
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deeply
        return None
    return cast(dict[str, Any], data) if isinstance(data, dict) else None


def as_int(value: Any) -> int | None:
    """A result code as int: NHN documents Integer in answers, String in webhooks."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,9}", value.strip()):
        return int(value)
    return None


def national(e164: str, *, sender: bool = False) -> str | None:
    """`+821012345678` -> `01012345678` (`+8215881234` -> `15881234` for senders); None if not KR."""
    if not e164.startswith("+82"):
        return None
    digits = display(e164).replace("-", "").replace(" ", "")
    pattern = _NATIONAL_SENDER if sender else _NATIONAL_RECIPIENT
    return digits if pattern.fullmatch(digits) else None


def verify_signature(headers: Mapping[str, str], expected_signature: str) -> None:
    """Raise ReportForged unless the webhook carries the configured signature string."""
    if not expected_signature:
        # Fail closed: without a configured signature anybody could forge delivery reports.
        raise ReportForged("no webhook signature is configured")
    received = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None)
    if received is None:
        raise ReportForged(f"missing {SIGNATURE_HEADER} header")
    # A header value that is not UTF-8 reaches us as surrogate escapes: compare the bytes sent.
    if not hmac.compare_digest(received.encode("utf-8", "surrogatepass"), expected_signature.encode()):
        raise ReportForged(f"wrong {SIGNATURE_HEADER}")


def webhook_hooks(headers: Mapping[str, str], body: bytes, expected_signature: str) -> tuple[str, list[Any]]:
    """(event, hooks[]) of an NHN webhook POST whose signature checks; ReportRejected otherwise."""
    verify_signature(headers, expected_signature)
    data = parse_json(body)
    if data is None:
        raise ReportRejected("body is not a JSON object")
    event, hooks = data.get("event"), data.get("hooks")
    if not isinstance(event, str) or not isinstance(hooks, list):
        raise ReportRejected("body lacks event or hooks[]")
    return event, hooks
