"""Profile-driven HTTP lettering adapter (SKT, KT, LG U+ and app-push providers).

No public API exists for caller-ID lettering: endpoints, field names, result codes and
timing are all under contract. So the adapter knows nothing carrier-specific; a
`CarrierProfile` says where to POST, how to authenticate, how to name our fields in the
carrier's JSON and how to read its answer.

The built-in `PROFILES` for "skt", "kt" and "lgu" are PLACEHOLDERS of the contract's
shape: plausible, deliberately different from one another (flat vs nested JSON, E.164 vs
national numbers, bearer token vs API-key header, path with the call id) so the adapter and
its tests cover every variant. They must be confirmed against each signed contract, and any
field can be overridden in gateway.yaml (`overrides:` of the carrier entry).

Behaviour the gateway relies on (the phone is ringing):

- every `letter()` call has a hard deadline (`deadline_s`, 800 ms by default) covering
  connection, retry, request and answer;
- it never raises for carrier-side problems: HTTP errors, timeouts, refused connections and
  garbage answers all become a typed `LetteringOutcome`;
- connections are kept alive in one shared session so that only the first call after start
  (or after an idle period) pays for TCP/TLS setup;
- one quick retry happens only when the connection could not be opened (nothing was sent,
  so the carrier cannot have acted on it) and time remains;
- the token is never logged and phone numbers are logged masked (010-****-5678);
- every request carries an idempotency key (`lettering_key`, in the profile's
  `idempotency_header`), the same from either of two gateways for one call and citizen: a
  request in flight when its gateway died and the peer's request for the same call are one
  lettering at a carrier that honours the key (the contract must say it does, and for how long).
"""

from __future__ import annotations

import json
import logging
import string
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from adapters._http import (
    HttpAdapter,
    check_url,
    deadline_from_spec,
    parse_json,
    post_within_deadline,
    transport_failure,
)
from gateway.domain.models import LetteringOutcome, LetteringRequest, LetteringResult
from gateway.errors import CarrierError

log = logging.getLogger(__name__)

NumberFormat = Literal["e164", "national"]
JsonScalar = str | int | float | bool

#: Our names for what a lettering request carries; profiles map them to the carrier's names.
REQUEST_FIELDS = frozenset({"call_id", "to", "caller_number", "organisation", "department", "text", "extension"})
#: Fields that hold a phone number and are therefore written in the profile's number format.
NUMBER_FIELDS = frozenset({"to", "caller_number"})
_METHODS = frozenset({"POST", "PUT"})
_MAX_BODY = 64 * 1024  # a lettering answer is a few hundred bytes; more is garbage


# --------------------------------------------------------------------------- numbers


def national_number(e164: str) -> str:
    """`+821012345678` -> `01012345678`; non-Korean or empty numbers are returned unchanged."""
    if e164.startswith("+82"):
        return "0" + e164[3:]
    return e164


def mask_number(number: str) -> str:
    """Mask a phone number for logs: `+821012345678` -> `010-****-5678`.

    Logs and audit details must never hold a full citizen number (privacy law); the last
    four digits are enough to match a complaint to a log line.
    """
    digits = "".join(ch for ch in national_number(number) if ch.isdigit())
    if len(digits) >= 9 and digits.startswith("0"):
        return f"{digits[:3]}-****-{digits[-4:]}"
    if len(digits) > 4:
        return "****" + digits[-4:]
    return "****" if digits else ""


# --------------------------------------------------------------------------- profile


def _set_dotted(body: dict[str, Any], dotted: str, value: Any) -> None:
    """Write `value` at `a.b.c` in `body`, creating the intermediate objects."""
    *parents, leaf = dotted.split(".")
    node = body
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise CarrierError(f"field name {dotted!r} collides with another field at {part!r}")
        node = child
    if leaf in node:
        raise CarrierError(f"field name {dotted!r} collides with another field")
    node[leaf] = value


