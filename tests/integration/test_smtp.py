"""SMTP intake edge: a real aiosmtpd server on 127.0.0.1 driven by stdlib smtplib, and parse_mail.

The server runs on the test's own loop (as in the gateway), so the blocking smtplib client runs
in a worker thread via asyncio.to_thread.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import quopri
import smtplib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest

from gateway.domain.numbers import NumberPlan
from gateway.domain.routing import InboundSms
from gateway.errors import GatewayError, StoreUnavailable
from gateway.inbox.smtp import MailRejected, SmtpIntake, SmtpSettings, parse_mail

CITY = "+82319002000"
CITY_2 = "+82319002001"
CITIZEN = "+821012345678"
RCPT = "0319002000@sms.hanbit.go.kr"
RELAY = "relay@sms.carrier.example"
KST = timezone(timedelta(hours=9))
SENT_AT = datetime(2025, 9, 25, 23, 0, 0, tzinfo=KST)
PLAN = NumberPlan()

SETTINGS = SmtpSettings(
    host="127.0.0.1",
    port=0,
    peers=("127.0.0.1/32",),
    senders=("@sms.carrier.example",),
    recipient_domain="sms.hanbit.go.kr",
    city_numbers=frozenset({CITY, CITY_2}),
)


# --------------------------------------------------------------------------- fakes of the intake core


class InboundRejected(GatewayError):
    """Stands in for the intake core's own rejection error."""


class RecordingIntake:
    """Stores each message id once; a repeat is a duplicate (the intake's idempotency)."""

    def __init__(self) -> None:
        self.calls: list[InboundSms] = []
        self.stored: dict[str, InboundSms] = {}

    async def accept(self, sms: InboundSms) -> object:
        self.calls.append(sms)
        if sms.message_id in self.stored:
            return "duplicate"
        self.stored[sms.message_id] = sms
        return "accepted"


class FlakyIntake(RecordingIntake):
    """The store is down for the first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def accept(self, sms: InboundSms) -> object:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("redis: connection refused")
        return await super().accept(sms)


class RaisingIntake:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def accept(self, sms: InboundSms) -> object:
        raise self.error


class GatedIntake(RecordingIntake):
    """Holds every accept until ``gate`` is set, to observe a drain with mail in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def accept(self, sms: InboundSms) -> object:
        self.entered.set()
        await self.gate.wait()
        return await super().accept(sms)


# --------------------------------------------------------------------------- helpers


@asynccontextmanager
async def running(intake: Any, settings: SmtpSettings = SETTINGS) -> AsyncIterator[tuple[SmtpIntake, int]]:
    server = SmtpIntake(settings, intake)
    host, port = await server.start()
    assert host == "127.0.0.1" and port > 0
    try:
        yield server, port
    finally:
        await server.stop(timeout=2)


