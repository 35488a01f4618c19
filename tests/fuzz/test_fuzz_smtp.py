"""Fuzzing the SMTP intake: random relayed mails through `parse_mail` and over real SMTP.

`parse_mail` must return messages or raise `MailRejected` (a 550 with a reason): anything else
becomes a 451 and the relay retries a mail that can never succeed, forever.
"""

from __future__ import annotations

import asyncio
import base64
import quopri
import smtplib
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.domain.numbers import NumberPlan
from gateway.domain.routing import InboundSms
from gateway.inbox.smtp import MailRejected, SmtpIntake, SmtpSettings, parse_mail

pytestmark = pytest.mark.fuzz

CITY = "+82319002000"
RCPT = "0319002000@sms.hanbit.go.kr"
RELAY = "relay@sms.carrier.example"
PLAN = NumberPlan()
SETTINGS = SmtpSettings(
    host="127.0.0.1",
    port=0,
    peers=("127.0.0.1/32",),
    senders=("@sms.carrier.example",),
    recipient_domain="sms.hanbit.go.kr",
    city_numbers=frozenset({CITY}),
)

CHARSETS = [
    "utf-8",
    "UTF-8",
    "euc-kr",
    "EUC-KR",
    "cp949",
    "ks_c_5601-1987",
    "us-ascii",
    "iso-8859-1",
    "utf-16",
    "utf-7",
    "idna",
    "punycode",
    "rot13",
    "base64",
    "hex",
    "zlib",
    "uu",
    "unicode_escape",
    "unknown-8bit",
    "x-unknown",
    "",
    '"euc-kr"',
]
TEXTS = st.one_of(st.text(max_size=80), st.sampled_from(["가로등이 꺼졌어요", "똠방각하 민원", "수신거부", "STOP", ""]))


def encode(text: str, charset: str) -> bytes:
    codec = {"euc-kr": "cp949", "ks_c_5601-1987": "cp949", "": "utf-8", '"euc-kr"': "cp949"}.get(
        charset.lower(), charset
    )
    try:
        return text.encode(codec, "replace")
    except (LookupError, UnicodeError, TypeError):
        return text.encode("utf-8")


@st.composite
def encoded_words(draw: st.DrawFn) -> str:
    """An RFC 2047 header value: plain, well-formed encoded words, or broken ones."""
    kind = draw(st.sampled_from(["plain", "b", "q", "broken"]))
    charset = draw(st.sampled_from(CHARSETS)) or "utf-8"
    text = draw(TEXTS)
    if kind == "plain":
        return "".join(c for c in text if 32 <= ord(c) < 127)
    if kind == "b":
        return f"=?{charset}?B?{base64.b64encode(encode(text, charset)).decode()}?="
    if kind == "q":
        return f"=?{charset}?Q?{quopri.encodestring(encode(text, charset), header=True).decode()}?="
    return draw(
        st.sampled_from(
            [
                "=?utf-8?B?!!!?=",
                "=?utf-8?B?YQ?=",
                "=?euc-kr?Q?=FF=FE?=",
                "=?rot13?B?YWJj?=",
                "=??B?YWJj?=",
                "=?utf-8?X?abc?=",
                "=?utf-8*ko?B?6rCA?=",
                "=?idna?Q?" + "a" * 80 + "?=",
                "=?base64?B?YWJj?=",
                "=?utf-16?B?2D0=?=",
            ]
        )
    )


@st.composite
def body_parts(draw: st.DrawFn) -> bytes:
    """One MIME entity (headers + body) with a random type, charset and transfer encoding."""
    ctype = draw(
        st.sampled_from(
            ["text/plain", "text/html", "text/PLAIN", "application/octet-stream", "text/x-y", "image/png", "text"]
        )
    )
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(["8bit", "7bit", "base64", "quoted-printable", "binary", "x-garbage", "BASE64", ""]))
    text = draw(TEXTS)
    if ctype == "text/html":
        text = draw(st.sampled_from(["<p>", "<script>x</script>", "<br/>", "&amp;", "&#xD800;", "<", ""])) + text
    data = draw(st.one_of(st.just(encode(text, charset)), st.binary(max_size=120)))
    if cte.lower() == "base64":
        data = draw(st.sampled_from([base64.encodebytes(data), data, base64.encodebytes(data)[:-3]]))
    elif cte == "quoted-printable":
        data = draw(st.sampled_from([quopri.encodestring(data), data + b"=", data + b"=ZZ"]))
    head = f"Content-Type: {ctype}" + (f"; charset={charset}" if charset else "")
    if cte:
        head += f"\r\nContent-Transfer-Encoding: {cte}"
    return head.encode() + b"\r\n\r\n" + data


