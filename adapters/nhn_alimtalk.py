"""NHN Cloud KakaoTalk Bizmessage: Alimtalk with SMS/LMS fallback (대체발송), and its webhook.

Documentation followed (NHN Cloud, Notification > KakaoTalk Bizmessage):

- "AlimTalk > API v2.3 Guide", *Send Replacement Message Request*:
  ``POST /alimtalk/v2.3/appkeys/{appkey}/messages``, headers ``X-Secret-Key`` and the
  optional ``X-NC-API-IDEMPOTENCY-KEY`` ("if a request is made with the same key for 10
  minutes, the request will be failed"); body ``senderKey`` (40 chars), ``templateCode``
  (<= 20), optional ``requestDate`` (omitted: sent at once), ``recipientList[]`` (<= 1,000)
  with ``recipientNo`` (<= 15), ``templateParameter`` (#{key} -> value),
  ``resendParameter{isResend, resendType SMS|LMS, resendTitle, resendContent,
  resendSendNo}``, ``buttons[]``, ``recipientGroupingKey`` (<= 100). Response
  ``header{resultCode, resultMessage, isSuccessful}`` and ``message{requestId,
  senderGroupingKey, sendResults[]{recipientSeq, recipientNo, resultCode, resultMessage,
  recipientGroupingKey}}``. The guide's domain is now
  https://kakaotalk-bizmessage.api.nhncloudservice.com; the older
  https://api-alimtalk.cloud.toast.com (our default, as in gateway.yaml) still serves it.
- "Error Codes": API codes (0 success, -1005 same idempotency key within 10 minutes,
  -1003 invalid SMS sender number, -3003 no such template, -3004/-3049 template
  parameter mismatch, -3301 unsubscribed recipient, -4019/-5000 invalid recipient number,
  -4200 invalid resend message, -9999 system error, ...) and Kakao's delivery result codes
  (1000 success, 3018 not deliverable: inactive user or USIM mismatch, 3019 not a
  KakaoTalk user, 3020 Alimtalk refused by the user, 3021 KakaoTalk too old, 3008 bad
  phone number, ...). These are NHN's equivalents of Solapi's 3104 (-> 3019/3018) and
  3107 (-> 3020); the 080 opt-out (Solapi 1061/2061) is -3301 here and -6001 in SMS.
- "Webhook > API Guide": POST with header ``X-Toast-Webhook-Signature`` = the signature
  string typed into the console (a shared secret, not an HMAC of the body), body
  ``{hooksId, webhookConfigId, productName, appKey, event, hooks[]}``; for event
  ``MESSAGE_RESULT_UPDATE`` each hook has ``kakaoMessageType``, ``requestId``,
  ``recipientSeq``, ``requestDate``, ``createDate``, ``receiveDate``, ``recipientNo``,
  ``resultCode`` (string), grouping keys, ``_links`` and ``hookId``.

Where the documentation is silent, this adapter assumes (and says so in its answers):

- Buttons. In v2.3's *replacement* send, a recipient's ``buttons[]`` carry only
  ``ordering`` (and plugin/bot options): a button's type, name and links (``WL``,
  ``linkMo``, ``linkPc``) are fixed by the approved template, with ``#{variables}`` in the
  link filled from ``templateParameter``. Those fields exist only in the *full message*
  send (``/raw-messages``), which needs the whole rendered body we do not have. So each
  `Button` is sent as ``{"ordering": n}`` (1-based, request order = template order): NHN
  then refuses a request naming more buttons than the template has (-3011/-3033) instead
  of silently sending a message without them. `Button.url` must be what the template's
  link renders to; the adapter cannot send it.
- ``sendResults[].resultCode`` has no table of its own: it is read with the API table and,
  when NHN reports a Kakao delivery code synchronously, with the delivery table.
- When a fallback was requested and Kakao cannot deliver (not a user, blocked), NHN's SMS
  service sends the fallback itself; the outcome is then ACCEPTED (detail says so), so the
  gateway never sends a second SMS of its own.
- A repeated idempotency key is answered -1005 with no requestId: the first request
  reached NHN, so it is ACCEPTED (detail "duplicate"), never sent again. The key protects
  for 10 minutes only; the outbox's own dedupe covers longer redeliveries.
- The webhook documents no resend fields. If a hook carries the message-query fields
  ``resendStatus`` (RSC01-RSC05) / ``resendResultCode``, they are used for
  `fallback_used`; otherwise a failed Alimtalk is reported FAILED and the fallback SMS is
  reported by the SMS product's own webhook under its own request id.
- After an unknown outcome (the deadline passed, the worker died mid-request), the outbox asks
  `find_sent` before sending again. NHN's "List messages" ``GET
  /alimtalk/v2.3/appkeys/{appkey}/messages`` needs ``requestId`` or both
  ``startRequestDate``/``endRequestDate`` (``yyyy-MM-dd HH:mm``, KST) and filters by
  ``recipientNo`` and ``recipientGroupingKey`` (our idempotency key, cut to 100); the answer
  is ``messageSearchResultResponse{messages[]{requestId, recipientSeq, recipientNo,
  requestDate, messageStatus, resultCode, resendStatus, recipientGroupingKey, ...},
  totalCount}``. The requestId of a lost answer is unknown, so the date range plus recipient
  and grouping key is the only handle. What the API allows, and where it does not answer:
  a message found there was taken (ACCEPTED, or its Kakao failure when it failed for
  good) and is not sent again; none found means NHN never took the request and it is sent;
  the lookup failing (HTTP error, unreadable answer, timeout) answers TEMPORARY_ERROR and
  the outbox then sends as before, protected only by ``X-NC-API-IDEMPOTENCY-KEY`` for its
  10 minutes. NHN documents no way to ask by idempotency key, keeps the list for a limited
  period only, and does not say how soon a taken request is listed: a lookup made right
  after a timeout could miss a request still being processed (within 10 minutes the key then
  answers -1005, ACCEPTED "duplicate" without a reference). These field names are from the
  v2.3 guide as read for this adapter, not re-checked against a live account.
- Only Korean numbers: ``recipientNo``/``resendSendNo`` are national ("01012345678",
  "0221331234", "15881234"); anything else is INVALID_NUMBER without a request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
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
    verify_signature,
    webhook_hooks,
)
from gateway.domain.models import (
    AlimtalkRequest,
    DeliveryReport,
    ReportStatus,
    SendOutcome,
    SendResult,
)
from gateway.domain.numbers import mask
from gateway.errors import CarrierError, ReportRejected

# SIGNATURE_HEADER, national and verify_signature live in adapters._http (shared with nhn_sms),
# ReportRejected in gateway.errors (it carries its HTTP status); all are re-exported here, where
# they have always been importable.
__all__ = [
    "API_CODES",
    "DEFAULT_BASE_URL",
    "DUPLICATE_CODE",
    "GROUPING_KEY_MAX",
    "IDEMPOTENCY_HEADER",
    "KAKAO_CODES",
    "KST",
    "MESSAGES_PATH",
    "SECRET_HEADER",
    "SIGNATURE_HEADER",
    "NhnAlimtalk",
    "ReportRejected",
    "national",
    "parse_report",
    "verify_signature",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api-alimtalk.cloud.toast.com"
MESSAGES_PATH = "/alimtalk/v2.3/appkeys/{appkey}/messages"
SECRET_HEADER = "X-Secret-Key"
IDEMPOTENCY_HEADER = "X-NC-API-IDEMPOTENCY-KEY"
GROUPING_KEY_MAX = 100  # recipientGroupingKey, documented maximum
#: Korea has no daylight saving time: a fixed offset is exact for NHN's local timestamps.
KST = timezone(timedelta(hours=9))

_R = SendResult
DUPLICATE_CODE = -1005
#: API result codes (header.resultCode, sendResults[].resultCode) that are not refusals.
API_CODES: Mapping[int, SendResult] = {
    0: _R.ACCEPTED,
    -3301: _R.OPTED_OUT,  # "The unsubscribed recipient are found."
    -4019: _R.INVALID_NUMBER,  # "Invalid recipient number."
    -5000: _R.INVALID_NUMBER,  # "RecipientNo is invalid."
    -7000: _R.TEMPORARY_ERROR,  # "Vender request API is failed."
    -9999: _R.TEMPORARY_ERROR,  # "System error."
}
#: Kakao delivery result codes (webhook resultCode; sometimes sendResults[].resultCode).
KAKAO_CODES: Mapping[int, SendResult] = {
    1000: _R.ACCEPTED,
    1020: _R.INVALID_NUMBER,  # phone number invalid or missing
    3008: _R.INVALID_NUMBER,  # phone number error
    3018: _R.NOT_KAKAO_USER,  # cannot deliver: inactive user (7 days), USIM mismatch, sanctioned
    3019: _R.NOT_KAKAO_USER,  # not a KakaoTalk user
    3020: _R.BLOCKED,  # the user refuses Alimtalk
    3021: _R.NOT_KAKAO_USER,  # KakaoTalk version too old
    2001: _R.TEMPORARY_ERROR,
    3000: _R.TEMPORARY_ERROR,
    3006: _R.TEMPORARY_ERROR,
    3010: _R.TEMPORARY_ERROR,
    3012: _R.TEMPORARY_ERROR,
    9998: _R.TEMPORARY_ERROR,
    9999: _R.TEMPORARY_ERROR,
}
_FALLBACK_FIXES = frozenset({_R.NOT_KAKAO_USER, _R.BLOCKED})

_SPEC_KEYS = frozenset({"kind", "base_url", "appkey_env", "secret_env", "sender_key_env", "deadline_ms"})


# --------------------------------------------------------------------------- adapter


class NhnAlimtalk(HttpAdapter):
    """An `AlimtalkProvider` for NHN Cloud KakaoTalk Bizmessage (see the module docstring).

    One keep-alive session (created on first use unless injected; an injected session is
    not closed by `close()`); a hard deadline per send; one quick retry only when the
    connection could not be opened; never raises for provider problems.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        appkey: str,
        secret_key: str,
        sender_key: str,
        *,
        deadline_s: float = 3.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        secrets = {"appkey": appkey, "secret key": secret_key, "sender key": sender_key}
        super().__init__(
            f"alimtalk provider {name!r}", name, base_url, deadline_s=deadline_s, session=session, secrets=secrets
        )
        self._appkey = appkey
        self._secret = secret_key  # private, kept out of __repr__: never logged
        self._sender_key = sender_key

    def __repr__(self) -> str:
        return f"NhnAlimtalk(name={self.name!r}, base_url={self.base_url!r}, deadline_s={self.deadline_s})"

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any], environ: Mapping[str, str]) -> NhnAlimtalk:
        """Build from a gateway.yaml provider entry; CarrierError names the bad key or variable.

        `{"kind": "nhn", "base_url": "https://api-alimtalk.cloud.toast.com",
        "appkey_env": "NHN_ALIMTALK_APPKEY", "secret_env": "NHN_ALIMTALK_SECRET",
        "sender_key_env": "NHN_ALIMTALK_SENDER_KEY", "deadline_ms": 3000}`.
        """
        where = f"alimtalk provider {name!r}"
        check_spec(where, spec, _SPEC_KEYS, "nhn")
        base_url = spec.get("base_url", DEFAULT_BASE_URL)
        if not isinstance(base_url, str) or not base_url:
            raise CarrierError(f"{where}: base_url must be a non-empty string")
        base_url = check_url(where, base_url)
        deadline = deadline_from_spec(where, spec, default_ms=3000, max_ms=30_000)
        appkey = secret_from_env(where, spec, "appkey_env", environ)
        secret = secret_from_env(where, spec, "secret_env", environ)
        sender_key = secret_from_env(where, spec, "sender_key_env", environ)
        return cls(name, base_url, appkey, secret, sender_key, deadline_s=deadline)

    # ------------------------------------------------------------------ public API

    async def send_alimtalk(self, request: AlimtalkRequest) -> SendOutcome:
        """Send one Alimtalk (with its fallback); never raises for provider problems."""
        started = time.monotonic()
        try:
            outcome = await self._send(request, started)
        except Exception:  # a bug must not break the job: log it, report a retryable failure
            log.exception("alimtalk %s key=%s: unexpected error", self.name, request.idempotency_key)
            outcome = self._outcome(_R.TEMPORARY_ERROR, detail="internal error")
        log.info(
            "alimtalk %s key=%s to=%s template=%s result=%s ref=%s detail=%s in %.0f ms",
            self.name,
            request.idempotency_key,
            mask(request.to),
            request.template_code,
            outcome.result.value,
            outcome.reference,
            outcome.detail,
            (time.monotonic() - started) * 1000,
        )
        return outcome

    def render_body(self, request: AlimtalkRequest) -> dict[str, Any]:
        """The documented JSON body for `request`; ValueError when a number is not Korean."""
        recipient_no = national(request.to)
        if recipient_no is None:
            raise ValueError("recipient is not a Korean number")
        recipient: dict[str, Any] = {
            "recipientNo": recipient_no,
            "templateParameter": dict(request.variables),
            "resendParameter": self._resend(request),
            "recipientGroupingKey": request.idempotency_key[:GROUPING_KEY_MAX],
        }
        if request.buttons:
            recipient["buttons"] = [{"ordering": i} for i, _ in enumerate(request.buttons, start=1)]
        return {"senderKey": self._sender_key, "templateCode": request.template_code, "recipientList": [recipient]}

    async def find_sent(self, request: AlimtalkRequest, since: float) -> SendOutcome | None:
        """Did NHN already take this Alimtalk (an attempt since `since`, epoch seconds)?

        Its state when found (ACCEPTED with the reference, or the final Kakao failure), None
        when NHN lists no such message (or one that failed temporarily: sending again is
        right), TEMPORARY_ERROR when NHN cannot tell now (see the module docstring)."""
        started = time.monotonic()
        try:
            body = self.render_body(request)
        except ValueError:
            return None  # never sendable, so never sent
        recipient = body["recipientList"][0]
        kst = 9 * 3600
        query = urlencode(
            {
                "startRequestDate": time.strftime("%Y-%m-%d %H:%M", time.gmtime(since - 300 + kst)),
                "endRequestDate": time.strftime("%Y-%m-%d %H:%M", time.gmtime(time.time() + 300 + kst)),
                "recipientNo": recipient["recipientNo"],
                "recipientGroupingKey": recipient["recipientGroupingKey"],
                "pageNum": 1,
                "pageSize": 10,
            }
        )
        url = self.base_url + MESSAGES_PATH.format(appkey=quote(self._appkey, safe="")) + "?" + query
        headers = {SECRET_HEADER: self._secret, "Accept": "application/json"}
        try:
            status, payload = await post_within_deadline(
                self._session_for_use(),
                "GET",
                url,
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
        page = data.get("messageSearchResultResponse") if data is not None else None
        found = page.get("messages") if isinstance(page, dict) else None
        if not isinstance(header, dict) or header.get("isSuccessful") is not True or not isinstance(found, list):
            return self._outcome(_R.TEMPORARY_ERROR, detail=f"lookup: http {status}, unreadable answer")
        for item in found:
            if not isinstance(item, dict) or item.get("recipientGroupingKey") != recipient["recipientGroupingKey"]:
                continue
            outcome = self._found_state(item, has_fallback=request.fallback is not None)
            if outcome is not None:
                log.warning(
                    "alimtalk %s key=%s: already at NHN (%s, %s), not sent again",
                    self.name,
                    request.idempotency_key,
                    outcome.reference,
                    outcome.result.value,
                )
                return outcome
        return None

    # ------------------------------------------------------------------ internals

    def _found_state(self, item: Mapping[str, Any], *, has_fallback: bool) -> SendOutcome | None:
        """A listed message as an outcome; None when it failed in a way a new send may fix."""
        seq = as_int(item.get("recipientSeq"))
        reference = f"{item.get('requestId')}:{seq}" if seq is not None else str(item.get("requestId", ""))
        state = f"status {item.get('messageStatus')} code {item.get('resultCode')}"
        if item.get("messageStatus") != "FAILED":
            return self._outcome(_R.ACCEPTED, reference, f"found at provider after an unknown outcome ({state})")
        code = as_int(item.get("resultCode"))
        result = KAKAO_CODES.get(code) if code is not None else None
        if result is None or result is _R.TEMPORARY_ERROR:
            return None
        if has_fallback and result in _FALLBACK_FIXES:
            return self._outcome(_R.ACCEPTED, reference, f"found at provider ({state}); fallback sent by NHN")
        return self._outcome(result, reference, f"found at provider ({state})")

    @staticmethod
    def _resend(request: AlimtalkRequest) -> dict[str, Any]:
        fallback = request.fallback
        if fallback is None:
            # Explicit: the console's default may be "resend", and we did not ask for it.
            return {"isResend": False}
        send_no = national(fallback.sender, sender=True)
        if send_no is None:
            raise ValueError("fallback sender is not a Korean number")
        resend: dict[str, Any] = {
            "isResend": True,
            "resendType": "LMS" if fallback.kind == "lms" else "SMS",
            "resendContent": fallback.text,
            "resendSendNo": send_no,
        }
        if fallback.kind == "lms" and fallback.title:
            resend["resendTitle"] = fallback.title
        return resend

    def _outcome(self, result: SendResult, reference: str = "", detail: str = "") -> SendOutcome:
        return SendOutcome(result=result, provider=self.name, reference=reference, detail=detail)

    async def _send(self, request: AlimtalkRequest, started: float) -> SendOutcome:
        if self._closed:
            return self._outcome(_R.TEMPORARY_ERROR, detail="provider closed")
        try:
            body = self.render_body(request)
        except ValueError as exc:
            # A citizen's bad number is INVALID_NUMBER; a bad fallback sender is our own error.
            invalid = str(exc).startswith("recipient")
            return self._outcome(_R.INVALID_NUMBER if invalid else _R.REJECTED, detail=str(exc))
        session = self._session_for_use()
        url = self.base_url + MESSAGES_PATH.format(appkey=quote(self._appkey, safe=""))
        headers = {
            SECRET_HEADER: self._secret,
            IDEMPOTENCY_HEADER: request.idempotency_key,
            "Content-Type": "application/json;charset=UTF-8",
            "Accept": "application/json",
        }
        data = json.dumps(body, ensure_ascii=False).encode()
        try:
            status, payload = await post_within_deadline(
                session, "POST", url, data, headers, started=started, deadline_s=self.deadline_s, max_body=NHN_MAX_BODY
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            return self._outcome(_R.TEMPORARY_ERROR, detail=transport_failure(exc, self.deadline_s))
        return self._interpret(status, payload, has_fallback=request.fallback is not None)

    def _interpret(self, status: int, payload: bytes, *, has_fallback: bool) -> SendOutcome:
        data = parse_json(payload)
        http_error = _http_status_outcome(status)
        if http_error is not None:
            return self._outcome(*http_error)
        header = data.get("header") if data is not None else None
        if not isinstance(header, dict) or not isinstance(header.get("isSuccessful"), bool):
            return self._outcome(_R.TEMPORARY_ERROR, detail=f"http {status}: answer is not NHN's JSON")
        code = as_int(header.get("resultCode"))
        message = str(header.get("resultMessage") or "")[:200]
        body = data.get("message") if data is not None else None
        request_id = body.get("requestId") if isinstance(body, dict) else None
        results = body.get("sendResults") if isinstance(body, dict) else None
        first = results[0] if isinstance(results, list) and results and isinstance(results[0], dict) else None
        if not header["isSuccessful"] and first is None:
            return self._outcome(*_api_code_outcome(code, message))
        if first is None or not isinstance(request_id, str) or not request_id:
            return self._outcome(_R.TEMPORARY_ERROR, detail=f"code {code}: answer has no sendResults/requestId")
        seq = as_int(first.get("recipientSeq"))
        reference = f"{request_id}:{seq}" if seq is not None else request_id
        r_code = as_int(first.get("resultCode"))
        r_message = str(first.get("resultMessage") or "")[:200]
        result, detail = _recipient_outcome(r_code, r_message)
        if has_fallback and result in _FALLBACK_FIXES:
            return self._outcome(_R.ACCEPTED, reference, f"{detail}; SMS/LMS fallback sent by NHN")
        return self._outcome(result, reference, detail)


def _http_status_outcome(status: int) -> tuple[SendResult, str, str] | None:
    """(result, reference, detail) for an HTTP status that alone decides, else None."""
    if status in (401, 403):
        return _R.REJECTED, "", f"http {status}: auth"
    if status in (408, 429) or status >= 500:
        return _R.TEMPORARY_ERROR, "", f"http {status}"
    if status >= 400:
        return _R.REJECTED, "", f"http {status}"
    if not 200 <= status < 300:
        return _R.REJECTED, "", f"unexpected http {status}"  # a redirect: the base URL is wrong
    return None


def _api_code_outcome(code: int | None, message: str) -> tuple[SendResult, str, str]:
    """A failed request (header.isSuccessful false) as (result, reference, detail)."""
    if code == DUPLICATE_CODE:
        detail = f"code {code}: duplicate of an earlier request with this idempotency key, not sent again"
        return _R.ACCEPTED, "", detail
    result = API_CODES.get(code, _R.REJECTED) if code is not None else _R.TEMPORARY_ERROR
    if result is _R.ACCEPTED:  # isSuccessful false with code 0 is contradictory
        result = _R.TEMPORARY_ERROR
    return result, "", f"code {code}: {message}" if message else f"code {code}"


def _recipient_outcome(code: int | None, message: str) -> tuple[SendResult, str]:
    if code is None:
        return _R.TEMPORARY_ERROR, "recipient result has no resultCode"
    if code == DUPLICATE_CODE:
        return _R.ACCEPTED, f"code {code}: duplicate, not sent again"
    result = API_CODES.get(code) or KAKAO_CODES.get(code) or _R.REJECTED
    note = "" if code in API_CODES or code in KAKAO_CODES else "unknown "
    return result, f"{note}code {code}: {message}" if message else f"{note}code {code}"


# --------------------------------------------------------------------------- webhook

#: Kakao delivery result codes that are not final failures.
_REPORT_SENT = frozenset({"3005"})  # sent, receipt not confirmed (kept up to 3 days)
_REPORT_QUEUED = frozenset({"4161"})  # message being processed
#: resendStatus of the message record: RSC01 no resend, RSC02 resend due, RSC03 resending,
#: RSC04 resend succeeded, RSC05 resend failed.
_RESEND_STATUS: Mapping[str, ReportStatus] = {
    "RSC03": ReportStatus.SENT,
    "RSC04": ReportStatus.DELIVERED,
    "RSC05": ReportStatus.FAILED,
}
_DATE_FORMATS = (
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)


def _timestamp(hook: Mapping[str, Any]) -> float:
    """Epoch seconds of a hook: receiveDate, else createDate, else requestDate (KST)."""
    for key in ("receiveDate", "createDate", "requestDate"):
        value = hook.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        for fmt in _DATE_FORMATS:
            try:
                return datetime.strptime(value.strip(), fmt).replace(tzinfo=KST).timestamp()
            except ValueError:
                continue
        raise ReportRejected(f"hook {key} is not a date: {value[:40]!r}")
    raise ReportRejected("hook has no receiveDate, createDate or requestDate")


def _report(provider: str, index: int, hook: Any) -> DeliveryReport | None:
    if not isinstance(hook, dict):
        raise ReportRejected(f"hooks[{index}] is not an object")
    kind = hook.get("kakaoMessageType")
    if isinstance(kind, str) and not kind.startswith("ALIMTALK"):
        return None  # FriendTalk / brand messages of the same account are not ours
    request_id = hook.get("requestId")
    seq = as_int(hook.get("recipientSeq"))
    code = hook.get("resultCode")
    if not isinstance(request_id, str) or not request_id or seq is None:
        raise ReportRejected(f"hooks[{index}] lacks requestId or recipientSeq")
    if isinstance(code, int) and not isinstance(code, bool):
        code = str(code)
    if not isinstance(code, str) or not code:
        raise ReportRejected(f"hooks[{index}] lacks resultCode")
    if code == "1000":
        status = ReportStatus.DELIVERED
    elif code in _REPORT_SENT:
        status = ReportStatus.SENT
    elif code in _REPORT_QUEUED:
        status = ReportStatus.QUEUED
    else:
        status = ReportStatus.FAILED
    # as_int, not int(): "²".isdigit() is True but int("²") raises, as does a 5,000-digit code.
    number = as_int(code)
    meaning = KAKAO_CODES.get(number) if number is not None else None
    detail = f"code {code}" + (f" ({meaning.value})" if meaning and meaning is not _R.ACCEPTED else "")
    fallback_used = False
    resend = hook.get("resendStatus")
    if status is ReportStatus.FAILED and isinstance(resend, str) and resend in _RESEND_STATUS:
        status = _RESEND_STATUS[resend]
        fallback_used = True
        resend_code = hook.get("resendResultCode")
        detail += f"; fallback {resend}" + (f" code {resend_code}" if resend_code else "")
    return DeliveryReport(
        provider=provider,
        reference=f"{request_id}:{seq}",
        status=status,
        at=_timestamp(hook),
        detail=detail,
        fallback_used=fallback_used,
    )


def parse_report(
    headers: Mapping[str, str], body: bytes, expected_signature: str, *, provider: str = "nhn"
) -> list[DeliveryReport]:
    """Delivery reports from one KakaoTalk Bizmessage webhook POST.

    Verifies `X-Toast-Webhook-Signature` (constant-time), then reads the documented
    envelope. Events other than MESSAGE_RESULT_UPDATE (template status, ...) and hooks of
    other Kakao message types give no report. Reports come back in body order: putting
    them in delivery order is the caller's job. Raises ReportRejected (a ValueError).
    """
    event, hooks = webhook_hooks(headers, body, expected_signature)
    if event != "MESSAGE_RESULT_UPDATE":
        return []
    reports = [_report(provider, i, hook) for i, hook in enumerate(hooks)]
    return [r for r in reports if r is not None]
