"""Contract tests for lettering carriers.

The first group runs the SAME test bodies over the sandbox carrier and over the HTTP adapter
for each built-in profile (skt, kt, lgu) talking real TCP to `FakeCarrierServer` configured
with the same per-number outcomes: the sandbox is only useful if it behaves like the real thing.
The second group covers what only the HTTP adapter can meet: deadlines, 5xx, garbage, auth,
a dead server, configuration errors, the request body on the wire and secrets in logs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from adapters.carrier_http import PROFILES, CarrierProfile, HttpCarrier, mask_number
from adapters.sandbox import SandboxCarrier
from gateway.domain.models import LetteringOutcome, LetteringRequest, LetteringResult
from gateway.errors import CarrierError
from gateway.ports import LetteringCarrier
from gateway.sim.fake_carrier import Behaviour, FakeCarrierServer

R = LetteringResult
TOKEN = "tok-3f9c2b7e-DO-NOT-LOG"
DEADLINE_S = 0.8
#: One citizen number per result, shared by the sandbox and the fake server.
OUTCOMES: dict[str, LetteringResult] = {
    "+821011110001": R.DELIVERED,
    "+821011110002": R.UNSUPPORTED_DEVICE,
    "+821011110003": R.NOT_SUBSCRIBED,
    "+821011110004": R.REJECTED,
    "+821011110005": R.TEMPORARY_ERROR,
}
OTHER_NUMBER = "+821099998888"  # not in OUTCOMES: gets the default (delivered)


def lettering_request(to: str, call_id: str = "pbx1-1700000000.42", **changes: str) -> LetteringRequest:
    base = LetteringRequest(
        call_id=call_id,
        to=to,
        caller_number="+82222201234",
        organisation="서울특별시 성북구청",
        department="민원여권과",
        text="구청 민원여권과에서 드리는 전화입니다.",
        extension="2345",
        pbx="pbx1",
    )
    return replace(base, **changes)


def conforms(carrier: LetteringCarrier) -> LetteringCarrier:
    """Static check that both adapters satisfy the port (mypy verifies the assignment)."""
    return carrier


# --------------------------------------------------------------------------- contract group


@dataclass
class Subject:
    carrier: LetteringCarrier
    server: FakeCarrierServer | None


@pytest.fixture(params=["sandbox", "skt", "kt", "lgu"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    kind: str = request.param
    if kind == "sandbox":
        sandbox = SandboxCarrier(name="sandbox", outcomes=OUTCOMES)
        yield Subject(conforms(sandbox), None)
        await sandbox.close()
        return
    profile = PROFILES[kind]
    server = FakeCarrierServer(profile, TOKEN, behaviours=dict(OUTCOMES))
    base_url = await server.start()
    carrier = HttpCarrier(kind, profile, base_url, TOKEN, deadline_s=DEADLINE_S)
    yield Subject(conforms(carrier), server)
    await carrier.close()
    await server.stop()


@pytest.mark.parametrize(("number", "expected"), sorted(OUTCOMES.items()))
async def test_every_result_round_trips(subject: Subject, number: str, expected: LetteringResult) -> None:
    outcome = await subject.carrier.letter(lettering_request(number))

    assert isinstance(outcome, LetteringOutcome)
    assert type(outcome.result) is LetteringResult
    assert outcome.result is expected
    assert outcome.provider == subject.carrier.name
    assert outcome.reference  # every answer (not a transport failure) carries the carrier's id
    if subject.server is not None:
        assert [r.error for r in subject.server.requests] == [""]


async def test_unknown_number_gets_default_and_distinct_references(subject: Subject) -> None:
    first = await subject.carrier.letter(lettering_request(OTHER_NUMBER, call_id="c-1"))
    second = await subject.carrier.letter(lettering_request(OTHER_NUMBER, call_id="c-2"))

    assert first.result is R.DELIVERED and second.result is R.DELIVERED
    assert first.reference != second.reference


async def test_concurrent_calls_each_get_their_own_answer(subject: Subject) -> None:
    numbers = list(OUTCOMES) * 4
    outcomes = await asyncio.gather(
        *(subject.carrier.letter(lettering_request(n, call_id=f"c-{i}")) for i, n in enumerate(numbers))
    )

    assert [o.result for o in outcomes] == [OUTCOMES[n] for n in numbers]


async def test_close_is_idempotent(subject: Subject) -> None:
    await subject.carrier.letter(lettering_request(OTHER_NUMBER))
    await subject.carrier.close()
    await subject.carrier.close()


# --------------------------------------------------------------------------- HTTP-only group


@pytest.fixture
async def fake_skt() -> AsyncIterator[FakeCarrierServer]:
    async with FakeCarrierServer(PROFILES["skt"], TOKEN, slow_s=5.0) as server:
        yield server


CarrierFactory = Callable[..., HttpCarrier]


@pytest.fixture
async def make_carrier() -> AsyncIterator[CarrierFactory]:
    """Build HttpCarriers and close them all at the end of the test."""
    made: list[HttpCarrier] = []

    def make(profile: str | CarrierProfile, base_url: str, **kwargs: Any) -> HttpCarrier:
        prof = PROFILES[profile] if isinstance(profile, str) else profile
        name = profile if isinstance(profile, str) else "custom"
        kwargs.setdefault("deadline_s", DEADLINE_S)
        carrier = HttpCarrier(name, prof, base_url, kwargs.pop("token", TOKEN), **kwargs)
        made.append(carrier)
        return carrier

    yield make
    for carrier in made:
        await carrier.close()


async def timed(call: Awaitable[LetteringOutcome]) -> tuple[LetteringOutcome, float]:
    started = time.perf_counter()
    outcome = await call
    return outcome, time.perf_counter() - started


async def test_slow_carrier_gives_temporary_error_within_deadline(
    fake_skt: FakeCarrierServer, make_carrier: CarrierFactory
) -> None:
    deadline = 0.3
    fake_skt.behave(OTHER_NUMBER, "slow")
    carrier = make_carrier("skt", fake_skt.base_url, deadline_s=deadline)

    outcome, elapsed = await timed(carrier.letter(lettering_request(OTHER_NUMBER)))

    assert outcome.result is R.TEMPORARY_ERROR
    assert "timeout" in outcome.detail
    assert elapsed < deadline * 5  # generous: the point is that it returned, well before slow_s
    assert len(fake_skt.requests) == 1  # a timeout is never retried: the carrier may have acted


@pytest.mark.parametrize(
    ("behaviour", "expected", "detail"),
    [
        ("http500", R.TEMPORARY_ERROR, "http 500"),
        ("http503", R.TEMPORARY_ERROR, "http 503"),
        ("http408", R.TEMPORARY_ERROR, "http 408"),
        ("http429", R.TEMPORARY_ERROR, "http 429"),
        ("http404", R.REJECTED, "http 404"),
        ("http403", R.REJECTED, "auth"),
        ("http302", R.REJECTED, "unexpected http 302"),  # never followed: it would resend the token
        ("garbage", R.TEMPORARY_ERROR, "JSON"),
        ("close", R.TEMPORARY_ERROR, "connection error"),
    ],
)
async def test_carrier_failures_map_to_typed_results(
    fake_skt: FakeCarrierServer,
    make_carrier: CarrierFactory,
    behaviour: Behaviour,
    expected: LetteringResult,
    detail: str,
) -> None:
    fake_skt.behave(OTHER_NUMBER, behaviour)
    carrier = make_carrier("skt", fake_skt.base_url)

    outcome = await carrier.letter(lettering_request(OTHER_NUMBER))

    assert outcome.result is expected
    assert detail in outcome.detail
    assert len(fake_skt.requests) == 1  # nothing after a request was sent is retried


async def test_carrier_recovers_after_dropped_connection(
    fake_skt: FakeCarrierServer, make_carrier: CarrierFactory
) -> None:
    fake_skt.behave(OTHER_NUMBER, "close")
    carrier = make_carrier("skt", fake_skt.base_url)
    assert (await carrier.letter(lettering_request(OTHER_NUMBER))).result is R.TEMPORARY_ERROR

    fake_skt.behave(OTHER_NUMBER, R.DELIVERED)
    assert (await carrier.letter(lettering_request(OTHER_NUMBER))).result is R.DELIVERED


async def test_bad_token_is_rejected_as_auth(fake_skt: FakeCarrierServer, make_carrier: CarrierFactory) -> None:
    carrier = make_carrier("skt", fake_skt.base_url, token="not-the-token")

    outcome = await carrier.letter(lettering_request(OTHER_NUMBER))

    assert outcome.result is R.REJECTED
    assert outcome.detail == "auth"
    assert fake_skt.requests[0].error.startswith("missing or wrong Authorization")


async def test_unknown_code_uses_profile_default(fake_skt: FakeCarrierServer, make_carrier: CarrierFactory) -> None:
    # The fake answers "0000" for delivered; a profile that does not know "0000" must fall back.
    profile = PROFILES["skt"].with_overrides({"codes": {"0000": None}, "unknown_code": "temporary_error"})
    carrier = make_carrier(profile, fake_skt.base_url)

    outcome = await carrier.letter(lettering_request(OTHER_NUMBER))

    assert outcome.result is R.TEMPORARY_ERROR
    assert "unknown code 0000" in outcome.detail


def free_closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def counting_session() -> tuple[aiohttp.ClientSession, list[str]]:
    """A session that records every request attempt (to observe retries from outside)."""
    attempts: list[str] = []

    async def on_start(
        session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        attempts.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    return aiohttp.ClientSession(trace_configs=[trace]), attempts


async def test_server_down_gives_temporary_error_after_one_quick_retry(make_carrier: CarrierFactory) -> None:
    session, attempts = await counting_session()
    try:
        carrier = make_carrier("kt", f"http://127.0.0.1:{free_closed_port()}", session=session)
        outcome, elapsed = await timed(carrier.letter(lettering_request(OTHER_NUMBER)))
    finally:
        await session.close()

    assert outcome.result is R.TEMPORARY_ERROR
    assert outcome.detail.startswith("connect failed")
    assert len(attempts) == 2  # refused before anything was sent: exactly one retry
    assert elapsed < DEADLINE_S * 5


async def test_no_retry_when_the_deadline_is_nearly_spent(make_carrier: CarrierFactory) -> None:
    session, attempts = await counting_session()
    try:
        base_url = f"http://127.0.0.1:{free_closed_port()}"
        carrier = make_carrier("kt", base_url, session=session, deadline_s=0.05)
        outcome = await carrier.letter(lettering_request(OTHER_NUMBER))
    finally:
        await session.close()

    assert outcome.result is R.TEMPORARY_ERROR
    assert len(attempts) == 1


async def test_connections_are_kept_alive(fake_skt: FakeCarrierServer, make_carrier: CarrierFactory) -> None:
    carrier = make_carrier("skt", fake_skt.base_url)
    for i in range(3):
        await carrier.letter(lettering_request(OTHER_NUMBER, call_id=f"c-{i}"))

    peers = {r.peer for r in fake_skt.requests}
    assert len(fake_skt.requests) == 3 and len(peers) == 1  # one TCP connection for all three


async def test_closed_carrier_answers_without_raising(
    fake_skt: FakeCarrierServer, make_carrier: CarrierFactory
) -> None:
    carrier = make_carrier("skt", fake_skt.base_url)
    await carrier.close()

    outcome = await carrier.letter(lettering_request(OTHER_NUMBER))

    assert outcome.result is R.TEMPORARY_ERROR
    assert fake_skt.requests == []


# ------------------------------------------------------------------ request body on the wire


async def test_kt_body_is_flat_with_national_numbers_and_call_id_in_path(
    make_carrier: CarrierFactory,
) -> None:
    async with FakeCarrierServer(PROFILES["kt"], TOKEN) as server:
        carrier = make_carrier("kt", server.base_url)
        outcome = await carrier.letter(lettering_request("+821012345678", call_id="pbx1/1700000000.42"))

    assert outcome.result is R.DELIVERED
    received = server.requests[0]
    assert received.error == ""
    assert received.path == "/cid/v2/calls/pbx1%2F1700000000.42/lettering"
    assert received.headers["X-KT-Api-Key"] == TOKEN  # bare API key, no scheme
    assert received.body == {
        "callKey": "pbx1/1700000000.42",
        "calleeNo": "01012345678",
        "callerNo": "0222201234",
        "orgName": "서울특별시 성북구청",
        "deptName": "민원여권과",
        "cidText": "구청 민원여권과에서 드리는 전화입니다.",
        "extNo": "2345",
    }
    assert received.headers["Content-Type"].startswith("application/json")


async def test_lgu_body_is_nested_with_constant_service_code(make_carrier: CarrierFactory) -> None:
    async with FakeCarrierServer(PROFILES["lgu"], TOKEN) as server:
        carrier = make_carrier("lgu", server.base_url)
        await carrier.letter(lettering_request("+821012345678", caller_number=""))

    body = server.requests[0].body
    assert server.requests[0].error == ""
    assert body["header"] == {"serviceCode": "CIVIC_LETTERING", "transactionId": "pbx1-1700000000.42"}
    assert body["body"]["recipient"] == "01012345678"
    assert body["body"]["callerId"] == ""  # unknown caller number: present, empty
    assert body["body"]["content"]["organization"] == "서울특별시 성북구청"


async def test_overridden_profile_maps_nested_fields(make_carrier: CarrierFactory) -> None:
    profile = PROFILES["kt"].with_overrides(
        {
            "path": "/api/lettering",
            "number_format": "e164",
            "fields": {"organisation": "display.title", "text": "display.body.text", "extension": None},
            "auth_header": "Authorization",
            "auth_scheme": "Token ",
        }
    )
    async with FakeCarrierServer(profile, TOKEN) as server:
        carrier = make_carrier(profile, server.base_url)
        outcome = await carrier.letter(lettering_request("+821012345678"))

    assert outcome.result is R.DELIVERED
    received = server.requests[0]
    assert received.headers["Authorization"] == f"Token {TOKEN}"
    assert received.body["display"] == {
        "title": "서울특별시 성북구청",
        "body": {"text": "구청 민원여권과에서 드리는 전화입니다."},
    }
    assert received.body["calleeNo"] == "+821012345678"
    assert "extNo" not in received.body


async def test_fake_server_rejects_a_request_in_the_wrong_number_format(make_carrier: CarrierFactory) -> None:
    # Proves the fake really validates: an adapter sending E.164 to a national-format carrier fails.
    e164_kt = PROFILES["kt"].with_overrides({"number_format": "e164"})
    async with FakeCarrierServer(PROFILES["kt"], TOKEN) as server:
        carrier = make_carrier(e164_kt, server.base_url)
        outcome = await carrier.letter(lettering_request("+821012345678"))

    assert outcome.result is R.REJECTED
    assert outcome.detail == "http 400"
    assert server.requests[0].error == "field calleeNo is not a national number"


# ------------------------------------------------------------------ configuration


ENV = {"SKT_LETTERING_TOKEN": TOKEN, "CITY_KT_KEY": TOKEN}


def test_from_spec_builds_a_carrier_with_overrides() -> None:
    carrier = HttpCarrier.from_spec(
        "skt-main",
        {
            "kind": "http",
            "profile": "skt",
            "base_url": "https://lettering.example.kr/",
            "deadline_ms": 500,
            "overrides": {"codes": {"E42": "unsupported_device"}, "path": "/v2/x"},
        },
        ENV,
    )

    assert carrier.name == "skt-main"
    assert carrier.deadline_s == 0.5
    assert carrier.base_url == "https://lettering.example.kr"
    assert carrier.profile.path == "/v2/x"
    assert carrier.profile.codes["E42"] is R.UNSUPPORTED_DEVICE
    assert carrier.profile.codes["0000"] is R.DELIVERED  # merged, not replaced
    assert PROFILES["skt"].path == "/v1/lettering/requests"  # the default is untouched
    assert TOKEN not in repr(carrier)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"profile": "sk-telecom", "base_url": "https://x.kr"}, "unknown profile 'sk-telecom'"),
        ({"profile": "skt"}, "base_url is missing"),
        ({"profile": "skt", "base_url": "ftp://x.kr"}, "base_url must be an http(s) URL"),
        ({"profile": "skt", "base_url": "https://u:p@x.kr"}, "must not contain credentials"),
        ({"profile": "kt", "base_url": "https://x.kr"}, "environment variable KT_LETTERING_TOKEN is not set"),
        (
            {"profile": "skt", "base_url": "https://x.kr", "token_env": "NOPE_TOKEN"},
            "environment variable NOPE_TOKEN is not set",
        ),
        (
            {"profile": "skt", "base_url": "https://x.kr", "token_env": "EMPTY_TOKEN"},
            "environment variable EMPTY_TOKEN is empty",
        ),
        ({"profile": "skt", "base_url": "https://x.kr", "deadline_ms": 0}, "deadline_ms must be"),
        ({"profile": "skt", "base_url": "https://x.kr", "timeout": 3}, "unknown key(s) timeout"),
        (
            {"profile": "skt", "base_url": "https://x.kr", "overrides": {"colour": "red"}},
            "overrides.colour: unknown profile field",
        ),
        (
            {"profile": "skt", "base_url": "https://x.kr", "overrides": {"codes": {"1": "maybe"}}},
            "overrides.codes.1: unknown lettering result 'maybe'",
        ),
        (
            {"profile": "skt", "base_url": "https://x.kr", "overrides": {"fields": {"colour": "c"}}},
            "unknown request field(s) colour",
        ),
        ({"profile": "skt", "base_url": "https://x.kr", "overrides": {"fields": {"text": "display"}}}, "collides"),
        (
            {"profile": "skt", "base_url": "https://x.kr", "overrides": {"number_format": "local"}},
            "number_format must be",
        ),
        (
            {"profile": "skt", "base_url": "https://x.kr", "overrides": {"path": "/v1/{caller}"}},
            "only the placeholder {call_id}",
        ),
    ],
)
def test_from_spec_errors_are_precise(spec: dict[str, Any], message: str) -> None:
    env = {**ENV, "EMPTY_TOKEN": "  "}
    with pytest.raises(CarrierError) as info:
        HttpCarrier.from_spec("city-carrier", {"kind": "http", **spec}, env)

    assert message in str(info.value)
    assert "city-carrier" in str(info.value)
    assert TOKEN not in str(info.value)


def test_sandbox_from_spec_accepts_strings_and_rejects_typos() -> None:
    sandbox = SandboxCarrier.from_spec(
        "demo", {"kind": "sandbox", "outcomes": {"+821011112222": "unsupported_device"}, "delay_ms": 5}
    )
    assert sandbox.outcomes == {"+821011112222": R.UNSUPPORTED_DEVICE}
    assert sandbox.delay_s == 0.005

    typo = re.escape("outcomes.+821011112222: unknown lettering result 'unsuported'")
    with pytest.raises(CarrierError, match=typo):
        SandboxCarrier.from_spec("demo", {"outcomes": {"+821011112222": "unsuported"}})
    with pytest.raises(CarrierError, match="delay_ms"):
        SandboxCarrier.from_spec("demo", {"delay_ms": -1})


async def test_sandbox_records_requests_and_answers() -> None:
    sandbox = SandboxCarrier(outcomes={"+821011112222": R.NOT_SUBSCRIBED}, default=R.REJECTED)
    first = await sandbox.letter(lettering_request("+821011112222"))
    second = await sandbox.letter(lettering_request(OTHER_NUMBER))

    assert [r.to for r in sandbox.requests] == ["+821011112222", OTHER_NUMBER]
    assert sandbox.outcomes_given == [first, second]
    assert (first.result, first.reference) == (R.NOT_SUBSCRIBED, "sbx-1")
    assert (second.result, second.reference) == (R.REJECTED, "sbx-2")


# ------------------------------------------------------------------ logs


def test_mask_number() -> None:
    assert mask_number("+821012345678") == "010-****-5678"
    assert mask_number("01012345678") == "010-****-5678"
    assert mask_number("+14155550123") == "****0123"
    assert mask_number("") == ""


async def test_secret_and_full_numbers_never_reach_the_logs(
    fake_skt: FakeCarrierServer, make_carrier: CarrierFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything, aiohttp included
    number = "+821012345678"
    good = make_carrier("skt", fake_skt.base_url, deadline_s=0.3)
    bad = make_carrier("skt", fake_skt.base_url, token=TOKEN + "-old")
    down = make_carrier("skt", f"http://127.0.0.1:{free_closed_port()}")

    await good.letter(lettering_request(number))
    await bad.letter(lettering_request(number))
    await down.letter(lettering_request(number))
    fake_skt.behave(number, "slow")
    await good.letter(lettering_request(number))
    with pytest.raises(CarrierError):
        HttpCarrier.from_spec("skt", {"profile": "skt", "base_url": "https://x.kr", "deadline_ms": -1}, ENV)

    assert caplog.records, "the adapter is expected to log each outcome"
    assert "010-****-5678" in caplog.text
    for secret in (TOKEN, number, "01012345678"):
        assert secret not in caplog.text
