"""A fake NHN Cloud (Alimtalk v2.3 + SMS v3.0): a real aiohttp server on 127.0.0.1.

It checks every request against the documented schema (see the docstrings of
`adapters.nhn_alimtalk` and `adapters.nhn_sms`) and answers invalid input with the
documented result code, so a test against it fails when an adapter builds a bad request:
path and appkey, `X-Secret-Key`, JSON content type, known fields only and their types,
national number formats, template parameters and button orderings against the template,
resendParameter consistency, SMS body <= 90 EUC-KR bytes on /sms and <= 2,000 on /mms,
and `sendNo`/`resendSendNo` in the registered senders.

`X-NC-API-IDEMPOTENCY-KEY` is honoured as documented: a key seen in the last 10 minutes
fails the request with -1005 and nothing is delivered again. The SMS API has no such key.

Per recipient (E.164) it answers with a behaviour: "accepted", "not_kakao_user" (Kakao
3019), "blocked" (3020), "opted_out" (-3301 / -6001), "invalid_number" (-4019 / -2019), or
misbehaves: "slow" (answers after `slow_s`), "httpNNN" (that status), "garbage" (200 with
HTML). Assumptions where NHN documents no HTTP status: validation errors are HTTP 200 with
`isSuccessful: false` and the code; an SMS request with a wrong secret gets HTTP 401.

`requests` holds every request, `deliveries` every message that reached a phone (once).
Both "List messages" APIs answer from what was taken: SMS by ``senderGroupingKey`` within a
request-date range, Alimtalk (``GET /alimtalk/v2.3/appkeys/{appkey}/messages``) by
``recipientNo``/``recipientGroupingKey`` within ``startRequestDate``/``endRequestDate``
(``yyyy-MM-dd HH:mm``, KST); `lookups` and `alimtalk_lookups` keep their queries, and
`lookup_fails` makes both answer 500.
`report_body(...)` and `unsubscribe_body(...)` build webhook bodies in the documented shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

#: What the server does for one recipient.
BEHAVIOURS = ("accepted", "not_kakao_user", "blocked", "opted_out", "invalid_number", "slow", "garbage")
_HTTP_STATUS = re.compile(r"http([1-5]\d\d)")
_ALIMTALK_PATH = re.compile(r"/alimtalk/v2\.3/appkeys/(?P<appkey>[^/]+)/messages")
_SMS_PATH = re.compile(r"/sms/v3\.0/appKeys/(?P<appkey>[^/]+)/sender/(?P<kind>sms|mms)")
_MOBILE = re.compile(r"01\d{8,9}")
_SENDER = re.compile(r"0\d{8,10}|1\d{7}")
_REQUEST_DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d")
_TOP_KEYS = frozenset(
    {
        "senderKey",
        "templateCode",
        "requestDate",
        "senderGroupingKey",
        "createUser",
        "recipientList",
        "messageOption",
        "statsId",
    }
)
_RECIPIENT_KEYS = frozenset(
    {"recipientNo", "templateParameter", "resendParameter", "buttons", "quickReplies", "recipientGroupingKey"}
)
_BUTTON_KEYS = frozenset(
    {"ordering", "chatExtra", "chatEvent", "relayId", "oneClickId", "productId", "target", "telNumber"}
)
_RESEND_KEYS = frozenset({"isResend", "resendType", "resendTitle", "resendContent", "resendSendNo"})
_SMS_KEYS = frozenset(
    {
        "templateId",
        "body",
        "sendNo",
        "requestDate",
        "senderGroupingKey",
        "recipientList",
        "userId",
        "statsId",
        "originCode",
        "useConversion",
    }
)
_MMS_KEYS = (_SMS_KEYS - {"useConversion"}) | {"title", "attachFileIdList"}


def euckr_bytes(text: str) -> int | None:
    """Bytes of `text` in EUC-KR as a carrier counts them; None when it cannot be carried."""
    size = 0
    for ch in text:
        try:
            encoded = ch.encode("euc_kr")
        except UnicodeEncodeError:
            return None
        if len(encoded) > 2:  # an 8-byte jamo composition: a syllable outside KS X 1001
            return None
        size += len(encoded)
    return size


def e164(national: str) -> str:
    return "+82" + national[1:] if national.startswith("0") else "+82" + national


@dataclass(frozen=True, slots=True)
class Template:
    """An approved Alimtalk template: its #{variables} and how many buttons it has."""

    variables: tuple[str, ...] = ()
    buttons: int = 0


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    path: str
    headers: Mapping[str, str]
    raw: bytes
    body: Any
    code: int  # resultCode answered in the header (0 when accepted; -1 for misbehaviours)
    error: str  # why the request was refused, "" when it was valid


