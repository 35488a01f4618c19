"""Fuzzing the webhook edges: inbound SMS, 080 unsubscribe and delivery reports.

Pure parsers first (many examples, cheap): they return or raise their documented error, nothing
else. Then the same random input over real HTTP (a gateway's intake on a private Redis, aiohttp on
127.0.0.1, a plain http.client client): 200/400/401/413 with a JSON reason, never a 500.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from adapters.nhn_alimtalk import ReportRejected
from adapters.nhn_alimtalk import parse_report as nhn_parse_report
from adapters.nhn_sms import parse_unsubscribe
from gateway.app.gateway import Gateway, Overrides
from gateway.app.httpapps import make_app
from gateway.domain.numbers import NumberPlan
from gateway.errors import BadRequest, Unauthorized
from gateway.inbox import staffapi, webhooks
from gateway.inbox.intake import InboundRejected, inbound_from_fields
from gateway.inbox.webhooks import MAX_SMS_BODY, InboundProvider, parse_body, verify
from gateway.infra.config import load_config
from gateway.infra.crypto import Sealer, sign
from gateway.infra.http import HttpServer
from gateway.messaging.reports import ReportIntake, build_parsers
from gateway.sim.redisproc import RedisProcess
from tests.conftest import RULES

pytestmark = pytest.mark.fuzz

T = TypeVar("T")
SECRET = "inbound-secret"
PUBLIC_URL = "http://127.0.0.1:8080/webhooks/sms/sandbox-sms"
PROVIDER = InboundProvider("sandbox-sms", SECRET, PUBLIC_URL)
NHN_SIG = "nhn-webhook-signature"
SANDBOX_SIG = "sandbox-report-secret"
PLAN = NumberPlan()

# ------------------------------------------------------------------------------------ strategies

CHARSETS = [
    "utf-8",
    "UTF-8",
    "euc-kr",
    "EUC-KR",
    "cp949",
    "ks_c_5601-1987",
    "utf-16",
    "latin-1",
    "ascii",
    "idna",
    "punycode",
    "rot13",
    "base64",
    "zlib",
    "hex",
    "unicode_escape",
    "raw_unicode_escape",
    "utf-7",
    "nonsense",
    "",
    '"utf-8"',
    "utf-8\x00",
]
MEDIA = [
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "APPLICATION/JSON",
    "",
    "multipart/form-data",
]
FIELDS = ["message_id", "from", "to", "text", "received_at", "extra"]
TEXTS = st.one_of(st.text(max_size=60), st.sampled_from(["수신거부", "STOP", "가로등이 꺼졌어요", "똠방각하", "", " "]))
NUMBERS = st.one_of(
    st.sampled_from(
        [
            "010-1234-5678",
            "01012345678",
            "+82 10 1234 5678",
            "031-900-2000",
            "0319002000",
            "031-900-0119",
            "+8215881234",
            "112",
            "abc",
            "",
            "²³",
        ]
    ),
    st.text(alphabet="0123456789+- ()", max_size=20),
)
STAMPS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e300", "-1e20", "0", "", "1795339616", "1e15", "NaN", "1_000", " 12 "]),
    st.floats(allow_nan=True).map(str),
    st.text(max_size=10),
)


@st.composite
def content_types(draw: st.DrawFn) -> str:
    media = draw(st.sampled_from(MEDIA))
    if draw(st.booleans()):
        return media + "; charset=" + draw(st.sampled_from(CHARSETS))
    return media + draw(st.sampled_from(["", ";", "; charset", "; charset=", "; boundary=x"]))


@st.composite
def fields(draw: st.DrawFn, stamps: st.SearchStrategy[str] = STAMPS) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=len(FIELDS)))
    out: dict[str, Any] = {}
    for key in keys:
        if key in ("from", "to"):
            out[key] = draw(NUMBERS)
        elif key == "received_at":
            out[key] = draw(stamps)
        elif key == "message_id":
            out[key] = draw(st.one_of(st.text(max_size=200), st.uuids().map(str)))
        else:
            out[key] = draw(
                st.one_of(
                    TEXTS, st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=3), st.floats()
                )
            )
    return out


@st.composite
def bodies(draw: st.DrawFn, stamps: st.SearchStrategy[str] = STAMPS) -> tuple[str, bytes]:
    """(Content-Type, body): well-formed ones in every charset, broken ones, and raw bytes."""
    kind = draw(st.sampled_from(["json", "form", "raw", "nested"]))
    charset = draw(st.sampled_from(["utf-8", "euc-kr", "cp949", "utf-16", "latin-1"]))
    data = draw(fields(stamps))
    if kind == "json":
        text = json.dumps(data, ensure_ascii=False)
        body = text.encode(charset, "replace")
        return f"application/json; charset={charset}", body
    if kind == "form":
        pairs = [(k, str(v)) for k, v in data.items()]
        body = "&".join(
            quote_from_bytes(k.encode(charset, "replace")) + "=" + quote_from_bytes(v.encode(charset, "replace"))
            for k, v in pairs
        ).encode("ascii")
        return f"application/x-www-form-urlencoded; charset={charset}", body
    if kind == "nested":
        depth = draw(st.integers(1, 8000))
        return "application/json", b"[" * depth + b"]" * draw(st.integers(0, depth))
    return draw(content_types()), draw(st.binary(max_size=400))


# ------------------------------------------------------------------------------------ pure parsers


@given(body=bodies(), content_type=st.one_of(st.none(), content_types()))
@example(body=("application/json", b"[" * 5000), content_type=None)  # regression: RecursionError -> 500
@example(
    body=("application/x-www-form-urlencoded", b"a=%FF"), content_type="application/x-www-form-urlencoded; charset=idna"
)
def test_parse_body_returns_fields_or_raises_bad_request(body: tuple[str, bytes], content_type: str | None) -> None:
    ctype, raw = body
    try:
        parsed = parse_body(content_type if content_type is not None else ctype, raw)
    except BadRequest as exc:
        assert str(exc)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


@given(
    timestamp=STAMPS,
    signature=st.one_of(st.text(max_size=70), st.just("")),
    body=st.binary(max_size=100),
    sign_it=st.booleans(),
)
@example(timestamp="nan", signature="", body=b"{}", sign_it=True)  # regression: NaN passed the replay window
def test_verify_accepts_only_a_fresh_correct_signature(
    timestamp: str, signature: str, body: bytes, sign_it: bool
) -> None:
    now = 1_795_339_616.0
    given_sig = sign(SECRET, timestamp, PUBLIC_URL, body) if sign_it else signature
    headers = {"X-Signature-Timestamp": timestamp, "X-Signature": given_sig}
    try:
        verify(PROVIDER, headers, body, now)
    except Unauthorized as exc:
        assert str(exc)
        return
    assert abs(now - float(timestamp)) <= 300  # accepted: fresh ...
    assert given_sig.strip().lower() == sign(SECRET, timestamp, PUBLIC_URL, body)  # ... and authentic


@given(data=fields())
@example(data={"message_id": "m", "from": "010-1234-5678", "to": "031-900-2000", "text": "x", "received_at": "inf"})
def test_inbound_fields_become_a_message_or_a_clear_rejection(data: dict[str, Any]) -> None:
    as_text = {k: str(v) for k, v in data.items() if v is not None}
    try:
        sms = inbound_from_fields(as_text, "sandbox-sms", PLAN, 1_795_339_616.0)
    except InboundRejected as exc:
        assert str(exc)
        return
    assert sms.sender.startswith("+") and sms.to.startswith("+")


def nhn_hooks() -> st.SearchStrategy[Any]:
    hook = st.dictionaries(
        st.sampled_from(
            [
                "requestId",
                "recipientSeq",
                "resultCode",
                "recipientNo",
                "kakaoMessageType",
                "receiveDate",
                "createDate",
                "requestDate",
                "resendStatus",
                "resendResultCode",
            ]
        ),
        st.one_of(
            st.text(max_size=30),
            st.integers(),
            st.none(),
            st.booleans(),
            st.floats(),
            st.sampled_from(
                [
                    "1000",
                    "3005",
                    "²",
                    "٣",
                    "1" * 5000,
                    "ALIMTALK",
                    "RSC04",
                    "2026-13-45 25:61:00",
                    "2026-01-02 03:04:05",
                    "0101234567",
                    "010-1234-5678",
                    "9999-12-31",
                ]
            ),
        ),
        max_size=8,
    )
    return st.one_of(hook, st.text(max_size=5), st.integers(), st.none())


@st.composite
def nhn_bodies(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    envelope: dict[str, Any] = {}
    if draw(st.booleans()):
        envelope["event"] = draw(st.sampled_from(["UNSUBSCRIBE", "MESSAGE_RESULT_UPDATE", "OTHER", 1]))
    if draw(st.booleans()):
        envelope["hooks"] = draw(st.lists(nhn_hooks(), max_size=4))
    return json.dumps(envelope).encode()


HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


ANY_TEXT = st.text(max_size=30)


def nhn_headers(values: st.SearchStrategy[str] = ANY_TEXT) -> st.SearchStrategy[dict[str, str]]:
    return st.one_of(
        st.just({"X-Toast-Webhook-Signature": NHN_SIG}),
        st.just({"x-toast-webhook-signature": NHN_SIG}),
        st.dictionaries(st.sampled_from(["X-Toast-Webhook-Signature", "Other"]), values),
    )


@given(headers=nhn_headers(), body=nhn_bodies())
@example(headers={"X-Toast-Webhook-Signature": NHN_SIG}, body=b"[" * 5000)  # regression: RecursionError
@example(
    headers={"X-Toast-Webhook-Signature": NHN_SIG},  # regression: int("²") raised a bare ValueError
    body=b'{"event": "MESSAGE_RESULT_UPDATE", "hooks": [{"requestId": "r", "recipientSeq": 1, '
    b'"resultCode": "\\u00b2", "receiveDate": "2026-01-02 03:04:05"}]}',
)
def test_nhn_webhook_parsers_raise_only_report_rejected(headers: dict[str, str], body: bytes) -> None:
    for parse in (lambda: parse_unsubscribe(headers, body, NHN_SIG), lambda: nhn_parse_report(headers, body, NHN_SIG)):
        try:
            result = parse()
        except ReportRejected as exc:
            assert str(exc)
            continue
        assert isinstance(result, list)


@given(
    headers=st.one_of(
        st.just({"X-Sandbox-Signature": SANDBOX_SIG}),
        st.dictionaries(st.just("X-Sandbox-Signature"), st.text(max_size=20)),
    ),
    body=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda reports: json.dumps({"reports": reports}).encode(),
            st.lists(
                st.one_of(
                    st.dictionaries(
                        st.sampled_from(["reference", "status", "at", "detail", "fallback_used"]),
                        st.one_of(
                            st.text(max_size=10),
                            st.integers(),
                            st.floats(),
                            st.none(),
                            st.sampled_from(["sent", "delivered"]),
                        ),
                    ),
                    st.integers(),
                ),
                max_size=3,
            ),
        ),
    ),
)
def test_sandbox_report_parser_raises_only_report_rejected(headers: dict[str, str], body: bytes) -> None:
    parse = build_parsers({"sandbox": {"kind": "sandbox", "signature_env": "S"}}, {"S": SANDBOX_SIG})["sandbox"]
    try:
        assert isinstance(parse(headers, body), list)
    except ReportRejected as exc:
        assert str(exc)


# ------------------------------------------------------------------------------------ real HTTP


class _Sink:
    def decision(self, record: Any) -> None:
        pass


class Server:
    """A gateway's webhook edge on its own event loop thread (hypothesis drives it synchronously)."""

    def __init__(self, redis_url: str, records_url: str) -> None:
        self.records_url = records_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-http", daemon=True)
        self.thread.start()
        self.gateway, self.http = self.call(self._start(redis_url))
        self.port = self.http.port

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _start(self, redis_url: str) -> tuple[Gateway, HttpServer]:
        env = {
            "GATEWAY_NUMBER_KEY": "test-number-key-0123456789",
            "GATEWAY_DATA_KEY": Sealer.new_key_spec(),
            "GATEWAY_INBOUND_SECRET": SECRET,
            "GATEWAY_RECORDS_URL": self.records_url,  # the staff accounts (none: every token refused)
            "GATEWAY_AMI_SECRET": "x",
            "GATEWAY_WEBHOOK_SECRET": "w",
            "NHN_SIG": NHN_SIG,
            "SANDBOX_SIG": SANDBOX_SIG,
        }
        gateway = Gateway(
            load_config(),
            _Sink(),
            environ=env,
            overrides=Overrides(redis_url=redis_url, rules_dir=RULES, queue_namespace="t-fuzz"),
        )
        reports = ReportIntake(
            build_parsers(
                {
                    "nhn": {"kind": "nhn", "signature_env": "NHN_SIG"},
                    "sandbox": {"kind": "sandbox", "signature_env": "SANDBOX_SIG"},
                },
                env,
            ),
            gateway.store,
        )

        def routes(app: Any) -> None:
            webhooks.add_routes(
                app,
                gateway.intake,
                gateway.inbound,
                plan=PLAN,
                unsubscribe={"nhn": lambda h, b: parse_unsubscribe(h, b, NHN_SIG)},
            )
            staffapi.add_routes(
                app,
                gateway.intake,
                directory=gateway.staff_directory,
                access=gateway.access_log,
                plan=PLAN,
                throttle=gateway.throttle,
            )

        http = HttpServer(make_app(gateway.health, reports, routes), "127.0.0.1", 0)
        await http.start()
        return gateway, http

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw

    def close(self) -> None:
        self.call(self.http.stop())
        self.call(self.gateway.stop(drain_timeout=2))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(redis_server.url, f"sqlite:///{tmp_path_factory.mktemp('fuzz-records') / 'records.sqlite3'}")
    yield s
    s.close()