def send(port: int, raw: bytes, *, sender: str = RELAY, rcpts: tuple[str, ...] = (RCPT,)) -> dict[str, Any]:
    """The relay: one smtplib transaction (blocking; run it in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, list(rcpts), raw)


async def relay(port: int, raw: bytes, **kwargs: Any) -> dict[str, Any]:
    return await asyncio.to_thread(send, port, raw, **kwargs)


def mail(
    body: bytes | str = "가로등이 꺼졌어요",
    *,
    charset: str = "utf-8",
    codec: str | None = None,
    cte: str = "8bit",
    subject: str = "SMS",
    message_id: str | None = "<20250925230000.1@sms.carrier.example>",
    sender: str = "01012345678@sms.carrier.example",
    ctype: str = "text/plain",
    extra: tuple[str, ...] = (),
) -> bytes:
    """A relayed mail with full control over the bytes on the wire."""
    data = body.encode(codec or charset) if isinstance(body, str) else body
    if cte == "base64":
        data = base64.encodebytes(data)
    elif cte == "quoted-printable":
        data = quopri.encodestring(data)
    headers = [
        f"From: {sender}",
        f"To: {RCPT}",
        f"Subject: {subject}",
        f"Date: {format_datetime(SENT_AT)}",
        "MIME-Version: 1.0",
        f"Content-Type: {ctype}; charset={charset}",
        f"Content-Transfer-Encoding: {cte}",
        *extra,
    ]
    if message_id is not None:
        headers.append(f"Message-ID: {message_id}")
    return "\r\n".join(headers).encode("ascii") + b"\r\n\r\n" + data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def b_word(text: str, charset: str = "EUC-KR") -> str:
    codec = "cp949" if charset.upper() == "EUC-KR" else charset
    return f"=?{charset}?B?{base64.b64encode(text.encode(codec)).decode()}?="


def multipart(plain: str | None, html: str | None) -> bytes:
    parts = []
    if plain is not None:
        parts.append(
            b"Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + quopri.encodestring(plain.encode())
        )
    if html is not None:
        parts.append(
            b"Content-Type: text/html; charset=EUC-KR\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(html.encode("cp949"))
        )
    body = b"".join(b"--BOUNDARY\r\n" + p + b"\r\n" for p in parts) + b"--BOUNDARY--\r\n"
    head = (
        f"From: 01012345678@sms.carrier.example\r\nTo: {RCPT}\r\nSubject: SMS\r\n"
        "Message-ID: <mp-1@sms.carrier.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="BOUNDARY"\r\n\r\n'
    )
    return head.encode() + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def parse(raw: bytes, recipients: tuple[str, ...] = (CITY,), now: float = 2e9) -> list[InboundSms]:
    return parse_mail(raw, plan=PLAN, provider="smtp-relay", recipients=list(recipients), now=now)


# --------------------------------------------------------------------------- over real SMTP


async def test_plain_utf8_mail_becomes_inbound_sms() -> None:
    intake = RecordingIntake()
    async with running(intake) as (_, port):
        assert await relay(port, mail()) == {}
    [sms] = intake.calls
    assert sms == InboundSms(
        message_id=f"20250925230000.1@sms.carrier.example/{CITY}",
        provider="smtp-relay",
        to=CITY,
        sender=CITIZEN,
        text="가로등이 꺼졌어요",
        received_at=SENT_AT.timestamp(),
    )


@pytest.mark.parametrize("cte", ["base64", "quoted-printable"])
async def test_euc_kr_body_with_encoded_subject(cte: str) -> None:
    intake = RecordingIntake()
    raw = mail("신호등 고장입니다\n한빛로 12", charset="EUC-KR", cte=cte, subject=b_word("민원"))
    async with running(intake) as (_, port):
        await relay(port, raw)
    assert intake.calls[0].text == "신호등 고장입니다\n한빛로 12"


async def test_cp949_only_syllable_under_euc_kr_label() -> None:
    intake = RecordingIntake()
    # 똠 is CP949 0x8C63, outside EUC-KR's 2,350 syllables: the relay labels it EUC-KR anyway.
    async with running(intake) as (_, port):
        await relay(port, mail("똠방각하 민원", charset="EUC-KR", codec="cp949", cte="base64"))
    assert intake.calls[0].text == "똠방각하 민원"


async def test_empty_body_uses_the_encoded_subject() -> None:
    intake = RecordingIntake()
    raw = mail("", charset="EUC-KR", cte="base64", subject=b_word("똠 민원 접수"))
    async with running(intake) as (_, port):
        await relay(port, raw)
    assert intake.calls[0].text == "똠 민원 접수"


async def test_multipart_alternative_prefers_text_plain() -> None:
    intake = RecordingIntake()
    async with running(intake) as (_, port):
        await relay(port, multipart("평문 본문", "<p>HTML 본문</p>"))
    assert intake.calls[0].text == "평문 본문"


async def test_html_only_mail_is_stripped_of_tags() -> None:
    intake = RecordingIntake()
    html = (
        "<html><head><style>p {color: red}</style></head><body><p>가로등&amp;신호등</p>"
        "<div>한빛로<br>12번지</div><script>x()</script></body></html>"
    )
    async with running(intake) as (_, port):
        await relay(port, multipart(None, html))
    assert intake.calls[0].text == "가로등&신호등\n\n한빛로\n12번지"


async def test_duplicate_message_id_is_250_both_times_and_stored_once() -> None:
    intake = RecordingIntake()
    async with running(intake) as (_, port):
        assert await relay(port, mail()) == {}
        assert await relay(port, mail()) == {}  # the relay did not see our first 250 and retried
    assert len(intake.calls) == 2
    assert len(intake.stored) == 1


async def test_several_recipients_are_normalised_and_get_their_own_ids() -> None:
    intake = RecordingIntake()
    rcpts = (RCPT, "031-900-2001@SMS.Hanbit.go.kr", "+82319002000@sms.hanbit.go.kr")
    async with running(intake) as (_, port):
        await relay(port, mail(), rcpts=rcpts)
    assert [s.to for s in intake.calls] == [CITY, CITY_2]  # the third is the first again
    assert len({s.message_id for s in intake.calls}) == 2


@pytest.mark.parametrize(
    ("rcpt", "reason"),
    [
        ("0319009999@sms.hanbit.go.kr", "5.1.1 recipient is not a city number served here"),
        ("duty@sms.hanbit.go.kr", "5.1.1 recipient is not a phone number"),
        ("0319002000@other.example", "5.1.2 recipient domain is not sms.hanbit.go.kr"),
    ],
)
async def test_unknown_recipient_is_refused_at_rcpt(rcpt: str, reason: str) -> None:
    intake = RecordingIntake()
    async with running(intake) as (_, port):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            await relay(port, mail(), rcpts=(rcpt,))
    assert info.value.recipients[rcpt] == (550, reason.encode())
    assert intake.calls == []


async def test_known_and_unknown_recipient_delivers_to_the_known_one() -> None:
    intake = RecordingIntake()
    async with running(intake) as (_, port):
        refused = await relay(port, mail(), rcpts=("0319009999@sms.hanbit.go.kr", RCPT))
    assert refused == {"0319009999@sms.hanbit.go.kr": (550, b"5.1.1 recipient is not a city number served here")}
    assert [s.to for s in intake.calls] == [CITY]


async def test_disallowed_envelope_sender_is_refused_at_mail() -> None:
    intake = RecordingIntake()
    async with running(intake) as (_, port):
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            await relay(port, mail(), sender="spam@sms.carrier.example.evil")
    assert (info.value.smtp_code, info.value.smtp_error) == (550, b"5.7.1 sender not allowed")


async def test_full_address_sender_allowlist_entry() -> None:
    intake = RecordingIntake()
    settings = replace(SETTINGS, senders=("Gateway@Relay.example",))
    async with running(intake, settings) as (_, port):
        await relay(port, mail(), sender="gateway@relay.example")
        with pytest.raises(smtplib.SMTPSenderRefused):
            await relay(port, mail(), sender="other@relay.example")
    assert len(intake.calls) == 1


async def test_disallowed_peer_is_refused_at_mail() -> None:
    intake = RecordingIntake()
    async with running(intake, replace(SETTINGS, peers=("10.0.0.0/8",))) as (_, port):
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            await relay(port, mail())
    assert (info.value.smtp_code, info.value.smtp_error) == (550, b"5.7.1 client host not allowed")
    assert intake.calls == []


async def test_oversized_mail_is_552_at_mail_when_the_relay_declares_size() -> None:
    intake = RecordingIntake()
    async with running(intake, replace(SETTINGS, max_bytes=1024)) as (_, port):
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            await relay(port, mail("가로등이 꺼졌어요\n" * 100))
    assert info.value.smtp_code == 552
    assert intake.calls == []


async def test_oversized_mail_is_552_after_data_without_size() -> None:
    intake = RecordingIntake()

    def without_size(port: int) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo()
            assert client.mail(RELAY)[0] == 250  # no SIZE= parameter: the limit hits in DATA
            assert client.rcpt(RCPT)[0] == 250
            return client.data(mail("가로등이 꺼졌어요\n" * 100))

    async with running(intake, replace(SETTINGS, max_bytes=1024)) as (_, port):
        code, _ = await asyncio.to_thread(without_size, port)
    assert code == 552
    assert intake.calls == []


async def test_missing_message_id_is_550() -> None:
    intake = RecordingIntake()
    async with running(intake) as (_, port):
        with pytest.raises(smtplib.SMTPDataError) as info:
            await relay(port, mail(message_id=None))
    assert (info.value.smtp_code, info.value.smtp_error) == (550, b"5.6.0 Message-ID header is required (idempotency)")
    assert intake.calls == []


@pytest.mark.parametrize(
    ("body", "charset", "reason"),
    [
        (b"\xff\xfe\xfd invalid", "EUC-KR", b"5.6.0 body is not valid EUC-KR"),
        ("가로등".encode("cp949"), "UTF-8", b"5.6.0 body is not valid UTF-8"),
    ],
)
async def test_invalid_bytes_for_the_declared_charset_are_550(body: bytes, charset: str, reason: bytes) -> None:
    intake = RecordingIntake()
    async with running(intake) as (_, port):
        with pytest.raises(smtplib.SMTPDataError) as info:
            await relay(port, mail(body, charset=charset, cte="base64"))
    assert (info.value.smtp_code, info.value.smtp_error) == (550, reason)
    assert intake.calls == []


async def test_store_down_is_451_and_the_retry_is_stored_exactly_once() -> None:
    intake = FlakyIntake(failures=1)
    async with running(intake) as (server, port):
        with pytest.raises(smtplib.SMTPDataError) as info:
            await relay(port, mail())
        assert (info.value.smtp_code, info.value.smtp_error) == (451, b"4.3.0 temporarily unavailable, try again")
        assert intake.stored == {}
        assert await relay(port, mail()) == {}  # the relay's retry
        # What /metrics reports as gateway_smtp_replies_total{command, code}.
        assert server.handler.replies == {
            ("MAIL", "250"): 2,
            ("RCPT", "250"): 2,
            ("DATA", "451"): 1,
            ("DATA", "250"): 1,
        }
    assert list(intake.stored) == [f"20250925230000.1@sms.carrier.example/{CITY}"]


async def test_intake_rejection_is_550_with_its_message() -> None:
    intake = RaisingIntake(InboundRejected("sender and recipient must be phone numbers"))
    async with running(intake) as (_, port):
        with pytest.raises(smtplib.SMTPDataError) as info:
            await relay(port, mail())
    assert (info.value.smtp_code, info.value.smtp_error) == (550, b"5.6.0 sender and recipient must be phone numbers")


async def test_unexpected_error_is_451_and_logged_with_masked_numbers(caplog: pytest.LogCaptureFixture) -> None:
    intake = RaisingIntake(RuntimeError("boom"))
    with caplog.at_level(logging.ERROR, logger="gateway.inbox.smtp"):
        async with running(intake) as (_, port):
            with pytest.raises(smtplib.SMTPDataError) as info:
                await relay(port, mail())
    assert info.value.smtp_code == 451
    [record] = [r for r in caplog.records if r.exc_info]
    assert "010-****-5678" in record.getMessage()
    assert "1234" not in record.getMessage()
    assert "RuntimeError: boom" in caplog.text  # the traceback is there


async def test_draining_answers_421_to_new_commands_and_refuses_new_connections() -> None:
    intake = RecordingIntake()
    async with running(intake) as (server, port):
        client = smtplib.SMTP(timeout=10)
        await asyncio.to_thread(client.connect, "127.0.0.1", port)
        await asyncio.to_thread(client.ehlo)
        await server.drain(timeout=1)
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            await asyncio.to_thread(client.sendmail, RELAY, [RCPT], mail())
        assert (info.value.smtp_code, info.value.smtp_error) == (421, b"4.3.2 shutting down")
        with pytest.raises(ConnectionRefusedError):
            await relay(port, mail())
    assert intake.calls == []


async def test_drain_waits_for_the_mail_in_flight() -> None:
    intake = GatedIntake()
    async with running(intake) as (server, port):
        delivery = asyncio.create_task(relay(port, mail()))
        await asyncio.wait_for(intake.entered.wait(), 5)
        drain = asyncio.create_task(server.drain(timeout=5))
        await asyncio.sleep(0.05)
        assert not drain.done()  # a mail being stored is not cut off by the shutdown
        intake.gate.set()
        assert await delivery == {}
        await asyncio.wait_for(drain, 5)
    assert len(intake.stored) == 1


async def test_stop_closes_idle_sessions() -> None:
    server = SmtpIntake(SETTINGS, RecordingIntake())
    _, port = await server.start()
    client = smtplib.SMTP(timeout=10)
    await asyncio.to_thread(client.connect, "127.0.0.1", port)
    await server.stop(timeout=1)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        await asyncio.to_thread(client.noop)
    client.close()


# --------------------------------------------------------------------------- parse_mail


def test_parse_x_sms_from_wins_over_from() -> None:
    raw = mail(sender="noreply@sms.carrier.example", extra=("X-SMS-From: 010-9876-5432",))
    assert parse(raw)[0].sender == "+821098765432"


def test_parse_number_in_display_name() -> None:
    raw = mail(sender=f'"{b_word("홍길동")} 010-1234-5678" <noreply@sms.carrier.example>')
    assert parse(raw)[0].sender == CITIZEN


def test_parse_international_form_in_local_part() -> None:
    assert parse(mail(sender="+821012345678@sms.carrier.example"))[0].sender == CITIZEN


def test_parse_without_sender_number_is_rejected() -> None:
    with pytest.raises(MailRejected, match=r"^5\.1\.7 no sender phone number"):
        parse(mail(sender=f'"{b_word("홍길동")}" <noreply@sms.carrier.example>'))


def test_parse_message_id_strips_brackets_and_is_per_recipient() -> None:
    out = parse(mail(message_id="  <abc@relay>  "), recipients=(CITY, CITY_2, CITY))
    assert [s.message_id for s in out] == [f"abc@relay/{CITY}", f"abc@relay/{CITY_2}"]


@pytest.mark.parametrize("message_id", ["<>", "<" + "x" * 300 + "@relay>"])
def test_parse_rejects_empty_or_huge_message_id(message_id: str) -> None:
    with pytest.raises(MailRejected, match=r"^5\.6\.0 Message-ID"):
        parse(mail(message_id=message_id))


def test_parse_date_handling() -> None:
    now = time.time()
    assert parse(mail(), now=now)[0].received_at == SENT_AT.timestamp()
    future = mail(extra=())
    future = future.replace(
        format_datetime(SENT_AT).encode(), format_datetime(datetime.now(KST) + timedelta(hours=2)).encode()
    )
    assert parse(future, now=now)[0].received_at == now
    garbage = mail().replace(format_datetime(SENT_AT).encode(), b"not a date")
    assert parse(garbage, now=now)[0].received_at == now
    minus_zero = mail().replace(format_datetime(SENT_AT).encode(), b"Thu, 25 Sep 2025 14:00:00 -0000")
    assert parse(minus_zero, now=now)[0].received_at == SENT_AT.timestamp()


def test_parse_undeclared_charset_is_strict_utf8() -> None:
    raw = mail("안녕하세요").replace(b"; charset=utf-8", b"")
    assert parse(raw)[0].text == "안녕하세요"
    with pytest.raises(MailRejected, match="body is not valid UTF-8"):
        parse(mail("안녕하세요", charset="cp949").replace(b"; charset=cp949", b""))


def test_parse_euc_kr_make_up_sequence() -> None:
    # Python's euc_kr writes 똠 as the KS X 1001 8-byte make-up sequence (filler + jamo).
    assert "똠".encode("euc_kr") == b"\xa4\xd4\xa4\xa8\xa4\xc7\xa4\xb1"
    assert parse(mail("똠방각하", charset="EUC-KR", cte="base64"))[0].text == "똠방각하"


def test_parse_korean_charset_aliases_decode_as_cp949() -> None:
    for label in ("ks_c_5601-1987", "CP949", "x-windows-949"):
        assert parse(mail("똠", charset="cp949").replace(b"charset=cp949", f"charset={label}".encode()))[0].text == "똠"


def test_parse_unsupported_charset() -> None:
    raw = mail("abc").replace(b"charset=utf-8", b"charset=x-martian")
    with pytest.raises(MailRejected, match=r"^5\.6\.1 unsupported charset x-martian"):
        parse(raw)


def test_parse_invalid_encoded_subject_is_rejected_only_when_needed() -> None:
    bad_subject = "=?EUC-KR?B?" + base64.b64encode(b"\xff\xff").decode() + "?="
    assert parse(mail("본문", subject=bad_subject))[0].text == "본문"
    with pytest.raises(MailRejected, match="Subject header is not valid EUC-KR"):
        parse(mail("", subject=bad_subject))


def test_parse_raw_utf8_subject_rfc6532() -> None:
    raw = mail("", subject="SMS").replace(b"Subject: SMS", "Subject: 가로등 고장".encode())
    assert parse(raw)[0].text == "가로등 고장"


def test_parse_qp_utf8_subject_word() -> None:
    raw = mail("", subject="=?UTF-8?Q?" + quopri.encodestring("쓰레기".encode(), header=True).decode() + "?=")
    assert parse(raw)[0].text == "쓰레기"


def test_parse_mail_without_text_part() -> None:
    raw = (
        b"From: 01012345678@sms.carrier.example\r\nMessage-ID: <a@b>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n"
    )
    with pytest.raises(MailRejected, match=r"^5\.6\.0 no text/plain or text/html part"):
        parse(raw)


def test_parse_normalises_line_endings_and_trailing_space() -> None:
    assert parse(mail("  첫 줄  \r\n둘째 줄\t\r\n\r\n"))[0].text == "첫 줄\n둘째 줄"


def test_settings_validation() -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match=r"smtp\.peers"):
        replace(SETTINGS, peers=("not-a-network",))
    with pytest.raises(ConfigError, match=r"smtp\.city_numbers"):
        replace(SETTINGS, city_numbers=frozenset({"0319002000"}))
    settings = SmtpSettings(
        host="127.0.0.1",
        port=0,
        peers=["::1/128"],  # type: ignore[arg-type]
        senders=["@X.example"],  # type: ignore[arg-type]
        recipient_domain="SMS.Example",
        city_numbers={CITY},  # type: ignore[arg-type]
    )
    assert settings.senders == ("@x.example",) and settings.recipient_domain == "sms.example"
