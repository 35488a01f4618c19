"""Inbound input validation at the real edges (issue #13): lone surrogates, numbers that are not
the city's or not mobiles, long message ids, non-string JSON fields, quiet rate-limited logging of
malformed requests, and the staff API's claim/reply rules.

Everything runs through a gateway's HTTP edge on 127.0.0.1 (aiohttp), a real private Redis, an
in-process queue worker and, for mail, a real aiosmtpd server driven by stdlib smtplib.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import smtplib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import ClientSession

from gateway.inbox.smtp import SmtpIntake, SmtpSettings
from gateway.infra.crypto import sign
from gateway.messaging.workers import wait_idle
from tests.integration.test_intake import ENV, PUBLIC_URL, Site, _site, seoul, sms

DAY = seoul("2026-11-24T10:00:00")  # a Tuesday morning: the rules send automatic replies
MARKER = "SECRETINPUT7731"  # sender input that must never reach a log line
# Lone surrogates as a JSON escape can carry them (an emoji cut at a UTF-16 boundary), alone,
# inside text, the low half alone, and a pair in the wrong order.
SURROGATES = ["\ud83d", "가로등\ud83d", "\ude00", "a\ude00\ud83db", "\udcff"]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str, sqlite_records_url: str) -> Iterator[dict[str, str]]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("GATEWAY_RECORDS_URL", sqlite_records_url)  # the staff accounts and access records
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    yield dict(os.environ)


@pytest.fixture
async def site(env: dict[str, str], redis_url: str) -> AsyncIterator[Site]:
    s = await _site(env, redis_url, "t-validation")
    yield s
    await s.http.stop()
    await asyncio.to_thread(s.worker.stop)
    await s.gateway.stop()


async def post_raw(
    site: Site, session: ClientSession, body: bytes, content_type: str = "application/json"
) -> tuple[int, Any]:
    """A signed webhook with exactly these body bytes; the answer must be JSON."""
    ts = str(int(time.time()))
    headers = {
        "Content-Type": content_type,
        "X-Signature-Timestamp": ts,
        "X-Signature": sign("inbound-secret", ts, PUBLIC_URL, body),
    }
    async with session.post(f"{site.base}/webhooks/sms/sandbox-sms", data=body, headers=headers) as resp:
        return resp.status, json.loads(await resp.read())


async def staff_raw(site: Site, session: ClientSession, path: str, body: bytes) -> tuple[int, Any]:
    async with session.post(
        f"{site.base}{path}",
        data=body,
        headers={"Authorization": f"Bearer {site.tokens['kim']}", "Content-Type": "application/json"},
    ) as resp:
        return resp.status, json.loads(await resp.read())


def as_json(fields: dict[str, Any]) -> bytes:
    # ensure_ascii: a lone surrogate goes out as the escape "\ud83d", as a provider would send it
    return json.dumps(fields, ensure_ascii=True).encode()


async def a_thread(site: Site, session: ClientSession, message_id: str, sender: str = "010-1234-5678") -> str:
    status, body = await site.post(session, sms(message_id, "민원 문의드립니다", DAY, sender=sender))
    assert status == 200, body
    return str(body["thread"])


# ----------------------------------------------------------------------------- lone surrogates


@pytest.mark.parametrize("value", SURROGATES)
@pytest.mark.parametrize("field", ["text", "message_id"])
async def test_lone_surrogate_in_a_webhook_field_is_a_400_naming_it(site: Site, field: str, value: str) -> None:
    fields = sms(f"sur-{field}", "정상 문자", DAY) | {field: value}
    async with ClientSession() as session:
        status, body = await post_raw(site, session, as_json(fields))
    assert status == 400, body
    assert field in body["error"] and "surrogate" in body["error"]


async def test_lone_surrogate_in_a_form_body_decoded_as_utf7_is_a_400(site: Site) -> None:
    # "+2D0-" is UTF-7 for the lone high surrogate U+D83D: a charset that can produce one.
    body = b"message_id=f-1&from=01012345678&to=0319002000&text=%2B2D0-"
    async with ClientSession() as session:
        status, answer = await post_raw(site, session, body, "application/x-www-form-urlencoded; charset=utf-7")
    assert status == 400 and "text" in answer["error"], answer


@pytest.mark.parametrize("value", SURROGATES)
async def test_lone_surrogate_in_staff_fields_is_a_400(site: Site, value: str) -> None:
    async with ClientSession() as session:
        tid = await a_thread(site, session, "sur-staff")
        for path, fields in [
            (f"/api/threads/{tid}/claim", {"staff": value}),
            (f"/api/threads/{tid}/reply", {"text": value, "staff": "kim"}),
            (f"/api/threads/{tid}/reply", {"text": "답변", "staff": value}),
            ("/api/optout", {"number": "010-1234-5678", "action": "add", "staff": value}),
            ("/api/optout", {"number": value, "action": "add", "staff": "kim"}),
        ]:
            status, body = await staff_raw(site, session, path, as_json(fields))
            assert status == 400, (path, fields, body)
            assert "surrogate" in body["error"] or "phone number" in body["error"], body


# A body part in a charset that decodes to lone surrogates; a Subject encoded word likewise.
SURROGATE_MAILS = [
    ("text/plain; charset=utf-7", "SMS", b"+2D0-"),
    ("text/plain; charset=unicode_escape", "SMS", b"\\ud83d \xea\xb0\x80"),
    ("text/plain; charset=raw_unicode_escape", "SMS", b"\\ude00abc"),
    ("text/plain; charset=utf-7", "=?utf-7?q?+2D0-?=", b""),
]


@pytest.mark.parametrize(("ctype", "subject", "body"), SURROGATE_MAILS)
async def test_smtp_mail_that_decodes_to_surrogates_is_a_permanent_5xx(
    site: Site, ctype: str, subject: str, body: bytes
) -> None:
    address = await site.gateway.start_smtp(port=0)
    assert address is not None
    raw = (
        (
            f"From: 01012345678@sms.carrier.example\r\nTo: 0319002000@sms.hanbit.go.kr\r\nSubject: {subject}\r\n"
            f"Message-ID: <sur-{abs(hash(ctype + subject))}@sms.carrier.example>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode()
        + body
        + b"\r\n"
    )

    def send() -> None:
        with smtplib.SMTP(*address, timeout=10) as client:
            client.sendmail("relay@sms.carrier.example", ["0319002000@sms.hanbit.go.kr"], raw)

    with pytest.raises(smtplib.SMTPDataError) as info:
        await asyncio.to_thread(send)
    assert 500 <= info.value.smtp_code < 600, info.value


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("to", ["031-900-9999", "02-2133-1234", "010-2222-3333", "+1 212 555 0100", "1588-1234"])
async def test_webhook_to_a_number_that_is_not_the_citys_is_a_400(site: Site, to: str) -> None:
    async with ClientSession() as session:
        status, body = await site.post(session, sms(f"to-{to}", "민원 문의드립니다", DAY, to=to))
    assert status == 400 and "city" in body["error"], body


async def test_smtp_to_a_number_served_by_the_relay_but_not_in_routing_is_550(site: Site) -> None:
    """The SMTP edge's own list (gateway.yaml) knows a number routing.yaml does not: the intake
    refuses it, and the relay gets a permanent 550 5.1.1, not a retry."""
    settings = SmtpSettings(
        host="127.0.0.1",
        port=0,
        peers=("127.0.0.1/32",),
        senders=("@sms.carrier.example",),
        recipient_domain="sms.hanbit.go.kr",
        city_numbers=frozenset({"+82319002000", "+82319009999"}),
    )
    server = SmtpIntake(settings, site.gateway.intake)
    host, port = await server.start()
    raw = (
        b"From: 01012345678@sms.carrier.example\r\nTo: 0319009999@sms.hanbit.go.kr\r\nSubject: SMS\r\n"
        b"Message-ID: <to-1@sms.carrier.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
    )

    def send() -> None:
        with smtplib.SMTP(host, port, timeout=10) as client:
            client.sendmail("relay@sms.carrier.example", ["0319009999@sms.hanbit.go.kr"], raw)

    try:
        with pytest.raises(smtplib.SMTPDataError) as info:
            await asyncio.to_thread(send)
    finally:
        await server.stop(timeout=2)
    # (smtplib gives the text as bytes, although typeshed says str)
    assert info.value.smtp_code == 550 and "5.1.1 'to' is not one of the city" in str(info.value.smtp_error)


@pytest.mark.parametrize("sender", ["+1 212 555 0100", "1588-1234", "02-2133-1234", "070-1234-5678", "080-123-4567"])
async def test_a_sender_that_is_not_a_korean_mobile_is_stored_but_never_auto_answered(site: Site, sender: str) -> None:
    async with ClientSession() as session:
        status, body = await site.post(session, sms("nm-1", "소음 민원입니다", DAY, to="031-900-2100", sender=sender))
        assert status == 200 and body["status"] == "accepted" and body["reply"] == "not_mobile", body
        # the control: a mobile gets the rule's automatic reply
        status, mobile = await site.post(session, sms("nm-2", "소음 민원입니다", DAY, to="031-900-2100"))
        assert status == 200 and "reply" not in mobile, mobile
        assert await wait_idle(site.broker, site.runtime, timeout_s=15)
        _, thread = await site.api(session, "GET", f"/api/threads/{body['thread']}")
        _, inbox = await site.api(session, "GET", f"/api/inbox/{body['queue']}")
    assert thread["reply"] == "not_mobile" and [m["dir"] for m in thread["messages"]] == ["in"]
    assert body["thread"] in [e["thread"] for e in inbox]  # kept and routed
    assert [r.to for r in site.sms.requests] == ["+821012345678"]  # only the mobile was answered


# ----------------------------------------------------------------------------- message ids


@pytest.mark.parametrize("prefix", ["x" * 128, "가" * 128, "provider-" * 100])
async def test_ids_that_share_their_first_128_characters_are_distinct(site: Site, prefix: str) -> None:
    async with ClientSession() as session:
        first = await site.post(session, sms(prefix + "-a", "민원 하나", DAY))
        second = await site.post(session, sms(prefix + "-b", "민원 둘", DAY))
        again = await site.post(session, sms(prefix + "-b", "민원 둘", DAY))
        _, thread = await site.api(session, "GET", f"/api/threads/{first[1]['thread']}")
    assert (first[1]["status"], second[1]["status"], again[1]["status"]) == ("accepted", "accepted", "duplicate")
    assert [m["text"] for m in thread["messages"] if m["dir"] == "in"] == ["민원 하나", "민원 둘"]


async def test_absurdly_long_message_ids_are_a_400(site: Site) -> None:
    async with ClientSession() as session:
        status, _ = await site.post(session, sms("m" * 1024, "민원", DAY))
        assert status == 200
        for long_id in ("m" * 1025, "가" * 5000):
            status, body = await site.post(session, sms(long_id, "민원", DAY))
            assert status == 400 and "message_id" in body["error"], body


# ----------------------------------------------------------------------------- JSON types


@pytest.mark.parametrize("value", [{"a": "가로등"}, ["가로등"], True, False, 12, 1.5, [], {}])
@pytest.mark.parametrize("field", ["text", "message_id", "from", "to"])
async def test_non_string_json_fields_are_a_400_naming_the_field(site: Site, field: str, value: Any) -> None:
    fields: dict[str, Any] = sms("types-1", "정상 문자", DAY)
    fields[field] = value
    async with ClientSession() as session:
        status, body = await post_raw(site, session, as_json(fields))
    assert status == 400 and f"'{field}'" in body["error"], body


async def test_received_at_may_be_a_json_number(site: Site) -> None:
    fields: dict[str, Any] = sms("num-at", "정상 문자", DAY)
    fields["received_at"] = DAY
    async with ClientSession() as session:
        status, body = await post_raw(site, session, as_json(fields))
        assert status == 200, body
        status, body = await post_raw(site, session, as_json(fields | {"message_id": "b", "received_at": True}))
    assert status == 400 and "received_at" in body["error"], body


# ----------------------------------------------------------------------------- staff API


async def test_claiming_a_thread_that_does_not_exist_is_404(site: Site) -> None:
    async with ClientSession() as session:
        status, body = await site.api(session, "POST", "/api/threads/t0000000000/claim", {})
    assert status == 404 and body["error"]


async def test_claims_and_replies_follow_the_claim(site: Site) -> None:
    """Who acts is the token's person (kim, lee), never a name in the body."""
    async with ClientSession() as session:
        tid = await a_thread(site, session, "c-1")
        assert await wait_idle(site.broker, site.runtime, timeout_s=15)
        status, body = await site.api(session, "POST", f"/api/threads/{tid}/claim", {})
        assert status == 200 and body["claimed"], body
        status, body = await site.api(session, "POST", f"/api/threads/{tid}/claim", {})
        assert status == 200 and body["claimed"], body  # a double click
        status, body = await site.api(session, "POST", f"/api/threads/{tid}/claim", {}, as_="lee")
        assert status == 409 and body["claimed_by"] == "kim" and "담당" in body["error"], body
        status, body = await site.api(session, "POST", f"/api/threads/{tid}/reply", {"text": "답변"}, as_="lee")
        assert status == 409 and body["claimed_by"] == "kim", body
        # lee cannot act as kim by naming kim in the body
        status, body = await site.api(
            session, "POST", f"/api/threads/{tid}/reply", {"text": "답변", "staff": "kim"}, as_="lee"
        )
        assert status == 400 and "staff" in body["error"], body
        status, body = await site.api(session, "POST", f"/api/threads/{tid}/reply", {"text": "답변"})
        assert status == 202 and body["result"] == "queued", body
        status, body = await site.api(session, "POST", f"/api/threads/{tid}/reply", {"text": "답변", "staff": "kim"})
        assert status == 200 and body["result"] == "duplicate", body  # the same reply posted twice quickly
        assert await wait_idle(site.broker, site.runtime, timeout_s=15)
    assert [r.text for r in site.sms.requests].count("답변") == 1