@given(body=bodies(STAMPS), signed=st.booleans(), stamp=st.one_of(st.none(), STAMPS), oversize=st.booleans())
@example(body=("application/json", b"[" * 5000), signed=True, stamp=None, oversize=False)
@example(body=("application/json; charset=utf-8\x00", b""), signed=False, stamp=None, oversize=False)
def test_inbound_sms_over_http_is_never_a_server_error(
    server: Server, body: tuple[str, bytes], signed: bool, stamp: str | None, oversize: bool
) -> None:
    ctype, raw = body
    assume(stamp is None or (stamp.isascii() and stamp.isprintable()))  # what an HTTP header can carry
    if oversize:
        raw = raw + b" " * (MAX_SMS_BODY + 1 - len(raw))
    timestamp = str(int(time.time())) if stamp is None else stamp
    headers = {
        "Content-Type": ctype,
        "X-Signature-Timestamp": timestamp,
        "X-Signature": sign(SECRET, timestamp, PUBLIC_URL, raw) if signed else "0" * 64,
    }
    status, answer = server.post("/webhooks/sms/sandbox-sms", raw, headers)
    assert status in (200, 400, 401, 413), (status, answer)
    if any(ord(c) < 32 for c in ctype):
        # aiohttp's HTTP parser refuses a control character in a header before any handler runs.
        assert status == 400
        return
    assert isinstance(answer, dict)
    if status == 200:
        assert answer["status"] in ("accepted", "duplicate") and answer["queue"]
    else:
        assert answer["error"]
    if oversize:
        assert status == 413
    elif not signed:
        assert status == 401