@st.composite
def mails(draw: st.DrawFn) -> bytes:
    headers: list[bytes] = []
    message_id = draw(
        st.one_of(
            st.none(),
            st.sampled_from(["<m1@relay.example>", "<>", "", "<" + "x" * 300 + ">", "<\u00e9@x>", "<a b@c>"]),
            st.text(max_size=30),
        )
    )
    if message_id is not None:
        headers.append(b"Message-ID: " + message_id.encode("utf-8", "surrogateescape"))
    sender = draw(
        st.sampled_from(
            [
                "01012345678@sms.carrier.example",
                '"010-1234-5678" <noreply@carrier.example>',
                "noreply@carrier.example",
                "",
                "<>",
                "a, b, c",
                "=?euc-kr?B?!!?= <x@y>",
                "@@@",
            ]
        )
    )
    headers.append(b"From: " + sender.encode())
    if draw(st.booleans()):
        headers.append(b"X-SMS-From: " + draw(encoded_words()).encode("utf-8", "surrogateescape"))
    headers.append(b"Subject: " + draw(encoded_words()).encode("utf-8", "surrogateescape"))
    date = draw(
        st.one_of(
            st.none(),
            st.sampled_from(
                [
                    "Thu, 25 Sep 2025 23:00:00 +0900",
                    "Thu, 25 Sep 99999999999 23:00:00 +0900",
                    "Mon, 1 Jan 0001 00:00:00 -2359",
                    "Fri, 31 Dec 9999 23:59:59 -2359",
                    "garbage",
                    "",
                    "Thu, 25 Sep 2025 25:61:61 +0900",
                    "Thu, 25 Sep 2025 23:00:00 +9999",
                    "1 Jan 1970 00:00:00 -0000",
                ]
            ),
            st.text(max_size=20),
        )
    )
    if date is not None:
        headers.append(b"Date: " + date.encode("utf-8", "surrogateescape"))
    if draw(st.booleans()):
        headers.append(b"MIME-Version: 1.0")
    structure = draw(st.sampled_from(["single", "multipart", "nested", "broken-multipart"]))
    if structure == "single":
        part = draw(body_parts())
        head, _, body = part.partition(b"\r\n\r\n")
        raw = b"\r\n".join(headers) + b"\r\n" + head + b"\r\n\r\n" + body
    else:
        parts = draw(st.lists(body_parts(), max_size=3))
        if structure == "nested" and parts:
            inner = b"".join(b"--IN\r\n" + p + b"\r\n" for p in parts) + b"--IN--\r\n"
            parts = [b'Content-Type: multipart/alternative; boundary="IN"\r\n\r\n' + inner]
        body = b"".join(b"--B\r\n" + p + b"\r\n" for p in parts)
        if structure != "broken-multipart":
            body += b"--B--\r\n"
        subtype = draw(st.sampled_from(["alternative", "mixed", "related", "x-unknown"]))
        boundary = draw(st.sampled_from(['"B"', "B", '""', ""]))
        raw = (
            b"\r\n".join(headers)
            + f"\r\nContent-Type: multipart/{subtype}; boundary={boundary}\r\n\r\n".encode()
            + body
        )
    # A few raw corruptions of the whole mail: invalid bytes, cut short, lone CR/LF.
    if draw(st.booleans()):
        at = draw(st.integers(0, len(raw)))
        raw = (
            raw[:at]
            + draw(st.sampled_from([b"\xff", b"\x00", b"\r", b"\n", b"\r\n\r\n", b":", b"\x80\x80"]))
            + raw[at:]
        )
    if draw(st.integers(0, 9)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


def parse(raw: bytes) -> list[InboundSms]:
    return parse_mail(raw, plan=PLAN, provider="smtp-relay", recipients=[CITY], now=2e9)


GOOD = (
    b"From: 01012345678@sms.carrier.example\r\nSubject: SMS\r\nMessage-ID: <good-1@sms.carrier.example>\r\n"
    b"Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + "가로등이 꺼졌어요".encode()
)


def with_header(name: str, value: str) -> bytes:
    return GOOD.replace(b"Subject: SMS\r\n", f"Subject: SMS\r\n{name}: {value}\r\n".encode())


@given(raw=mails())
@example(raw=GOOD.replace(b"charset=UTF-8", b"charset=rot13"))  # regression: LookupError escaped
@example(raw=GOOD.replace(b"charset=UTF-8", b"charset=base64"))  # regression: LookupError escaped
@example(raw=GOOD.replace(b"charset=UTF-8", b"charset=idna").replace("가로등이 꺼졌어요".encode(), b"a" * 80))
@example(raw=GOOD.replace(b"Subject: SMS", b"Subject: =?utf-8?B?!!!?="))
@example(
    raw=GOOD.replace(b"Subject: SMS", b"Subject: =?idna?Q?" + b"a" * 80 + b"?=").replace(
        "가로등이 꺼졌어요".encode(), b""
    )
)
@example(raw=with_header("Date", "Thu, 25 Sep 99999999999 23:00:00 +0900"))
@example(raw=with_header("Date", "Fri, 31 Dec 9999 23:59:59 -2359"))
def test_parse_mail_returns_messages_or_raises_mail_rejected(raw: bytes) -> None:
    try:
        messages = parse(raw)
    except MailRejected as exc:
        assert exc.reason[:1] == "5" and exc.reason[1:2] == "." and len(exc.reason) > 6, exc.reason
        return
    assert [m.to for m in messages] == [CITY]
    for sms in messages:
        assert sms.sender.startswith("+") and sms.message_id.endswith(f"/{CITY}")
        assert sms.received_at <= 2e9 + 300


# --------------------------------------------------------------------------- over real SMTP


class RecordingIntake:
    def __init__(self) -> None:
        self.calls: list[InboundSms] = []

    async def accept(self, sms: InboundSms) -> object:
        self.calls.append(sms)
        return "accepted"


def send(port: int, raw: bytes) -> tuple[int, str]:
    """One relay transaction: the reply code and text to DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        try:
            client.sendmail(RELAY, [RCPT], raw)
        except smtplib.SMTPDataError as exc:
            error = exc.smtp_error
            return exc.smtp_code, error.decode("ascii", "replace") if isinstance(error, bytes) else error
        return 250, "OK"


async def transaction(port: int, raw: bytes) -> tuple[int, str]:
    return await asyncio.to_thread(send, port, raw)


@given(raw=mails())
@example(raw=GOOD.replace(b"charset=UTF-8", b"charset=rot13"))
async def test_any_mail_over_smtp_gets_250_or_a_clear_5xx_never_a_retry(raw: bytes) -> None:
    intake = RecordingIntake()
    server = SmtpIntake(SETTINGS, intake)
    _, port = await server.start()
    try:
        code, text = await transaction(port, raw)
        good = await transaction(port, GOOD)
    finally:
        await server.stop(timeout=2)
    assert code in (250, 550), (code, text)  # 451 would make the relay retry a mail that cannot succeed
    if code == 550:
        assert text.startswith("5.") and len(text) > 6
    assert good == (250, "OK")


async def test_malformed_mail_gets_a_clear_5xx_and_the_next_good_one_250() -> None:
    intake = RecordingIntake()
    server = SmtpIntake(SETTINGS, intake)
    _, port = await server.start()
    cases: dict[str, Any] = {
        "unsupported charset": GOOD.replace(b"charset=UTF-8", b"charset=x-klingon"),
        "not valid": GOOD.replace("가로등이 꺼졌어요".encode(), b"\xff\xfe\xfd"),
        "Message-ID": GOOD.replace(b"Message-ID: <good-1@sms.carrier.example>\r\n", b""),
        "sender phone number": GOOD.replace(b"From: 01012345678@", b"From: nobody@"),
    }
    try:
        for reason, raw in cases.items():
            code, text = await transaction(port, raw)
            assert code == 550 and reason in text, (reason, code, text)
            assert await transaction(port, GOOD) == (250, "OK")
    finally:
        await server.stop(timeout=2)
    assert len(intake.calls) == len(cases)