@dataclass(frozen=True, slots=True)
class FakeDelivery:
    channel: str  # "alimtalk", "sms", "lms", "sms-fallback", "lms-fallback"
    to: str  # E.164
    request_id: str
    recipient_seq: int
    text: str = ""  # SMS/LMS/fallback body ("" for Alimtalk)
    idempotency_key: str = ""  # Alimtalk: X-NC-API-IDEMPOTENCY-KEY; SMS: senderGroupingKey
    at: float = field(default_factory=time.time)  # wall time the message reached the phone


class _Invalid(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _need(condition: bool, code: int, message: str) -> None:
    if not condition:
        raise _Invalid(code, message)


@dataclass
class FakeNhnServer:
    """A strict NHN Cloud for one Alimtalk app and one SMS app (see the module docstring)."""

    alimtalk_appkey: str = "at-appkey"
    alimtalk_secret: str = "at-secret"
    sender_key: str = "k" * 40
    sms_appkey: str = "sms-appkey"
    sms_secret: str = "sms-secret"
    registered_senders: frozenset[str] = frozenset({"0221331234", "15881234"})
    templates: Mapping[str, Template] = field(default_factory=dict)  # empty: any template code accepted
    behaviours: dict[str, str] = field(default_factory=dict)
    default: str = "accepted"
    slow_s: float = 5.0
    idempotency_window_s: float = 600.0
    webhook_signature: str = "hook-signature"
    lookup_fails: bool = False  # "List messages" answers 500

    def __post_init__(self) -> None:
        for behaviour in [self.default, *self.behaviours.values()]:
            self._check(behaviour)
        self.requests: list[ReceivedRequest] = []
        self.deliveries: list[FakeDelivery] = []
        self.lookups: list[dict[str, str]] = []  # SMS "List messages" queries
        self.alimtalk_lookups: list[dict[str, str]] = []  # Alimtalk "List messages" queries
        self.alimtalk_messages: list[dict[str, Any]] = []  # what the Alimtalk list answers from
        self.base_url = ""
        self._keys: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    @staticmethod
    def _check(behaviour: str) -> None:
        if behaviour not in BEHAVIOURS and not _HTTP_STATUS.fullmatch(behaviour):
            raise ValueError(f"unknown behaviour {behaviour!r}")

    def behave(self, number: str, behaviour: str) -> None:
        self._check(behaviour)
        self.behaviours[number] = behaviour

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeNhnServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ webhooks

    def report_headers(self, signature: str | None = None) -> dict[str, str]:
        return {
            "Content-Type": "application/json;charset=UTF-8",
            "X-Toast-Webhook-Signature": self.webhook_signature if signature is None else signature,
        }

    def report_body(
        self,
        deliveries: Sequence[tuple[str, int, str]],
        *,
        result_code: str = "1000",
        receive_date: str = "2024-05-01 10:00:05",
        resend_status: str | None = None,
        resend_result_code: str | None = None,
    ) -> bytes:
        """A KakaoTalk Bizmessage MESSAGE_RESULT_UPDATE webhook for (requestId, recipientSeq, E.164)."""
        hooks: list[dict[str, Any]] = []
        for request_id, seq, to in deliveries:
            hook: dict[str, Any] = {
                "kakaoMessageType": "ALIMTALK_NORMAL",
                "requestId": request_id,
                "recipientSeq": seq,
                "requestDate": "2024-05-01 10:00:00",
                "createDate": "2024-05-01 10:00:01",
                "receiveDate": receive_date,
                "recipientNo": "0" + to[3:],
                "resultCode": result_code,
                "senderGroupingKey": "",
                "recipientGroupingKey": "",
                "_links": {"self": {"href": f"{self.base_url}/alimtalk/v2.3/appkeys/x/messages/{request_id}/{seq}"}},
                "hookId": f"hook-{next(self._ids)}",
            }
            if resend_status is not None:
                hook["resendStatus"] = resend_status
                hook["resendResultCode"] = resend_result_code
            hooks.append(hook)
        return self._envelope("KakaoTalk Bizmessage", self.alimtalk_appkey, "MESSAGE_RESULT_UPDATE", hooks)

    def unsubscribe_body(self, numbers: Sequence[str]) -> bytes:
        """An SMS UNSUBSCRIBE webhook for E.164 numbers that called the 080 opt-out line."""
        hooks = [
            {
                "hookId": f"hook-{next(self._ids)}",
                "recipientNo": "0" + n[3:],
                "unsubscribeNo": "0801234567",
                "enterpriseName": "City",
                "createdDateTime": "2024-05-01T10:00:00.000+09:00",
            }
            for n in numbers
        ]
        return self._envelope("SMS", self.sms_appkey, "UNSUBSCRIBE", hooks)

    def _envelope(self, product: str, appkey: str, event: str, hooks: list[dict[str, Any]]) -> bytes:
        envelope = {
            "hooksId": f"hooks-{next(self._ids)}",
            "webhookConfigId": "cfg",
            "productName": product,
            "appKey": appkey,
            "event": event,
            "hooks": hooks,
        }
        return json.dumps(envelope, ensure_ascii=False).encode()

    # ------------------------------------------------------------------ handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body = None
        path = request.rel_url.raw_path
        record = {"path": path, "headers": dict(request.headers), "raw": raw, "body": body}
        at = _ALIMTALK_PATH.fullmatch(path)
        sms = _SMS_PATH.fullmatch(path)
        if request.method == "GET" and sms is not None:
            return self._list_sms(request, sms["appkey"], sms["kind"])
        if request.method == "GET" and at is not None:
            return self._list_alimtalk(request, at["appkey"])
        try:
            _need(request.method == "POST" and (at is not None or sms is not None), -9998, "Not exist API")
            _need(request.content_type == "application/json", -9996, "Only application/json Content-type")
            if at is not None:
                _need(at["appkey"] == self.alimtalk_appkey, -1000, "Invalid appKey.")
                _need(request.headers.get("X-Secret-Key") == self.alimtalk_secret, -1001, "Invalid secretKey.")
                return await self._alimtalk(request, body, record)
            assert sms is not None
            _need(sms["appkey"] == self.sms_appkey, -1000, "Invalid appKey.")
            if request.headers.get("X-Secret-Key") != self.sms_secret:
                self.requests.append(ReceivedRequest(**record, code=-1, error="wrong X-Secret-Key"))
                return web.json_response(_header(False, -1001, "Invalid secretKey."), status=401)
            return await self._sms(request, sms["kind"], body, record)
        except _Invalid as exc:
            self.requests.append(ReceivedRequest(**record, code=exc.code, error=str(exc)))
            status = 404 if exc.code == -9998 else 200
            return web.json_response(_header(False, exc.code, str(exc)), status=status)

    async def _misbehave(
        self, request: web.Request, behaviour: str, record: dict[str, Any]
    ) -> web.StreamResponse | None:
        """The answer of a misbehaving server, or None to answer normally (after `slow_s` if slow)."""
        if behaviour in {"slow", "garbage"} or _HTTP_STATUS.fullmatch(behaviour):
            # Recorded before answering: a slow answer may never be read by the client.
            self.requests.append(ReceivedRequest(**record, code=-1, error=""))
        if behaviour == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.slow_s)
            return None
        if behaviour == "garbage":
            return web.Response(status=200, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        status = _HTTP_STATUS.fullmatch(behaviour)
        if status is not None:
            return web.Response(status=int(status.group(1)), text="configured failure")
        return None

    def _refuse(self, record: dict[str, Any], code: int, message: str) -> web.StreamResponse:
        """A documented refusal of a valid request (duplicate key, opted-out recipient)."""
        self.requests.append(ReceivedRequest(**record, code=code, error=""))
        return web.json_response(_header(False, code, message))

    # ------------------------------------------------------------------ Alimtalk

    def _validate_alimtalk(self, body: Any) -> None:
        _need(isinstance(body, dict), -3002, "Field is not valid.")
        _need(not set(body) - _TOP_KEYS, -3002, f"unknown field(s) {sorted(set(body) - _TOP_KEYS)}")
        _need(body.get("senderKey") == self.sender_key, -2017, "Not exist plus friend.")
        code = body.get("templateCode")
        _need(isinstance(code, str) and 0 < len(code) <= 20, -2001, "The 'templateCode' must not be blank.")
        _need(not self.templates or code in self.templates, -3003, "Template does not exist.")
        date = body.get("requestDate")
        _need(
            date is None or (isinstance(date, str) and bool(_REQUEST_DATE.fullmatch(date))),
            -2027,
            "The 'requestDate' has invalid format.",
        )
        recipients = body.get("recipientList")
        _need(isinstance(recipients, list) and 0 < len(recipients) <= 1000, -4011, "Not found recipientList.")
        template = self.templates.get(code) if self.templates else None
        for r in recipients:
            self._validate_recipient(r, template)

    def _validate_recipient(self, r: Any, template: Template | None) -> None:
        _need(isinstance(r, dict) and not set(r) - _RECIPIENT_KEYS, -3002, "recipient has unknown fields")
        number = r.get("recipientNo")
        _need(
            isinstance(number, str) and len(number) <= 15 and bool(_MOBILE.fullmatch(number)),
            -4019,
            "Invalid recipient number.",
        )
        params = r.get("templateParameter", {})
        _need(
            isinstance(params, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()),
            -3004,
            "Please check template parameter.",
        )
        if template is not None:
            _need(set(params) == set(template.variables), -3049, "The template parameter is not matched to template.")
        buttons = r.get("buttons", [])
        _need(isinstance(buttons, list), -2018, "Button parameter is invalid.")
        orderings = []
        for b in buttons:
            _need(isinstance(b, dict) and not set(b) - _BUTTON_KEYS, -2018, "Button parameter is invalid.")
            _need(
                isinstance(b.get("ordering"), int) and not isinstance(b.get("ordering"), bool),
                -2018,
                "Button parameter is invalid.",
            )
            orderings.append(b["ordering"])
        _need(orderings == list(range(1, len(orderings) + 1)), -2018, "Button parameter is invalid.")
        if template is not None:
            _need(len(orderings) <= template.buttons, -3033, "The button or quickReply is not exist in template.")
        grouping = r.get("recipientGroupingKey", "")
        _need(isinstance(grouping, str) and len(grouping) <= 100, -2000, "The 'recipientGroupingKey' is too long.")
        self._validate_resend(r.get("resendParameter"))

    def _validate_resend(self, resend: Any) -> None:
        if resend is None:
            return
        bad = "Resend Message is invalid."
        _need(isinstance(resend, dict) and not set(resend) - _RESEND_KEYS, -4200, bad)
        _need(isinstance(resend.get("isResend"), bool), -4200, bad)
        if not resend["isResend"]:
            _need(set(resend) == {"isResend"}, -4200, "resend fields without isResend")
            return
        kind = resend.get("resendType")
        _need(kind in ("SMS", "LMS"), -4200, bad)
        content = resend.get("resendContent")
        size = euckr_bytes(content) if isinstance(content, str) and content else None
        # NHN would truncate an over-long fallback; this fake refuses it so a test notices.
        limit = 90 if kind == "SMS" else 2000
        _need(size is not None and size <= limit, -4200, "resendContent too long or not EUC-KR")
        title = resend.get("resendTitle")
        if title is not None:
            _need(
                kind == "LMS" and isinstance(title, str) and (euckr_bytes(title) or 99) <= 40,
                -4200,
                "resendTitle is only for LMS, <= 40 bytes",
            )
        send_no = resend.get("resendSendNo")
        _need(isinstance(send_no, str) and send_no in self.registered_senders, -1003, "Invalid Sms Sendno")

    async def _alimtalk(self, request: web.Request, body: Any, record: dict[str, Any]) -> web.StreamResponse:
        self._validate_alimtalk(body)
        key = request.headers.get("X-NC-API-IDEMPOTENCY-KEY", "")
        now = time.monotonic()
        if key and now - self._keys.get(key, -1e9) < self.idempotency_window_s:
            duplicate = "The same 'X-NC-API-IDEMPOTENCY-KEY' was used within the last 10 minute."
            return self._refuse(record, -1005, duplicate)
        recipient = body["recipientList"][0]
        to = e164(recipient["recipientNo"])
        behaviour = self.behaviours.get(to, self.default)
        # An outage answer (5xx, garbage) models a request that never reached NHN's processing:
        # it does not consume the idempotency key. A slow answer is being processed: it does.
        if key and (behaviour == "slow" or (behaviour not in {"garbage"} and not _HTTP_STATUS.fullmatch(behaviour))):
            self._keys[key] = now
        misbehaviour = await self._misbehave(request, behaviour, record)
        if misbehaviour is not None:
            return misbehaviour
        if any(self.behaviours.get(e164(r["recipientNo"]), self.default) == "opted_out" for r in body["recipientList"]):
            return self._refuse(record, -3301, "The unsubscribed recipient are found.")
        request_id = f"2024050110000{next(self._ids):04d}at"
        request_date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 9 * 3600))
        results: list[dict[str, Any]] = []
        success = True
        header_code = 0
        for seq, r in enumerate(body["recipientList"], start=1):
            rto = e164(r["recipientNo"])
            rb = self.behaviours.get(rto, self.default)
            code, message = {
                "not_kakao_user": (3019, "not a KakaoTalk user"),
                "blocked": (3020, "Alimtalk refused"),
                "invalid_number": (-4019, "Invalid recipient number."),
            }.get(rb, (0, "SUCCESS"))
            results.append(
                {
                    "recipientSeq": seq,
                    "recipientNo": r["recipientNo"],
                    "resultCode": code,
                    "resultMessage": message,
                    "recipientGroupingKey": r.get("recipientGroupingKey"),
                }
            )
            resend = r.get("resendParameter") or {}
            if code in (0, 3019, 3020):  # taken by NHN: listed from now on
                fallback = code != 0 and bool(resend.get("isResend"))
                self.alimtalk_messages.append(
                    {
                        "requestId": request_id,
                        "recipientSeq": seq,
                        "recipientNo": r["recipientNo"],
                        "requestDate": request_date,
                        "messageStatus": "COMPLETED" if code == 0 else "FAILED",
                        "resultCode": "1000" if code == 0 else str(code),
                        "resendStatus": "RSC04" if fallback else "RSC01",
                        "senderGroupingKey": body.get("senderGroupingKey"),
                        "recipientGroupingKey": r.get("recipientGroupingKey"),
                    }
                )
            if code == 0:
                self.deliveries.append(FakeDelivery("alimtalk", rto, request_id, seq, idempotency_key=key))
            elif code in (3019, 3020) and resend.get("isResend"):
                channel = f"{resend['resendType'].lower()}-fallback"
                self.deliveries.append(FakeDelivery(channel, rto, request_id, seq, resend["resendContent"], key))
        if all(r["resultCode"] not in (0, 3019, 3020) for r in results):
            success, header_code = False, -1031
        if behaviour != "slow":
            self.requests.append(ReceivedRequest(**record, code=header_code, error=""))
        answer = _header(success, header_code, "SUCCESS" if success else "All of receivers are failed to send.")
        answer["message"] = {
            "requestId": request_id,
            "senderGroupingKey": body.get("senderGroupingKey"),
            "sendResults": results,
        }
        return web.json_response(answer)

    # ------------------------------------------------------------------ SMS

    def _validate_sms(self, kind: str, body: Any) -> None:
        _need(isinstance(body, dict), -9997, "Invalid API parameters.")
        allowed = _SMS_KEYS if kind == "sms" else _MMS_KEYS
        _need(not set(body) - allowed, -9997, f"unknown field(s) {sorted(set(body) - allowed)}")
        text = body.get("body")
        _need(isinstance(text, str) and bool(text), -2014, "The recipient can not be empty.")
        if kind == "mms":
            title = body.get("title")
            _need(isinstance(title, str) and bool(title), -2014, "The recipient can not be empty.")
            _need(euckr_bytes(title) is not None, -2023, "Unacceptable characters in title and body")
            _need((euckr_bytes(title) or 0) <= 40, -2015, "Title or Body exceed maximum byte.")
        size = euckr_bytes(text)
        _need(size is not None, -2023, "Unacceptable characters in title and body")
        _need((size or 0) <= (90 if kind == "sms" else 2000), -2015, "Title or Body exceed maximum byte.")
        send_no = body.get("sendNo")
        _need(
            isinstance(send_no, str) and len(send_no) <= 13 and bool(_SENDER.fullmatch(send_no)),
            -2312,
            "Not regist sendno.",
        )
        _need(send_no in self.registered_senders, -2312, "Not regist sendno.")
        for key in ("senderGroupingKey",):
            _need(isinstance(body.get(key, ""), str) and len(body.get(key, "")) <= 100, -9997, f"{key} too long")
        recipients = body.get("recipientList")
        _need(isinstance(recipients, list) and bool(recipients), -2001, "RecipientList can not be null.")
        _need(len(recipients) <= 1000, -2016, "The max recipient size is 1000.")
        for r in recipients:
            _need(
                isinstance(r, dict)
                and not set(r)
                - {
                    "recipientNo",
                    "countryCode",
                    "internationalRecipientNo",
                    "templateParameter",
                    "recipientGroupingKey",
                },
                -9997,
                "recipient has unknown fields",
            )
            number = r.get("recipientNo")
            _need(isinstance(number, str) and bool(number), -2018, "RecipientNo can not be empty.")
            _need(len(number) <= 20 and bool(_MOBILE.fullmatch(number)), -2019, "RecipientNo is invalid.")

    async def _sms(self, request: web.Request, kind: str, body: Any, record: dict[str, Any]) -> web.StreamResponse:
        self._validate_sms(kind, body)
        to = e164(body["recipientList"][0]["recipientNo"])
        behaviour = self.behaviours.get(to, self.default)
        misbehaviour = await self._misbehave(request, behaviour, record)
        if misbehaviour is not None:
            return misbehaviour
        request_id = f"2024050110000{next(self._ids):04d}sm"
        results = []
        for seq, r in enumerate(body["recipientList"], start=1):
            rto = e164(r["recipientNo"])
            code, message = {
                "opted_out": (-6001, "Recipient Number is refused."),
                "invalid_number": (-2019, "RecipientNo is invalid."),
            }.get(self.behaviours.get(rto, self.default), (0, "SUCCESS"))
            results.append(
                {
                    "recipientNo": r["recipientNo"],
                    "resultCode": code,
                    "resultMessage": message,
                    "recipientSeq": seq,
                    "recipientGroupingKey": r.get("recipientGroupingKey"),
                }
            )
            if code == 0:
                channel = "sms" if kind == "sms" else "lms"
                self.deliveries.append(
                    FakeDelivery(channel, rto, request_id, seq, body["body"], str(body.get("senderGroupingKey") or ""))
                )
        if behaviour != "slow":
            self.requests.append(ReceivedRequest(**record, code=0, error=""))
        answer = _header(True, 0, "SUCCESS")
        answer["body"] = {
            "data": {
                "requestId": request_id,
                "statusCode": "2",
                "senderGroupingKey": body.get("senderGroupingKey"),
                "sendResultList": results,
            }
        }
        return web.json_response(answer)

    def _list_sms(self, request: web.Request, appkey: str, kind: str) -> web.Response:
        """ "List messages" (GET .../sender/sms|mms): by senderGroupingKey within a request-date range.

        Like NHN it needs a requestId or both request dates; it lists what reached a phone."""
        self.lookups.append(dict(request.query))
        if appkey != self.sms_appkey or request.headers.get("X-Secret-Key") != self.sms_secret:
            return web.json_response(_header(False, -1001, "Invalid secretKey."), status=401)
        if self.lookup_fails:
            return web.json_response(_header(False, -9999, "system error"), status=500)
        q = request.query
        dates = [q.get("startRequestDate", ""), q.get("endRequestDate", "")]
        if not q.get("requestId") and not all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", d) for d in dates):
            return web.json_response(_header(False, -9996, "startRequestDate and endRequestDate are required"))
        channels = {"sms"} if kind == "sms" else {"lms"}
        key = q.get("senderGroupingKey")
        found = [
            {
                "requestId": d.request_id,
                "recipientSeq": d.recipient_seq,
                "recipientNo": "0" + d.to[3:],
                "senderGroupingKey": d.idempotency_key,
                "msgStatus": "3",
            }
            for d in self.deliveries
            if d.channel in channels and (key is None or d.idempotency_key == key)
        ]
        answer = _header(True, 0, "SUCCESS")
        answer["body"] = {"pageNum": 1, "pageSize": len(found), "totalCount": len(found), "data": found}
        return web.json_response(answer)

    def _list_alimtalk(self, request: web.Request, appkey: str) -> web.Response:
        """Alimtalk "List messages": a requestId or both request dates (minutes, KST) are required;
        recipientNo and recipientGroupingKey filter. Lists what NHN took (delivered or failed)."""
        self.alimtalk_lookups.append(dict(request.query))
        if appkey != self.alimtalk_appkey or request.headers.get("X-Secret-Key") != self.alimtalk_secret:
            return web.json_response(_header(False, -1001, "Invalid secretKey."), status=401)
        if self.lookup_fails:
            return web.json_response(_header(False, -9999, "system error"), status=500)
        q = request.query
        start, end = q.get("startRequestDate", ""), q.get("endRequestDate", "")
        dated = all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", d) for d in (start, end))
        if not q.get("requestId") and not dated:
            return web.json_response(_header(False, -2027, "startRequestDate and endRequestDate are required"))
        found = [
            m
            for m in self.alimtalk_messages
            if (not q.get("requestId") or m["requestId"] == q["requestId"])
            and (not dated or start <= m["requestDate"][:16] <= end)
            and all(m[k] == q[k] for k in ("recipientNo", "recipientGroupingKey") if k in q)
        ]
        answer = _header(True, 0, "SUCCESS")
        answer["messageSearchResultResponse"] = {"messages": found, "totalCount": len(found)}
        return web.json_response(answer)


def _header(ok: bool, code: int, message: str) -> dict[str, Any]:
    return {"header": {"isSuccessful": ok, "resultCode": code, "resultMessage": message}}