# Found by this suite: "inf", "nan", "1e15" passed float() and crashed routing's calendar (HTTP 500).
@pytest.mark.parametrize("received_at", ["inf", "nan", "1e15", "-1e12"])
def test_inbound_received_at_out_of_range_is_a_400(server: Server, received_at: str) -> None:
    raw = json.dumps(
        {
            "message_id": f"fuzz-{received_at}",
            "from": "010-1234-5678",
            "to": "031-900-2000",
            "text": "x",
            "received_at": received_at,
        }
    ).encode()
    timestamp = str(int(time.time()))
    status, answer = server.post(
        "/webhooks/sms/sandbox-sms",
        raw,
        {
            "Content-Type": "application/json",
            "X-Signature-Timestamp": timestamp,
            "X-Signature": sign(SECRET, timestamp, PUBLIC_URL, raw),
        },
    )
    assert status == 400, (status, answer)


@given(headers=nhn_headers(HEADER_TEXT), body=nhn_bodies(), route=st.sampled_from(["unsubscribe", "report"]))
@example(headers={"X-Toast-Webhook-Signature": NHN_SIG}, body=b"[" * 5000, route="unsubscribe")
@example(headers={"X-Toast-Webhook-Signature": NHN_SIG}, body=b"[" * 5000, route="report")
@example(
    headers={"X-Toast-Webhook-Signature": NHN_SIG},
    route="report",
    body=b'{"event": "MESSAGE_RESULT_UPDATE", "hooks": [{"requestId": "r", "recipientSeq": 1, '
    b'"resultCode": "\\u00b2", "receiveDate": "2026-01-02 03:04:05"}]}',
)
def test_nhn_webhooks_over_http_are_never_a_server_error(
    server: Server, headers: dict[str, str], body: bytes, route: str
) -> None:
    status, answer = server.post(f"/webhooks/{route}/nhn", body, {"Content-Type": "application/json", **headers})
    assert status in (200, 400, 401), (status, answer)
    assert isinstance(answer, dict)
    if status != 200:
        assert answer["error"]