async def test_an_unclaimed_thread_is_claimed_by_its_first_reply(site: Site) -> None:
    async with ClientSession() as session:
        tid = await a_thread(site, session, "c-2")
        status, body = await site.api(session, "POST", f"/api/threads/{tid}/reply", {"text": "확인"}, as_="lee")
        assert status == 202, body
        status, body = await site.api(session, "POST", f"/api/threads/{tid}/claim", {})
        assert status == 409 and body["claimed_by"] == "lee", body
        status, body = await site.api(session, "POST", f"/api/threads/{tid}/reply", {"text": "확인", "staff": ""})
        assert status == 400 and "staff" in body["error"], body
        status, body = await site.api(session, "POST", "/api/threads/t0000000000/reply", {"text": "x"})
        assert status == 404, body


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"{", b'{"staff": ["kim"]}'])
async def test_staff_api_errors_are_json(site: Site, body: bytes) -> None:
    async with ClientSession() as session:
        tid = await a_thread(site, session, "j-1")
        for path in (f"/api/threads/{tid}/claim", f"/api/threads/{tid}/reply", "/api/optout"):
            status, answer = await staff_raw(site, session, path, body)
            assert status == 400 and answer["error"], (path, answer)


# ----------------------------------------------------------------------------- logging


async def test_malformed_requests_are_one_warning_without_input_rate_limited(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with ClientSession() as session:
        tid = await a_thread(site, session, "log-0")
        caplog.clear()
        for i in range(5):
            await post_raw(site, session, b"{" + MARKER.encode())  # not JSON
            await post_raw(site, session, as_json(sms(f"log-{i}", MARKER + "\ud83d", DAY)))  # surrogate
            await post_raw(site, session, as_json(sms(f"log-{i}", MARKER, DAY) | {"text": [MARKER]}))  # a list
            await post_raw(site, session, f"a={MARKER}&b=%".encode(), "application/x-www-form-urlencoded")
            await staff_raw(site, session, f"/api/threads/{tid}/claim", b"{" + MARKER.encode())
            await staff_raw(site, session, f"/api/threads/{tid}/claim", as_json({"staff": MARKER + "\ud83d"}))
            # malformed at the HTTP parser, before any handler: a control character in a header
            host, port = site.base.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"POST /webhooks/sms/sandbox-sms HTTP/1.1\r\nHost: x\r\nX-A: a\x01{MARKER}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            await writer.drain()
            assert (await asyncio.wait_for(reader.read(100), 10)).startswith(b"HTTP/1.")
            writer.close()
    address = await site.gateway.start_smtp(port=0)
    assert address is not None

    def send(i: int) -> None:
        raw = (
            (
                f"From: 01012345678@sms.carrier.example\r\nTo: 0319002000@sms.hanbit.go.kr\r\nSubject: SMS\r\n"
                f"Message-ID: <log-{i}@sms.carrier.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            ).encode()
            + MARKER.encode()
            + b"\xff\r\n"
        )
        with smtplib.SMTP(*address, timeout=10) as client, pytest.raises(smtplib.SMTPDataError):
            client.sendmail("relay@sms.carrier.example", ["0319002000@sms.hanbit.go.kr"], raw)

    for i in range(5):
        await asyncio.to_thread(send, i)
    # the edges' loggers (the worker's own complaints about the test's notify.yaml are not ours)
    records = [
        r
        for r in caplog.records
        if r.name in ("gateway.inbox.webhooks", "gateway.inbox.staffapi", "gateway.inbox.smtp", "gateway.inbox.intake")
        or r.name.startswith("aiohttp")
    ]
    assert [r for r in records if r.levelno >= logging.ERROR] == []
    assert [r for r in records if r.exc_info or r.exc_text] == []
    assert not [r for r in caplog.records if MARKER in r.getMessage() and r.name != "mail.log"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    # one line per kind of problem, not one per request: 7 HTTP kinds and 1 SMTP kind, 5 times each
    assert 4 <= len(warnings) <= 10, warnings
    assert any("smtp" in w for w in warnings) and any("/api/" in w for w in warnings), warnings
    assert any("parser" in w or "HTTP request" in w for w in warnings), warnings


def test_malformed_log_counts_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    """The limiter itself, on an injected clock: one line per (edge, reason) per interval, and
    the next line says how many were held back."""
    from gateway.infra.edgelog import MalformedLog

    now = [1000.0]
    limiter = MalformedLog(logging.getLogger("gateway.test-edge"), interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="gateway.test-edge"):
        for _ in range(5):
            limiter.note("http /x", "400 BadRequest")
        limiter.note("http /x", "401 Unauthorized")
        limiter.note("smtp DATA", "400 BadRequest")
        now[0] += 61
        limiter.note("http /x", "400 BadRequest")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "http /x: malformed input refused: 400 BadRequest",
        "http /x: malformed input refused: 401 Unauthorized",
        "smtp DATA: malformed input refused: 400 BadRequest",
        "http /x: malformed input refused: 400 BadRequest (+4 more not logged since the last line)",
    ]
    assert limiter.counts[("http /x", "400 BadRequest")] == 6
