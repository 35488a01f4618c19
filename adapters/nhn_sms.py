"""NHN Cloud Notification SMS (API v3.0): SMS and LMS from the city's registered numbers.

Documentation followed (NHN Cloud, Notification > SMS):

- "API v3.0 Guide": ``POST /sms/v3.0/appKeys/{appKey}/sender/sms`` (body ``body``,
  ``sendNo`` <= 13, ``recipientList[]{recipientNo, recipientGroupingKey}``,
  ``senderGroupingKey`` <= 100) and ``POST /sms/v3.0/appKeys/{appKey}/sender/mms`` for an
  LMS ("long MMS without attachment": ``title`` required, standard 40 bytes; ``body``
  standard 2,000 bytes), header ``X-Secret-Key``. Answer ``header{isSuccessful,
  resultCode, resultMessage}`` and ``body.data{requestId, statusCode,
  sendResultList[]{recipientNo, resultCode, resultMessage, recipientSeq,
  recipientGroupingKey}}``. Text is sent as EUC-KR: see `gateway.domain.smstext`.
- "Result codes": -2312 sender number empty or not registered, -2313 sender number
  blocked, -6001 recipient refused through the 080 opt-out service, -2018/-2019 recipient
  number empty/invalid, -2015 title or body too long, -2023 characters EUC-KR cannot
  carry (emoji), -2021 queue failure, -9999 system error. These are NHN's equivalents of
  Solapi's 1062, 1061/2061 and 1029.
- "Webhook": header ``X-Toast-Webhook-Signature`` (the string configured in the console),
  envelope ``{hooksId, webhookConfigId, productName, appKey, event, hooks[]}``; event
  ``UNSUBSCRIBE`` ("광고 문자 수신 번호 등록") has hooks ``{hookId, recipientNo,
  unsubscribeNo, enterpriseName, createdDateTime}``.

Assumptions and choices:

- The SMS v3.0 send API documents no idempotency header (only KakaoTalk Bizmessage does).
  None is sent, and the adapter never re-sends anything that may have reached NHN: the
  only retry is for a connection that could not be opened. The message's idempotency key
  travels as ``senderGroupingKey`` and ``recipientGroupingKey``. When an earlier attempt's
  outcome is unknown (the worker died mid-request, or NHN answered after the deadline), the
  outbox asks `find_sent` first: "List messages" ``GET /sms/v3.0/appKeys/{appKey}/sender/sms``
  (``/sender/mms`` for LMS) filtered by ``senderGroupingKey`` within
  ``startRequestDate``/``endRequestDate`` (``yyyy-MM-dd HH:mm:ss``, KST), answer
  ``body.data[]{requestId, recipientSeq, senderGroupingKey, ...}``. Found: not sent again.
- Per-recipient ``resultCode`` uses the same API code table as the header.
- An LMS without a title gets the first line of its text, cut to 40 EUC-KR bytes, since
  NHN requires ``title``.
- Only Korean numbers (LMS cannot go abroad anyway); anything else is INVALID_NUMBER
  without a request.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from adapters._http import (
    NHN_MAX_BODY,
    SIGNATURE_HEADER,
    HttpAdapter,
    as_int,
    check_spec,
    check_url,
    deadline_from_spec,
    national,
    parse_json,
    post_within_deadline,
    secret_from_env,
    transport_failure,
    webhook_hooks,
)
from gateway.domain.models import SendOutcome, SendResult, SmsRequest
from gateway.domain.numbers import mask
from gateway.domain.smstext import encoded_length
from gateway.errors import ReportRejected

# SIGNATURE_HEADER and national live in adapters._http (shared with nhn_alimtalk),
# ReportRejected in gateway.errors (it carries its HTTP status); all are re-exported here, where
# they have always been importable.
__all__ = [
    "API_CODES",
    "DEFAULT_BASE_URL",
    "GROUPING_KEY_MAX",
    "LMS_PATH",
    "SECRET_HEADER",
    "SIGNATURE_HEADER",
    "SMS_PATH",
    "TITLE_MAX_BYTES",
    "NhnSms",
    "ReportRejected",
    "lms_title",
    "national",
    "parse_unsubscribe",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api-sms.cloud.toast.com"
SMS_PATH = "/sms/v3.0/appKeys/{appkey}/sender/sms"
LMS_PATH = "/sms/v3.0/appKeys/{appkey}/sender/mms"
SECRET_HEADER = "X-Secret-Key"
GROUPING_KEY_MAX = 100
TITLE_MAX_BYTES = 40

_R = SendResult
#: API result codes (header.resultCode and sendResultList[].resultCode).
API_CODES: Mapping[int, tuple[SendResult, str]] = {
    0: (_R.ACCEPTED, "accepted"),
    -2312: (_R.REJECTED, "sender number is not registered with NHN (발신번호 사전등록)"),
    -2313: (_R.REJECTED, "sender number is blocked at NHN"),
    -6001: (_R.OPTED_OUT, "recipient refused through the 080 opt-out service"),
    -2018: (_R.INVALID_NUMBER, "recipient number is empty"),
    -2019: (_R.INVALID_NUMBER, "recipient number is invalid"),
    -2015: (_R.REJECTED, "title or body exceeds the maximum bytes"),
    -2023: (_R.REJECTED, "title or body has characters EUC-KR cannot carry"),
    -2021: (_R.TEMPORARY_ERROR, "NHN queue failure"),
    -9999: (_R.TEMPORARY_ERROR, "NHN system error"),
}

_SPEC_KEYS = frozenset({"kind", "base_url", "appkey_env", "secret_env", "deadline_ms"})


def lms_title(text: str) -> str:
    """A default LMS title: the first non-empty line, cut to 40 EUC-KR bytes."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    while line and encoded_length(line) > TITLE_MAX_BYTES:
        line = line[:-1]
    return line.rstrip()


