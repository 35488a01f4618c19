"""Contract tests for Alimtalk and SMS/LMS providers, and NHN's webhooks.

The first groups run the SAME bodies over the sandbox twins and over the NHN adapters
talking real TCP to `FakeNhnServer` with the same per-number behaviours. The later groups
cover what only the NHN adapters meet: the wire format, deadlines, 5xx and garbage,
configuration errors, secrets in logs, and the webhook parsers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from adapters.nhn_alimtalk import NhnAlimtalk, ReportRejected, parse_report
from adapters.nhn_sms import NhnSms, parse_unsubscribe
from adapters.nhn_sms import ReportRejected as SmsReportRejected
from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.domain.models import (
    AlimtalkRequest,
    Button,
    ReportStatus,
    SendOutcome,
    SendResult,
    SmsRequest,
)
from gateway.errors import CarrierError
from gateway.ports import AlimtalkProvider, SmsProvider
from gateway.sim.fake_nhn import FakeNhnServer, Template

R = SendResult
AT_APPKEY, AT_SECRET, SENDER_KEY = "at-appkey-7f3a", "at-secret-DO-NOT-LOG-91c2", "s" * 40
SMS_APPKEY, SMS_SECRET = "sms-appkey-2b8e", "sms-secret-DO-NOT-LOG-44d0"
CITY = "+82221331234"  # registered sender (02-2133-1234)
DEADLINE_S = 1.0

ACCEPTED, NOT_KAKAO, BLOCKED, OPTED_OUT, INVALID = (f"+8210111100{i:02d}" for i in range(1, 6))
#: (E.164, fake server behaviour, expected result) shared by the twins and the fake.
ALIMTALK_CASES = [
    (ACCEPTED, "accepted", R.ACCEPTED),
    (NOT_KAKAO, "not_kakao_user", R.NOT_KAKAO_USER),
    (BLOCKED, "blocked", R.BLOCKED),
    (OPTED_OUT, "opted_out", R.OPTED_OUT),
    (INVALID, "invalid_number", R.INVALID_NUMBER),
]
SMS_CASES = [c for c in ALIMTALK_CASES if c[2] in (R.ACCEPTED, R.OPTED_OUT, R.INVALID_NUMBER)]


def fallback(kind: str = "sms", key: str = "job-1:fb") -> SmsRequest:
    if kind == "lms":
        return SmsRequest(
            idempotency_key=key,
            to="",
            sender=CITY,
            kind="lms",
            title="성북구청 안내",
            text="통화해 주셔서 감사합니다. 안내문은 홈페이지에서 보실 수 있습니다. " * 3,
        )
    return SmsRequest(idempotency_key=key, to="", sender=CITY, text="[성북구청] 통화 후 안내를 확인하세요.")


def alimtalk(to: str, key: str = "job-1", **changes: Any) -> AlimtalkRequest:
    base = AlimtalkRequest(
        idempotency_key=key,
        to=to,
        template_code="POSTCALL01",
        variables=(("부서", "민원여권과"), ("내선", "2345")),
        buttons=(Button(name="안내 보기", url="https://www.sb.go.kr/postcall"),),
    )
    return replace(base, **changes)


def sms(to: str, key: str = "sms-1", **changes: Any) -> SmsRequest:
    base = SmsRequest(idempotency_key=key, to=to, sender=CITY, text="[성북구청] 민원 처리 결과를 안내드립니다.")
    return replace(base, **changes)


def conforms_at(provider: AlimtalkProvider) -> AlimtalkProvider:
    return provider


def conforms_sms(provider: SmsProvider) -> SmsProvider:
    return provider


def fake_server(**changes: Any) -> FakeNhnServer:
    settings: dict[str, Any] = {
        "alimtalk_appkey": AT_APPKEY,
        "alimtalk_secret": AT_SECRET,
        "sender_key": SENDER_KEY,
        "sms_appkey": SMS_APPKEY,
        "sms_secret": SMS_SECRET,
        "templates": {"POSTCALL01": Template(variables=("부서", "내선"), buttons=1)},
        "behaviours": {number: behaviour for number, behaviour, _ in ALIMTALK_CASES},
        "slow_s": 5.0,
    }
    settings.update(changes)
    return FakeNhnServer(**settings)


# --------------------------------------------------------------------------- subjects


@dataclass
class AtSubject:
    provider: AlimtalkProvider
    server: FakeNhnServer | None
    deliveries: Callable[[], list[tuple[str, str]]]


@dataclass
class SmsSubject:
    provider: SmsProvider
    server: FakeNhnServer | None
    deliveries: Callable[[], list[tuple[str, str]]]


@pytest.fixture(params=["sandbox", "nhn"])
async def at_subject(request: pytest.FixtureRequest) -> AsyncIterator[AtSubject]:
    if request.param == "sandbox":
        twin = SandboxAlimtalk("sandbox", outcomes={n: r for n, _, r in ALIMTALK_CASES})
        yield AtSubject(conforms_at(twin), None, lambda: [(d.channel, d.to) for d in twin.deliveries])
        await twin.close()
        return
    server = fake_server()
    await server.start()
    adapter = NhnAlimtalk("nhn", server.base_url, AT_APPKEY, AT_SECRET, SENDER_KEY, deadline_s=DEADLINE_S)
    yield AtSubject(conforms_at(adapter), server, lambda: [(d.channel, d.to) for d in server.deliveries])
    await adapter.close()
    await server.stop()


@pytest.fixture(params=["sandbox", "nhn"])
async def sms_subject(request: pytest.FixtureRequest) -> AsyncIterator[SmsSubject]:
    if request.param == "sandbox":
        # NHN's SMS API has no idempotency key: the twin that stands for it does not honour one.
        twin = SandboxSms("sandbox", outcomes={n: r for n, _, r in SMS_CASES}, honour_keys=False)
        yield SmsSubject(conforms_sms(twin), None, lambda: [(d.channel, d.to) for d in twin.deliveries])
        await twin.close()
        return
    server = fake_server()
    await server.start()
    adapter = NhnSms("nhn-sms", server.base_url, SMS_APPKEY, SMS_SECRET, deadline_s=DEADLINE_S)
    yield SmsSubject(conforms_sms(adapter), server, lambda: [(d.channel, d.to) for d in server.deliveries])
    await adapter.close()
    await server.stop()


def assert_valid_requests(server: FakeNhnServer | None) -> None:
    if server is not None:
        assert [r.error for r in server.requests if r.error] == []


# --------------------------------------------------------------------------- Alimtalk contract


@pytest.mark.parametrize(("number", "expected"), [(n, r) for n, _, r in ALIMTALK_CASES])
async def test_alimtalk_every_result_round_trips(at_subject: AtSubject, number: str, expected: SendResult) -> None:
    outcome = await at_subject.provider.send_alimtalk(alimtalk(number))

    assert isinstance(outcome, SendOutcome)
    assert outcome.result is expected
    assert outcome.provider == at_subject.provider.name
    delivered = [("alimtalk", number)] if expected is R.ACCEPTED else []
    assert at_subject.deliveries() == delivered
    if expected in (R.ACCEPTED, R.NOT_KAKAO_USER, R.BLOCKED):
        assert outcome.reference  # a delivery report will refer to it
    assert_valid_requests(at_subject.server)


async def test_alimtalk_same_request_twice_delivers_once(at_subject: AtSubject) -> None:
    first = await at_subject.provider.send_alimtalk(alimtalk(ACCEPTED, key="job-7"))
    second = await at_subject.provider.send_alimtalk(alimtalk(ACCEPTED, key="job-7"))
    third = await at_subject.provider.send_alimtalk(alimtalk(ACCEPTED, key="job-8"))

    assert (first.result, second.result, third.result) == (R.ACCEPTED, R.ACCEPTED, R.ACCEPTED)
    assert at_subject.deliveries() == [("alimtalk", ACCEPTED), ("alimtalk", ACCEPTED)]  # job-7 once, job-8 once


@pytest.mark.parametrize("kind", ["sms", "lms"])
@pytest.mark.parametrize("number", [NOT_KAKAO, BLOCKED])
async def test_alimtalk_fallback_is_sent_by_the_provider(at_subject: AtSubject, kind: str, number: str) -> None:
    outcome = await at_subject.provider.send_alimtalk(alimtalk(number, fallback=fallback(kind)))

    # ACCEPTED, so the gateway does not send a second SMS of its own.
    assert outcome.result is R.ACCEPTED
    assert "fallback" in outcome.detail
    assert at_subject.deliveries() == [(f"{kind}-fallback", number)]
    assert_valid_requests(at_subject.server)


async def test_alimtalk_fallback_not_used_when_kakao_delivers(at_subject: AtSubject) -> None:
    outcome = await at_subject.provider.send_alimtalk(alimtalk(ACCEPTED, fallback=fallback()))

    assert outcome.result is R.ACCEPTED
    assert at_subject.deliveries() == [("alimtalk", ACCEPTED)]


# --------------------------------------------------------------------------- SMS contract


@pytest.mark.parametrize(("number", "expected"), [(n, r) for n, _, r in SMS_CASES])
@pytest.mark.parametrize("kind", ["sms", "lms"])
async def test_sms_every_result_round_trips(
    sms_subject: SmsSubject, number: str, expected: SendResult, kind: str
) -> None:
    text = "[성북구청] 민원 처리 결과를 안내드립니다. " * (1 if kind == "sms" else 4)
    outcome = await sms_subject.provider.send_sms(sms(number, kind=kind, text=text.strip()))

    assert outcome.result is expected
    assert sms_subject.deliveries() == ([(kind, number)] if expected is R.ACCEPTED else [])
    if expected is R.ACCEPTED:
        assert outcome.reference
    assert_valid_requests(sms_subject.server)


async def test_sms_provider_without_keys_sends_a_repeat_again(sms_subject: SmsSubject) -> None:
    # NHN SMS v3.0 documents no idempotency key: the outbox's dedupe claim must stop repeats.
    await sms_subject.provider.send_sms(sms(ACCEPTED, key="k-1"))
    await sms_subject.provider.send_sms(sms(ACCEPTED, key="k-1"))

    assert sms_subject.deliveries() == [("sms", ACCEPTED), ("sms", ACCEPTED)]


async def test_sms_sandbox_honouring_keys_delivers_once() -> None:
    twin = SandboxSms()
    first = await twin.send_sms(sms(ACCEPTED, key="k-1"))
    second = await twin.send_sms(sms(ACCEPTED, key="k-1"))

    assert second == first
    assert [d.to for d in twin.deliveries] == [ACCEPTED]
    assert len(twin.requests) == 2


# --------------------------------------------------------------------------- NHN wire format


@pytest.fixture
async def server() -> AsyncIterator[FakeNhnServer]:
    async with fake_server() as srv:
        yield srv


@pytest.fixture
async def at_adapter(server: FakeNhnServer) -> AsyncIterator[NhnAlimtalk]:
    adapter = NhnAlimtalk("nhn", server.base_url, AT_APPKEY, AT_SECRET, SENDER_KEY, deadline_s=DEADLINE_S)
    yield adapter
    await adapter.close()


@pytest.fixture
async def sms_adapter(server: FakeNhnServer) -> AsyncIterator[NhnSms]:
    adapter = NhnSms("nhn-sms", server.base_url, SMS_APPKEY, SMS_SECRET, deadline_s=DEADLINE_S)
    yield adapter
    await adapter.close()


async def test_alimtalk_body_on_the_wire(server: FakeNhnServer, at_adapter: NhnAlimtalk) -> None:
    outcome = await at_adapter.send_alimtalk(alimtalk("+821012345678", key="job-42", fallback=fallback("lms")))

    received = server.requests[0]
    assert received.path == f"/alimtalk/v2.3/appkeys/{AT_APPKEY}/messages"
    assert received.headers["X-Secret-Key"] == AT_SECRET
    assert received.headers["X-NC-API-IDEMPOTENCY-KEY"] == "job-42"
    assert received.headers["Content-Type"].startswith("application/json")
    assert received.body == {
        "senderKey": SENDER_KEY,
        "templateCode": "POSTCALL01",
        "recipientList": [
            {
                "recipientNo": "01012345678",
                "templateParameter": {"부서": "민원여권과", "내선": "2345"},
                "resendParameter": {
                    "isResend": True,
                    "resendType": "LMS",
                    "resendTitle": "성북구청 안내",
                    "resendContent": fallback("lms").text,
                    "resendSendNo": "0221331234",
                },
                "buttons": [{"ordering": 1}],
                "recipientGroupingKey": "job-42",
            }
        ],
    }
    request_id = server.deliveries[0].request_id
    assert outcome.reference == f"{request_id}:1"


async def test_alimtalk_without_fallback_says_no_resend(server: FakeNhnServer, at_adapter: NhnAlimtalk) -> None:
    await at_adapter.send_alimtalk(alimtalk(ACCEPTED, buttons=()))

    recipient = server.requests[0].body["recipientList"][0]
    assert recipient["resendParameter"] == {"isResend": False}
    assert "buttons" not in recipient


async def test_sms_and_lms_use_their_endpoints(server: FakeNhnServer, sms_adapter: NhnSms) -> None:
    await sms_adapter.send_sms(sms(ACCEPTED, key="a"))
    await sms_adapter.send_sms(sms(ACCEPTED, key="b", kind="lms", text="첫 줄 제목입니다\n" + "본문 " * 100))
    await sms_adapter.send_sms(sms(ACCEPTED, key="c", kind="lms", title="직접 쓴 제목", text="본문 " * 100))

    paths = [r.path for r in server.requests]
    assert paths == [f"/sms/v3.0/appKeys/{SMS_APPKEY}/sender/sms"] + [f"/sms/v3.0/appKeys/{SMS_APPKEY}/sender/mms"] * 2
    short, derived, given = (r.body for r in server.requests)
    assert short == {
        "body": "[성북구청] 민원 처리 결과를 안내드립니다.",
        "sendNo": "0221331234",
        "senderGroupingKey": "a",
        "recipientList": [{"recipientNo": "01011110001", "recipientGroupingKey": "a"}],
    }
    assert "title" not in short
    assert derived["title"] == "첫 줄 제목입니다"  # NHN requires a title: the first line
    assert given["title"] == "직접 쓴 제목"
    assert "X-NC-API-IDEMPOTENCY-KEY" not in server.requests[0].headers  # not documented for SMS
    assert_valid_requests(server)


async def test_unregistered_sender_is_rejected_with_a_clear_detail(server: FakeNhnServer, sms_adapter: NhnSms) -> None:
    outcome = await sms_adapter.send_sms(sms(ACCEPTED, sender="+82231234567"))

    assert outcome.result is R.REJECTED
    assert "-2312" in outcome.detail
    assert "not registered" in outcome.detail
    assert server.deliveries == []


async def test_unregistered_fallback_sender_is_rejected(server: FakeNhnServer, at_adapter: NhnAlimtalk) -> None:
    fb = replace(fallback(), sender="+82231234567")
    outcome = await at_adapter.send_alimtalk(alimtalk(NOT_KAKAO, fallback=fb))

    assert outcome.result is R.REJECTED
    assert outcome.detail.startswith("code -1003")


async def test_fake_refuses_an_sms_over_90_bytes(server: FakeNhnServer, sms_adapter: NhnSms) -> None:
    # Proves the fake validates: the adapter sends what it is given, the domain chooses the kind.
    outcome = await sms_adapter.send_sms(sms(ACCEPTED, text="가" * 46))

    assert outcome.result is R.REJECTED
    assert "-2015" in outcome.detail
    assert server.requests[0].error == "Title or Body exceed maximum byte."


async def test_fake_refuses_more_buttons_than_the_template_has(server: FakeNhnServer, at_adapter: NhnAlimtalk) -> None:
    two = (Button("하나", "https://a.kr"), Button("둘", "https://b.kr"))
    outcome = await at_adapter.send_alimtalk(alimtalk(ACCEPTED, buttons=two))

    assert outcome.result is R.REJECTED
    assert outcome.detail.startswith("code -3033")


async def test_fake_refuses_template_parameters_that_do_not_match(
    server: FakeNhnServer, at_adapter: NhnAlimtalk
) -> None:
    outcome = await at_adapter.send_alimtalk(alimtalk(ACCEPTED, variables=(("부서", "민원여권과"),)))

    assert outcome.result is R.REJECTED
    assert outcome.detail.startswith("code -3049")


async def test_foreign_number_is_invalid_without_a_request(server: FakeNhnServer, at_adapter: NhnAlimtalk) -> None:
    outcome = await at_adapter.send_alimtalk(alimtalk("+14155550123"))

    assert outcome.result is R.INVALID_NUMBER
    assert server.requests == []


async def test_wrong_secret_is_rejected(server: FakeNhnServer) -> None:
    adapter = NhnAlimtalk("nhn", server.base_url, AT_APPKEY, "old-secret", SENDER_KEY)
    sms_adapter = NhnSms("nhn-sms", server.base_url, SMS_APPKEY, "old-secret")
    try:
        at_outcome = await adapter.send_alimtalk(alimtalk(ACCEPTED))
        sms_outcome = await sms_adapter.send_sms(sms(ACCEPTED))
    finally:
        await adapter.close()
        await sms_adapter.close()

    assert at_outcome.result is R.REJECTED and at_outcome.detail.startswith("code -1001")
    assert sms_outcome.result is R.REJECTED and sms_outcome.detail == "http 401: auth"
    assert server.deliveries == []


@pytest.mark.parametrize("behaviour", ["slow", "http500", "http503", "garbage"])
async def test_provider_failures_are_temporary_within_the_deadline(server: FakeNhnServer, behaviour: str) -> None:
    server.behave(ACCEPTED, behaviour)
    adapters: list[Any] = [
        NhnAlimtalk("nhn", server.base_url, AT_APPKEY, AT_SECRET, SENDER_KEY, deadline_s=0.3),
        NhnSms("nhn-sms", server.base_url, SMS_APPKEY, SMS_SECRET, deadline_s=0.3),
    ]
    try:
        for adapter in adapters:
            started = time.monotonic()
            if isinstance(adapter, NhnAlimtalk):
                outcome = await adapter.send_alimtalk(alimtalk(ACCEPTED, key=f"{behaviour}-at"))
            else:
                outcome = await adapter.send_sms(sms(ACCEPTED, key=f"{behaviour}-sms"))
            elapsed = time.monotonic() - started

            assert outcome.result is R.TEMPORARY_ERROR, outcome
            assert elapsed < 0.3 + 0.25
            if behaviour == "slow":
                assert outcome.detail == "timeout after 300 ms"
    finally:
        for adapter in adapters:
            await adapter.close()
    assert len(server.requests) == 2  # nothing that reached the server was retried
    assert server.deliveries == []


async def test_closed_adapters_answer_without_a_request(
    server: FakeNhnServer, at_adapter: NhnAlimtalk, sms_adapter: NhnSms
) -> None:
    await at_adapter.close()
    await sms_adapter.close()

    assert (await at_adapter.send_alimtalk(alimtalk(ACCEPTED))).result is R.TEMPORARY_ERROR
    assert (await sms_adapter.send_sms(sms(ACCEPTED))).result is R.TEMPORARY_ERROR
    assert server.requests == []


# --------------------------------------------------------------------------- configuration

ENV = {
    "AT_APPKEY": AT_APPKEY,
    "AT_SECRET": AT_SECRET,
    "AT_SENDER": SENDER_KEY,
    "SMS_APPKEY": SMS_APPKEY,
    "SMS_SECRET": SMS_SECRET,
    "BLANK": "  ",
}
AT_SPEC = {"kind": "nhn", "appkey_env": "AT_APPKEY", "secret_env": "AT_SECRET", "sender_key_env": "AT_SENDER"}
SMS_SPEC = {"kind": "nhn", "appkey_env": "SMS_APPKEY", "secret_env": "SMS_SECRET"}


def test_from_spec_builds_both_adapters() -> None:
    at = NhnAlimtalk.from_spec("city-at", {**AT_SPEC, "deadline_ms": 2500}, ENV)
    sm = NhnSms.from_spec("city-sms", SMS_SPEC, ENV)

    assert (at.name, at.base_url, at.deadline_s) == ("city-at", "https://api-alimtalk.cloud.toast.com", 2.5)
    assert (sm.name, sm.base_url, sm.deadline_s) == ("city-sms", "https://api-sms.cloud.toast.com", 3.0)
    for secret in (AT_SECRET, SENDER_KEY, SMS_SECRET):
        assert secret not in repr(at) + repr(sm)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"secret_env": "NOPE_SECRET"}, "environment variable NOPE_SECRET is not set (secret_env)"),
        ({"sender_key_env": "BLANK"}, "environment variable BLANK is empty (sender_key_env)"),
        ({"appkey_env": None}, "appkey_env is missing"),
        ({"kind": "solapi"}, "kind must be 'nhn'"),
        ({"timeout": 3}, "unknown key(s) timeout"),
        ({"base_url": "ftp://x.kr"}, "base_url must be an http(s) URL"),
        ({"base_url": "https://u:p@x.kr"}, "must not contain credentials"),
        ({"deadline_ms": 0}, "deadline_ms must be"),
    ],
)
def test_alimtalk_from_spec_errors_are_precise(changes: dict[str, Any], message: str) -> None:
    spec = {k: v for k, v in {**AT_SPEC, **changes}.items() if v is not None}
    with pytest.raises(CarrierError) as info:
        NhnAlimtalk.from_spec("city-at", spec, ENV)

    assert message in str(info.value)
    assert "city-at" in str(info.value)
    assert AT_SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"appkey_env": "NOPE_APPKEY"}, "environment variable NOPE_APPKEY is not set (appkey_env)"),
        ({"secret_env": "BLANK"}, "environment variable BLANK is empty (secret_env)"),
        ({"sender_key_env": "AT_SENDER"}, "unknown key(s) sender_key_env"),
        ({"deadline_ms": True}, "deadline_ms must be"),
    ],
)
def test_sms_from_spec_errors_are_precise(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(CarrierError) as info:
        NhnSms.from_spec("city-sms", {**SMS_SPEC, **changes}, ENV)

    assert message in str(info.value)
    assert SMS_SECRET not in str(info.value)


def test_sandbox_from_spec() -> None:
    twin = SandboxAlimtalk.from_spec("demo", {"kind": "sandbox", "outcomes": {NOT_KAKAO: "not_kakao_user"}})
    assert twin.outcomes == {NOT_KAKAO: R.NOT_KAKAO_USER}
    assert SandboxSms.from_spec("demo", {"honour_keys": False}).honour_keys is False

    with pytest.raises(CarrierError, match=r"outcomes\.\+821011110002: unknown send result 'not_kakao'"):
        SandboxAlimtalk.from_spec("demo", {"outcomes": {NOT_KAKAO: "not_kakao"}})
    with pytest.raises(CarrierError, match="delay_ms"):
        SandboxSms.from_spec("demo", {"delay_ms": -5})
    with pytest.raises(CarrierError, match="unknown key"):
        SandboxSms.from_spec("demo", {"colour": "red"})


# --------------------------------------------------------------------------- logs


async def test_secrets_and_full_numbers_never_reach_the_logs(
    server: FakeNhnServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    number = "+821098765432"
    at = NhnAlimtalk("nhn", server.base_url, AT_APPKEY, AT_SECRET, SENDER_KEY, deadline_s=0.3)
    sm = NhnSms("nhn-sms", server.base_url, SMS_APPKEY, SMS_SECRET, deadline_s=0.3)
    try:
        await at.send_alimtalk(alimtalk(number, fallback=fallback()))
        await sm.send_sms(sms(number))
        await sm.send_sms(sms(number, sender="+82231234567"))
        server.behave(number, "slow")
        await at.send_alimtalk(alimtalk(number, key="other"))
        server.behave(number, "garbage")
        await sm.send_sms(sms(number, key="x"))
        with pytest.raises(CarrierError):
            NhnAlimtalk.from_spec("nhn", {**AT_SPEC, "deadline_ms": -1}, ENV)
    finally:
        await at.close()
        await sm.close()

    assert "010-****-5432" in caplog.text
    for secret in (AT_SECRET, SMS_SECRET, SENDER_KEY, number, "01098765432"):
        assert secret not in caplog.text


# --------------------------------------------------------------------------- webhooks


async def test_report_round_trips_with_the_send_reference(server: FakeNhnServer, at_adapter: NhnAlimtalk) -> None:
    outcome = await at_adapter.send_alimtalk(alimtalk(ACCEPTED))
    delivery = server.deliveries[0]
    body = server.report_body([(delivery.request_id, delivery.recipient_seq, ACCEPTED)])

    reports = parse_report(server.report_headers(), body, server.webhook_signature, provider="nhn")

    assert len(reports) == 1
    report = reports[0]
    assert report.reference == outcome.reference
    assert report.status is ReportStatus.DELIVERED
    assert report.provider == "nhn"
    assert report.fallback_used is False
    assert report.at == 1714525205.0  # 2024-05-01 10:00:05 KST


@pytest.mark.parametrize(
    ("code", "resend", "status", "fallback_used"),
    [
        ("3019", None, ReportStatus.FAILED, False),
        ("3020", None, ReportStatus.FAILED, False),
        ("3005", None, ReportStatus.SENT, False),
        ("3019", "RSC04", ReportStatus.DELIVERED, True),
        ("3018", "RSC05", ReportStatus.FAILED, True),
        ("3019", "RSC03", ReportStatus.SENT, True),
        ("3019", "RSC01", ReportStatus.FAILED, False),
    ],
)
def test_report_statuses_and_fallback(code: str, resend: str | None, status: ReportStatus, fallback_used: bool) -> None:
    fake = fake_server()
    body = fake.report_body(
        [("req-1", 1, NOT_KAKAO)],
        result_code=code,
        resend_status=resend,
        resend_result_code="1000" if resend == "RSC04" else None,
    )

    (report,) = parse_report(fake.report_headers(), body, fake.webhook_signature)

    assert (report.status, report.fallback_used) == (status, fallback_used)
    assert f"code {code}" in report.detail


def test_out_of_order_reports_are_parsed_in_body_order() -> None:
    fake = fake_server()
    delivered = json.loads(fake.report_body([("req-1", 1, ACCEPTED)], receive_date="2024-05-01 10:00:09"))
    sent = json.loads(
        fake.report_body([("req-1", 1, ACCEPTED)], result_code="3005", receive_date="2024-05-01 10:00:02")
    )
    delivered["hooks"] += sent["hooks"]  # the final status first, the earlier one after it

    reports = parse_report(fake.report_headers(), json.dumps(delivered).encode(), fake.webhook_signature)

    assert [r.status for r in reports] == [ReportStatus.DELIVERED, ReportStatus.SENT]
    assert reports[0].at > reports[1].at


@pytest.mark.parametrize(
    ("headers", "expected_signature", "reason"),
    [
        ({"X-Toast-Webhook-Signature": "forged"}, "hook-signature", "wrong X-Toast-Webhook-Signature"),
        ({}, "hook-signature", "missing X-Toast-Webhook-Signature"),
        ({"X-Toast-Webhook-Signature": ""}, "", "no webhook signature is configured"),
        ({"x-toast-webhook-signature": "hook-signature-2"}, "hook-signature", "wrong"),
    ],
)
def test_forged_or_missing_signature_is_rejected(headers: dict[str, str], expected_signature: str, reason: str) -> None:
    body = fake_server().report_body([("req-1", 1, ACCEPTED)])
    with pytest.raises(ReportRejected, match=reason):
        parse_report(headers, body, expected_signature)
    with pytest.raises(SmsReportRejected, match=reason):
        parse_unsubscribe(headers, fake_server().unsubscribe_body([ACCEPTED]), expected_signature)


def test_signature_header_name_is_case_insensitive() -> None:
    body = fake_server().report_body([("req-1", 1, ACCEPTED)])
    assert len(parse_report({"x-toast-webhook-signature": "hook-signature"}, body, "hook-signature")) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>oops</html>", "not a JSON object"),
        (b"[]", "not a JSON object"),
        (json.dumps({"event": "MESSAGE_RESULT_UPDATE"}).encode(), "lacks event or hooks"),
        (json.dumps({"event": "MESSAGE_RESULT_UPDATE", "hooks": [1]}).encode(), r"hooks\[0\] is not an object"),
        (
            json.dumps(
                {"event": "MESSAGE_RESULT_UPDATE", "hooks": [{"recipientSeq": 1, "resultCode": "1000"}]}
            ).encode(),
            "lacks requestId",
        ),
        (
            json.dumps(
                {
                    "event": "MESSAGE_RESULT_UPDATE",
                    "hooks": [{"requestId": "r", "recipientSeq": 1, "resultCode": "1000", "receiveDate": "yesterday"}],
                }
            ).encode(),
            "not a date",
        ),
    ],
)
def test_malformed_report_body_is_rejected(body: bytes, reason: str) -> None:
    with pytest.raises(ReportRejected, match=reason):
        parse_report({"X-Toast-Webhook-Signature": "s"}, body, "s")


def test_other_events_and_message_types_give_no_reports() -> None:
    fake = fake_server()
    template = json.dumps({"event": "TEMPLATE_STATUS_UPDATE", "hooks": [{"status": "TSC03"}]}).encode()
    friendtalk = json.loads(fake.report_body([("req-1", 1, ACCEPTED)]))
    friendtalk["hooks"][0]["kakaoMessageType"] = "FRIENDTALK_NORMAL"

    assert parse_report(fake.report_headers(), template, fake.webhook_signature) == []
    assert parse_report(fake.report_headers(), json.dumps(friendtalk).encode(), fake.webhook_signature) == []


def test_unsubscribe_webhook_gives_e164_numbers() -> None:
    fake = fake_server()
    body = fake.unsubscribe_body([OPTED_OUT, ACCEPTED, OPTED_OUT])

    assert parse_unsubscribe(fake.report_headers(), body, fake.webhook_signature) == [OPTED_OUT, ACCEPTED]
    result = fake.report_body([("req-1", 1, ACCEPTED)])  # not an UNSUBSCRIBE event
    assert parse_unsubscribe(fake.report_headers(), result, fake.webhook_signature) == []


def test_unsubscribe_with_an_unreadable_number_is_rejected_not_dropped() -> None:
    fake = fake_server()
    data = json.loads(fake.unsubscribe_body([OPTED_OUT]))
    data["hooks"][0]["recipientNo"] = "080-123"
    with pytest.raises(SmsReportRejected, match="recipientNo"):
        parse_unsubscribe(fake.report_headers(), json.dumps(data).encode(), fake.webhook_signature)