def get_dotted(data: Any, dotted: str) -> Any:
    """Read `a.b.c` from nested JSON objects; None when any part is missing."""
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@dataclass(frozen=True, slots=True)
class CarrierProfile:
    """How one carrier's lettering API looks (see the module docstring).

    `fields` maps our request field names (`REQUEST_FIELDS`) to the carrier's JSON names;
    dotted names ("display.title") build nested objects. Only mapped fields are sent.
    `extra_fields` are constants the contract requires (a service code, a version).
    `codes` maps the carrier's result code (read at `code_path`, compared as text so that
    `0` and `"0"` are the same) to our result; a code not in the table gives `unknown_code`.
    """

    path: str  # appended to the base URL; may contain "{call_id}"
    fields: Mapping[str, str]
    codes: Mapping[str, LetteringResult]
    code_path: str
    reference_path: str = ""  # where the carrier's id for the request is, "" if none
    message_path: str = ""  # where a human-readable message is, for the outcome detail
    method: str = "POST"
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer "  # prefix before the token, "" for a bare API key
    token_env: str = ""  # default environment variable holding the token
    number_format: NumberFormat = "e164"
    # An unknown code is still a considered answer from the carrier, so retrying the same
    # request would most likely get the same code: treat it as a refusal unless told otherwise.
    unknown_code: LetteringResult = LetteringResult.REJECTED
    extra_fields: Mapping[str, JsonScalar] = field(default_factory=dict)
    # The header carrying the request's idempotency key (`lettering_key`): the same for every
    # request about one call and citizen, from whichever gateway, so a carrier that honours it
    # letters once when a gateway died mid-request and its peer asked again. "" sends none.
    idempotency_header: str = "Idempotency-Key"

    def __post_init__(self) -> None:
        # Freeze the mappings too, so a shared default profile cannot be changed by accident.
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))
        object.__setattr__(self, "codes", MappingProxyType({str(k): LetteringResult(v) for k, v in self.codes.items()}))
        object.__setattr__(self, "extra_fields", MappingProxyType(dict(self.extra_fields)))
        object.__setattr__(self, "unknown_code", LetteringResult(self.unknown_code))
        self._validate()

    def _validate(self) -> None:
        if self.method not in _METHODS:
            raise CarrierError(f"method must be one of {sorted(_METHODS)}, got {self.method!r}")
        if not self.path.startswith("/"):
            raise CarrierError(f"path must start with '/', got {self.path!r}")
        for _, name, spec, conv in string.Formatter().parse(self.path):
            if name is not None and (name != "call_id" or spec or conv):
                raise CarrierError(f"path {self.path!r}: only the placeholder {{call_id}} is allowed")
        if self.number_format not in ("e164", "national"):
            raise CarrierError(f"number_format must be 'e164' or 'national', got {self.number_format!r}")
        unknown = sorted(set(self.fields) - REQUEST_FIELDS)
        if unknown:
            known = ", ".join(sorted(REQUEST_FIELDS))
            raise CarrierError(f"fields: unknown request field(s) {', '.join(unknown)} (known: {known})")
        if "to" not in self.fields:
            raise CarrierError("fields: the recipient field 'to' must be mapped")
        if not self.code_path:
            raise CarrierError("code_path must not be empty")
        if not self.auth_header or any(c in self.auth_header for c in "\r\n:"):
            raise CarrierError(f"auth_header is not a valid header name: {self.auth_header!r}")
        if any(c in self.idempotency_header for c in "\r\n: "):
            raise CarrierError(f"idempotency_header is not a valid header name: {self.idempotency_header!r}")
        # Building a dummy body detects colliding names ("display" and "display.title").
        self.render_body(
            LetteringRequest(
                call_id="x",
                to="+820",
                caller_number="",
                organisation="",
                department="",
                text="",
                extension="",
                pbx="",
            )
        )

    def render_path(self, call_id: str) -> str:
        """The request path with the call id filled in (URL-quoted: it comes from the PBX)."""
        return self.path.format(call_id=quote(call_id, safe=""))

    def format_number(self, e164: str) -> str:
        """A number in the carrier's format; "" stays "" (unknown caller number)."""
        return national_number(e164) if self.number_format == "national" else e164

    def render_body(self, request: LetteringRequest) -> dict[str, Any]:
        """The carrier's JSON body for `request`."""
        body: dict[str, Any] = {}
        for name, constant in self.extra_fields.items():
            _set_dotted(body, name, constant)
        for ours, theirs in self.fields.items():
            value: str = getattr(request, ours)
            if ours in NUMBER_FIELDS:
                value = self.format_number(value)
            _set_dotted(body, theirs, value)
        return body

    def with_overrides(self, overrides: Mapping[str, Any]) -> CarrierProfile:
        """A copy with gateway.yaml overrides applied.

        Mapping fields (`fields`, `codes`, `extra_fields`) are merged key by key, and a null
        value removes a key, so the city can rename one field without restating the rest.
        Raises CarrierError naming the bad key.
        """
        known = {f.name for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in known:
                names = ", ".join(sorted(known))
                raise CarrierError(f"overrides.{key}: unknown profile field (known: {names})")
            current = getattr(self, key)
            if isinstance(current, Mapping):
                if not isinstance(value, Mapping):
                    raise CarrierError(f"overrides.{key}: must be a mapping")
                merged = dict(current)
                for k, v in value.items():
                    if v is None:
                        merged.pop(str(k), None)
                    elif key == "codes":
                        merged[str(k)] = _parse_result(v, f"overrides.codes.{k}")
                    elif key == "fields" and not isinstance(v, str):
                        raise CarrierError(f"overrides.fields.{k}: must be a string, got {v!r}")
                    else:
                        merged[str(k)] = v
                changes[key] = merged
            elif key == "unknown_code":
                changes[key] = _parse_result(value, "overrides.unknown_code")
            elif not isinstance(value, str):
                raise CarrierError(f"overrides.{key}: must be a string, got {type(value).__name__}")
            else:
                changes[key] = value
        try:
            return replace(self, **changes)
        except CarrierError as exc:
            raise CarrierError(f"overrides: {exc}") from None


_KEY_NAMESPACE = uuid.UUID("6f1c1f55-3c59-4a51-9d0e-6b7a2f0c9a10")  # fixed: keys must not change across releases


def lettering_key(request: LetteringRequest) -> str:
    """The per-call carrier reference sent as the idempotency key: a UUID (the form carriers'
    idempotency keys commonly take) derived from the PBX, the call and the citizen's number,
    so both gateways following one PBX send the same key for the same lettering."""
    return str(uuid.uuid5(_KEY_NAMESPACE, f"{request.pbx}\n{request.call_id}\n{request.to}"))


def _parse_result(value: object, where: str) -> LetteringResult:
    if isinstance(value, str) and value in LetteringResult.__members__.values():
        return LetteringResult(value)
    accepted = ", ".join(r.value for r in LetteringResult)
    raise CarrierError(f"{where}: unknown lettering result {value!r} (expected one of {accepted})")


_R = LetteringResult

#: Placeholder default profiles (see the module docstring): confirm each per contract.
PROFILES: dict[str, CarrierProfile] = {
    # SK: bearer token, nested JSON, E.164 numbers, string result codes.
    "skt": CarrierProfile(
        path="/v1/lettering/requests",
        fields={
            "call_id": "requestId",
            "to": "receiver.phoneNumber",
            "caller_number": "sender.phoneNumber",
            "extension": "sender.extension",
            "organisation": "display.title",
            "department": "display.subtitle",
            "text": "display.message",
        },
        codes={
            "0000": _R.DELIVERED,
            "1001": _R.UNSUPPORTED_DEVICE,
            "1002": _R.NOT_SUBSCRIBED,
            "2001": _R.REJECTED,
            "9000": _R.TEMPORARY_ERROR,
        },
        code_path="result.code",
        reference_path="result.transactionId",
        message_path="result.message",
        auth_header="Authorization",
        auth_scheme="Bearer ",
        token_env="SKT_LETTERING_TOKEN",
        number_format="e164",
    ),
    # KT: API-key header, flat JSON, national numbers, call id in the path.
    "kt": CarrierProfile(
        path="/cid/v2/calls/{call_id}/lettering",
        fields={
            "call_id": "callKey",
            "to": "calleeNo",
            "caller_number": "callerNo",
            "organisation": "orgName",
            "department": "deptName",
            "text": "cidText",
            "extension": "extNo",
        },
        codes={
            "S000": _R.DELIVERED,
            "E101": _R.UNSUPPORTED_DEVICE,
            "E102": _R.NOT_SUBSCRIBED,
            "E201": _R.REJECTED,
            "E900": _R.TEMPORARY_ERROR,
        },
        code_path="resultCode",
        reference_path="msgKey",
        message_path="resultMsg",
        auth_header="X-KT-Api-Key",
        auth_scheme="",
        token_env="KT_LETTERING_TOKEN",
        number_format="national",
        idempotency_header="X-KT-Request-Key",
    ),
    # LG U+: bearer token, header/body envelope, national numbers, a fixed service code.
    "lgu": CarrierProfile(
        path="/lettering/send",
        fields={
            "call_id": "header.transactionId",
            "to": "body.recipient",
            "caller_number": "body.callerId",
            "organisation": "body.content.organization",
            "department": "body.content.department",
            "text": "body.content.text",
            "extension": "body.content.extension",
        },
        codes={
            "0": _R.DELIVERED,
            "10": _R.UNSUPPORTED_DEVICE,
            "20": _R.NOT_SUBSCRIBED,
            "30": _R.REJECTED,
            "90": _R.TEMPORARY_ERROR,
        },
        code_path="header.resultCode",
        reference_path="header.messageId",
        message_path="header.resultMessage",
        auth_header="Authorization",
        auth_scheme="Bearer ",
        token_env="LGU_LETTERING_TOKEN",
        number_format="national",
        extra_fields={"header.serviceCode": "CIVIC_LETTERING"},
    ),
}


# --------------------------------------------------------------------------- adapter

_SPEC_KEYS = frozenset({"kind", "profile", "base_url", "token_env", "deadline_ms", "overrides"})


class HttpCarrier(HttpAdapter):
    """A `LetteringCarrier` speaking a carrier's HTTP/JSON API as described by a profile.

    `session` may be injected (tests, or sharing one pool between carriers); it is then not
    closed by `close()`. Otherwise one keep-alive session is created on first use.
    """

    _connection_limit = 100

    def __init__(
        self,
        name: str,
        profile: CarrierProfile,
        base_url: str,
        token: str,
        *,
        deadline_s: float = 0.8,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(
            f"carrier {name!r}", name, base_url, deadline_s=deadline_s, session=session, secrets={"token": token}
        )
        self.profile = profile
        self._token = token  # private and kept out of __repr__: it must never reach a log

    def __repr__(self) -> str:
        return f"HttpCarrier(name={self.name!r}, base_url={self.base_url!r}, deadline_s={self.deadline_s})"

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any], environ: Mapping[str, str]) -> HttpCarrier:
        """Build from a gateway.yaml carrier entry; raises CarrierError naming the problem.

        `{"kind": "http", "profile": "skt", "base_url": "https://...",
        "token_env": "SKT_LETTERING_TOKEN", "deadline_ms": 800, "overrides": {...}}`.
        `token_env` defaults to the profile's variable; the token itself is read from
        `environ` and never appears in an error message.
        """
        where = f"carrier {name!r}"
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise CarrierError(f"{where}: unknown key(s) {', '.join(unknown)}")
        if spec.get("kind", "http") != "http":
            raise CarrierError(f"{where}: kind must be 'http', got {spec.get('kind')!r}")
        profile_name = spec.get("profile")
        if profile_name not in PROFILES:
            raise CarrierError(f"{where}: unknown profile {profile_name!r} (known: {', '.join(sorted(PROFILES))})")
        profile = PROFILES[profile_name]
        overrides = spec.get("overrides") or {}
        if not isinstance(overrides, Mapping):
            raise CarrierError(f"{where}: overrides must be a mapping")
        try:
            profile = profile.with_overrides(overrides)
        except CarrierError as exc:
            raise CarrierError(f"{where}: {exc}") from None

        base_url = spec.get("base_url")
        if not base_url or not isinstance(base_url, str):
            raise CarrierError(f"{where}: base_url is missing")
        check_url(where, base_url)
        deadline_s = deadline_from_spec(where, spec, default_ms=800, max_ms=10_000)

        token_env = spec.get("token_env") or profile.token_env
        if not token_env or not isinstance(token_env, str):
            raise CarrierError(f"{where}: token_env is missing (profile {profile_name!r} has no default)")
        token = environ.get(token_env)
        if token is None:
            raise CarrierError(f"{where}: environment variable {token_env} is not set")
        if not token.strip():
            raise CarrierError(f"{where}: environment variable {token_env} is empty")
        return cls(name, profile, base_url, token.strip(), deadline_s=deadline_s)

    # ------------------------------------------------------------------ public API

    async def letter(self, request: LetteringRequest) -> LetteringOutcome:
        """Ask the carrier to letter the ringing call; never raises for carrier problems."""
        started = time.monotonic()
        try:
            outcome = await self._letter(request, started)
        except Exception:  # a bug must not break the call flow: log it and report a failure
            log.exception("lettering %s call=%s: unexpected error", self.name, request.call_id)
            outcome = self._outcome(LetteringResult.TEMPORARY_ERROR, detail="internal error")
        log.info(
            "lettering %s call=%s to=%s result=%s detail=%s in %.0f ms",
            self.name,
            request.call_id,
            mask_number(request.to),
            outcome.result.value,
            outcome.detail,
            (time.monotonic() - started) * 1000,
        )
        return outcome

    # ------------------------------------------------------------------ internals

    def _outcome(self, result: LetteringResult, reference: str = "", detail: str = "") -> LetteringOutcome:
        return LetteringOutcome(result=result, provider=self.name, reference=reference, detail=detail)

    async def _letter(self, request: LetteringRequest, started: float) -> LetteringOutcome:
        if self._closed:
            return self._outcome(LetteringResult.TEMPORARY_ERROR, detail="carrier closed")
        session = self._session_for_use()
        if session.closed:
            return self._outcome(LetteringResult.TEMPORARY_ERROR, detail="session closed")
        url = self.base_url + self.profile.render_path(request.call_id)
        body = json.dumps(self.profile.render_body(request), ensure_ascii=False).encode()
        headers = {
            self.profile.auth_header: self.profile.auth_scheme + self._token,
            "Content-Type": "application/json; charset=utf-8",
            "Accept": "application/json",
        }
        if self.profile.idempotency_header:
            headers[self.profile.idempotency_header] = lettering_key(request)
        try:
            status, payload = await post_within_deadline(
                session,
                self.profile.method,
                url,
                body,
                headers,
                started=started,
                deadline_s=self.deadline_s,
                max_body=_MAX_BODY,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            return self._outcome(LetteringResult.TEMPORARY_ERROR, detail=transport_failure(exc, self.deadline_s))
        return self._interpret(status, payload)

    def _interpret(self, status: int, payload: bytes) -> LetteringOutcome:
        temporary, rejected = LetteringResult.TEMPORARY_ERROR, LetteringResult.REJECTED
        data = parse_json(payload, _MAX_BODY)
        code = _code_text(get_dotted(data, self.profile.code_path)) if data is not None else None
        code_note = f" code {code}" if code is not None else ""
        if status in (401, 403):
            return self._outcome(rejected, detail="auth")
        if status in (408, 429):
            return self._outcome(temporary, detail=f"http {status}{code_note}")
        if status >= 500:
            return self._outcome(temporary, detail=f"http {status}{code_note}")
        if status >= 400:
            return self._outcome(rejected, detail=f"http {status}{code_note}")
        if not 200 <= status < 300:
            # 1xx/3xx: the base URL or the profile is wrong; retrying will not fix it.
            return self._outcome(rejected, detail=f"unexpected http {status}")
        if data is None:
            return self._outcome(temporary, detail=f"http {status}: answer is not a JSON object")
        if code is None:
            detail = f"http {status}: no result code at {self.profile.code_path}"
            return self._outcome(temporary, detail=detail)
        profile = self.profile
        reference = _code_text(get_dotted(data, profile.reference_path)) if profile.reference_path else None
        message = get_dotted(data, profile.message_path) if profile.message_path else None
        result = self.profile.codes.get(code)
        detail = f"code {code}" if result is not None else f"unknown code {code}"
        if isinstance(message, str) and message:
            detail += f": {message[:200]}"
        return self._outcome(result or self.profile.unknown_code, reference=reference or "", detail=detail)


def _code_text(value: Any) -> str | None:
    """A code or id as text; numbers count (0 == "0"), other JSON types do not."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int):
        return str(value)
    return None