class NhnSms(HttpAdapter):
    """An `SmsProvider` for NHN Cloud SMS v3.0 (see the module docstring).

    Same behaviour as every adapter: one keep-alive session, a hard deadline, a single
    retry only when the connection never opened, never raises for provider problems,
    numbers masked and secrets absent from logs.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        appkey: str,
        secret_key: str,
        *,
        deadline_s: float = 3.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        secrets = {"appkey": appkey, "secret key": secret_key}
        super().__init__(
            f"sms provider {name!r}", name, base_url, deadline_s=deadline_s, session=session, secrets=secrets
        )
        self._appkey = appkey
        self._secret = secret_key  # private, kept out of __repr__

    def __repr__(self) -> str:
        return f"NhnSms(name={self.name!r}, base_url={self.base_url!r}, deadline_s={self.deadline_s})"

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any], environ: Mapping[str, str]) -> NhnSms:
        """Build from a gateway.yaml provider entry; CarrierError names the bad key or variable.

        `{"kind": "nhn", "base_url": "https://api-sms.cloud.toast.com",
        "appkey_env": "NHN_SMS_APPKEY", "secret_env": "NHN_SMS_SECRET", "deadline_ms": 3000}`.
        """
        where = f"sms provider {name!r}"
        check_spec(where, spec, _SPEC_KEYS, "nhn")
        base_url = check_url(where, spec.get("base_url", DEFAULT_BASE_URL))
        deadline = deadline_from_spec(where, spec, default_ms=3000, max_ms=30_000)
        appkey = secret_from_env(where, spec, "appkey_env", environ)
        secret = secret_from_env(where, spec, "secret_env", environ)
        return cls(name, base_url, appkey, secret, deadline_s=deadline)

    # ------------------------------------------------------------------ public API

    async def send_sms(self, request: SmsRequest) -> SendOutcome:
        """Send one SMS or LMS (by `request.kind`); never raises for provider problems."""
        started = time.monotonic()
        try:
            outcome = await self._send(request, started)
        except Exception:
            log.exception("sms %s key=%s: unexpected error", self.name, request.idempotency_key)
            outcome = self._outcome(_R.TEMPORARY_ERROR, detail="internal error")
        log.info(
            "sms %s key=%s kind=%s to=%s result=%s ref=%s detail=%s in %.0f ms",
            self.name,
            request.idempotency_key,
            request.kind,
            mask(request.to),
            outcome.result.value,
            outcome.reference,
            outcome.detail,
            (time.monotonic() - started) * 1000,
        )
        return outcome

    def render(self, request: SmsRequest) -> tuple[str, dict[str, Any]]:
        """(path, documented JSON body) for `request`; ValueError for a bad kind or number."""
        if request.kind not in ("sms", "lms"):
            raise ValueError(f"kind must be 'sms' or 'lms', got {request.kind!r}")
        recipient_no = national(request.to)
        if recipient_no is None:
            raise ValueError("recipient is not a Korean number")
        send_no = national(request.sender, sender=True)
        if send_no is None:
            raise ValueError("sender is not a Korean number")
        key = request.idempotency_key[:GROUPING_KEY_MAX]
        body: dict[str, Any] = {
            "body": request.text,
            "sendNo": send_no,
            "senderGroupingKey": key,
            "recipientList": [{"recipientNo": recipient_no, "recipientGroupingKey": key}],
        }
        if request.kind == "lms":
            body["title"] = request.title or lms_title(request.text)
            return LMS_PATH.format(appkey=quote(self._appkey, safe="")), body
        return SMS_PATH.format(appkey=quote(self._appkey, safe="")), body

    async def find_sent(self, request: SmsRequest, since: float) -> SendOutcome | None:
        """Did NHN already take this message (an attempt since `since`, epoch seconds)?

        ACCEPTED with its reference when found, None when NHN has no such message, and
        TEMPORARY_ERROR when NHN cannot tell now (the caller retries later rather than risk a
        second SMS on the citizen's phone)."""
        started = time.monotonic()
        try:
            path, body = self.render(request)
        except ValueError:
            return None  # never sendable, so never sent
        kst = 9 * 3600
        query = urlencode(
            {
                "senderGroupingKey": body["senderGroupingKey"],
                "startRequestDate": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since - 300 + kst)),
                "endRequestDate": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 300 + kst)),
                "pageNum": 1,
                "pageSize": 10,
            }
        )
        headers = {SECRET_HEADER: self._secret, "Accept": "application/json"}
        try:
            status, payload = await post_within_deadline(
                self._session_for_use(),
                "GET",
                f"{self.base_url}{path}?{query}",
                b"",
                headers,
                started=started,
                deadline_s=self.deadline_s,
                max_body=NHN_MAX_BODY,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            return self._outcome(_R.TEMPORARY_ERROR, detail=f"lookup: {transport_failure(exc, self.deadline_s)}")
        data = parse_json(payload) if 200 <= status < 300 else None
        header = data.get("header") if data is not None else None
        page = data.get("body") if data is not None else None
        found = page.get("data") if isinstance(page, dict) else None
        if not isinstance(header, dict) or header.get("isSuccessful") is not True or not isinstance(found, list):
            return self._outcome(_R.TEMPORARY_ERROR, detail=f"lookup: http {status}, unreadable answer")
        for item in found:
            if isinstance(item, dict) and item.get("senderGroupingKey") == body["senderGroupingKey"]:
                seq = as_int(item.get("recipientSeq"))
                reference = f"{item.get('requestId')}:{seq}" if seq is not None else str(item.get("requestId", ""))
                log.warning(
                    "sms %s key=%s: already at NHN (%s), not sent again", self.name, request.idempotency_key, reference
                )
                return self._outcome(_R.ACCEPTED, reference, "found at provider after an unknown outcome")
        return None

    # ------------------------------------------------------------------ internals

    def _outcome(self, result: SendResult, reference: str = "", detail: str = "") -> SendOutcome:
        return SendOutcome(result=result, provider=self.name, reference=reference, detail=detail)

    async def _send(self, request: SmsRequest, started: float) -> SendOutcome:
        if self._closed:
            return self._outcome(_R.TEMPORARY_ERROR, detail="provider closed")
        try:
            path, body = self.render(request)
        except ValueError as exc:
            # A citizen's bad number is INVALID_NUMBER; a bad sender or kind is our own error.
            invalid = str(exc).startswith("recipient")
            return self._outcome(_R.INVALID_NUMBER if invalid else _R.REJECTED, detail=str(exc))
        session = self._session_for_use()
        headers = {
            SECRET_HEADER: self._secret,
            "Content-Type": "application/json;charset=UTF-8",
            "Accept": "application/json",
        }
        data = json.dumps(body, ensure_ascii=False).encode()
        try:
            status, payload = await post_within_deadline(
                session,
                "POST",
                self.base_url + path,
                data,
                headers,
                started=started,
                deadline_s=self.deadline_s,
                max_body=NHN_MAX_BODY,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            return self._outcome(_R.TEMPORARY_ERROR, detail=transport_failure(exc, self.deadline_s))
        return self._interpret(status, payload, send_no=str(body["sendNo"]))

    def _interpret(self, status: int, payload: bytes, *, send_no: str) -> SendOutcome:
        if status in (401, 403):
            return self._outcome(_R.REJECTED, detail=f"http {status}: auth")
        if status in (408, 429) or status >= 500:
            return self._outcome(_R.TEMPORARY_ERROR, detail=f"http {status}")
        if status >= 400 or not 200 <= status < 300:
            return self._outcome(_R.REJECTED, detail=f"http {status}")
        data = parse_json(payload)
        header = data.get("header") if data is not None else None
        if not isinstance(header, dict) or not isinstance(header.get("isSuccessful"), bool):
            return self._outcome(_R.TEMPORARY_ERROR, detail=f"http {status}: answer is not NHN's JSON")
        body = data.get("body") if data is not None else None
        inner = body.get("data") if isinstance(body, dict) else None
        request_id = inner.get("requestId") if isinstance(inner, dict) else None
        results = inner.get("sendResultList") if isinstance(inner, dict) else None
        first = results[0] if isinstance(results, list) and results and isinstance(results[0], dict) else None
        if not header["isSuccessful"] or first is None:
            code = as_int(header.get("resultCode"))
            if header["isSuccessful"]:
                return self._outcome(_R.TEMPORARY_ERROR, detail=f"code {code}: answer has no sendResultList")
            return self._outcome(*self._code_outcome(code, header.get("resultMessage"), send_no))
        seq = as_int(first.get("recipientSeq"))
        reference = f"{request_id}:{seq}" if isinstance(request_id, str) and seq is not None else ""
        result, _, detail = self._code_outcome(as_int(first.get("resultCode")), first.get("resultMessage"), send_no)
        if result is _R.ACCEPTED and not reference:
            return self._outcome(_R.TEMPORARY_ERROR, detail="accepted without requestId/recipientSeq")
        return self._outcome(result, reference, detail)

    @staticmethod
    def _code_outcome(code: int | None, message: Any, send_no: str) -> tuple[SendResult, str, str]:
        if code is None:
            return _R.TEMPORARY_ERROR, "", "answer has no resultCode"
        result, meaning = API_CODES.get(code, (_R.REJECTED, "unknown code"))
        if code == -2312:
            meaning = f"sender number {send_no} is not registered with NHN (발신번호 사전등록)"
        text = f"code {code}: {meaning}"
        if isinstance(message, str) and message and message != "SUCCESS":
            text += f" ({message[:200]})"
        return result, "", text


# --------------------------------------------------------------------------- webhook


def _e164(national_no: str) -> str | None:
    digits = re.sub(r"[\s-]", "", national_no)
    if re.fullmatch(r"01\d{8,9}", digits):
        return "+82" + digits[1:]
    if re.fullmatch(r"821\d{8,9}", digits):
        return "+" + digits
    return None


def parse_unsubscribe(headers: Mapping[str, str], body: bytes, expected_signature: str) -> list[str]:
    """E.164 numbers that opted out through NHN's 080 service, from one SMS webhook POST.

    Verifies `X-Toast-Webhook-Signature` (constant-time) first. Events other than
    UNSUBSCRIBE give []. A hook whose number cannot be read rejects the whole body rather
    than drop an opt-out silently. Raises ReportRejected (a ValueError).
    """
    event, hooks = webhook_hooks(headers, body, expected_signature)
    if event != "UNSUBSCRIBE":
        return []
    numbers: list[str] = []
    for i, hook in enumerate(hooks):
        number = hook.get("recipientNo") if isinstance(hook, dict) else None
        e164 = _e164(number) if isinstance(number, str) else None
        if e164 is None:
            raise ReportRejected(f"hooks[{i}].recipientNo is not a Korean mobile number")
        if e164 not in numbers:
            numbers.append(e164)
    return numbers
