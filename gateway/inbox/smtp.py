"""SMTP intake edge (flow B): citizens' SMS that a carrier relays to the city as e-mail.

One carrier delivers SMS sent to the city's landline-based numbers as mail to
``<city number>@<recipient_domain>``. This module runs an aiosmtpd server on the gateway's own
asyncio loop, turns each mail into one `InboundSms` per recipient and hands it to the intake core.

The SMTP answer carries the durability contract of flow B (see DESIGN.md):

- ``250`` only once the intake core accepted the message (a duplicate - a relay retry - is a
  success too: the intake's idempotency decides, this edge does not);
- ``451 4.3.0`` when the store is down or anything unexpected happened, so the relay retries;
- ``421 4.3.2`` while the gateway drains for shutdown, so the relay retries elsewhere or later;
- ``5xx`` only for mail that can never succeed (not ours, malformed, undecodable), so the relay
  bounces it instead of retrying forever.

Where each check lives, and why:

- Peer (client IP) allowlist: at ``MAIL`` (``550 5.7.1``). aiosmtpd 1.4 has no connection hook
  and writes the ``220`` greeting itself; the handler-object API starts at ``HELO``/``EHLO``.
  ``MAIL`` is the first command of every transaction and ``RCPT``/``DATA`` require a successful
  ``MAIL``, so rejecting there is the one gate that cannot be bypassed, without subclassing
  aiosmtpd's private protocol internals.
- Envelope sender allowlist: at ``MAIL`` (``550 5.7.1``).
- Recipient (city number we own): at ``RCPT`` (``550 5.1.1`` / ``550 5.1.2``), so the relay
  learns per recipient and never sends a body for nobody.
- Size: aiosmtpd's ``data_size_limit`` answers ``552`` to ``MAIL ... SIZE=`` and after an
  oversized ``DATA``; `SmtpHandler.handle_DATA` checks again (defence in depth).
- Encryption: STARTTLS (RFC 3207) is offered when ``smtp.tls_cert``/``tls_key`` are set; with
  ``require_tls`` aiosmtpd answers ``530`` to every transaction command before it.
- Time: aiosmtpd's ``timeout`` (``smtp.idle_timeout_s``) closes a session silent that long; it
  restarts on valid commands only, so it also bounds one whole ``DATA``.
- Content (MIME, charsets, sender number, Message-ID): `parse_mail`, a pure function.

What `parse_mail` accepts as the citizen's number, first match wins:

1. an ``X-SMS-From`` header (``01012345678``, ``010-1234-5678``, ``+821012345678``);
2. the local part of the ``From`` address (``01012345678@sms.carrier.example``);
3. a phone number in the ``From`` display name (``"010-1234-5678" <noreply@carrier.example>``).

The SMS text is the preferred body part (``text/plain``, else ``text/html`` with tags stripped);
when the body is empty the ``Subject`` is used (some relays put short messages there).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ipaddress
import logging
import re
import ssl
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email import policy
from email.header import decode_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP

from gateway.domain.inputs import has_surrogate
from gateway.domain.models import NumberKind
from gateway.domain.numbers import NumberPlan, mask
from gateway.domain.routing import InboundSms
from gateway.errors import ConfigError, GatewayError, StoreUnavailable
from gateway.infra.connlimit import ConnectionGate
from gateway.infra.edgelog import MalformedLog
from gateway.infra.tls import TlsFileError, server_context

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024
MAX_RECIPIENTS = 20
MAX_MESSAGE_ID = 250
# A Date header this far ahead of our clock is wrong (relay clock or forged); routing depends on
# the receive time (duty at night), so we fall back to "now" rather than trust it.
MAX_FUTURE_SKEW_S = 300.0

# SMTP replies. aiosmtpd encodes replies as ASCII (SMTPUTF8 is off), so every reply that carries
# text from elsewhere goes through `_reply`.
OK = "250 OK"
TEMPFAIL = "451 4.3.0 temporarily unavailable, try again"
SHUTTING_DOWN = "421 4.3.2 shutting down"
PEER_REFUSED = "550 5.7.1 client host not allowed"
SENDER_REFUSED = "550 5.7.1 sender not allowed"
TOO_BIG = "552 5.3.4 message too big"
TOO_MANY_RECIPIENTS = "452 4.5.3 too many recipients"

# Everything Korean mail calls "EUC-KR" in practice is CP949 (Unified Hangul Code): phones and
# relays emit its 8,822 extra precomposed syllables (똠, 햏: not among the 2,350 of KS X 1001) under
# the EUC-KR label; Python's euc_kr codec rejects them.
# CP949 is a strict superset of EUC-KR, so decoding with it loses nothing.
_KOREAN_CHARSETS = frozenset(
    {
        "euc-kr",
        "euc_kr",
        "euckr",
        "cp949",
        "ms949",
        "uhc",
        "x-windows-949",
        "windows-949",
        "ks_c_5601-1987",
        "ks_c_5601",
        "ksc5601",
        "ksc_5601",
        "korean",
    }
)
_UTF8_CHARSETS = frozenset({"utf-8", "utf8", "unknown-8bit"})  # unknown-8bit: raw 8-bit headers (RFC 6532)
_PHONE_IN_TEXT = re.compile(r"\+?\d[\d\s\-.()]{6,}\d")
_SENDER_KINDS = frozenset({NumberKind.MOBILE, NumberKind.LANDLINE, NumberKind.SPECIAL, NumberKind.INTERNATIONAL})
_NON_REPLY = re.compile(r"[^\x20-\x7e]")


class MailRejected(GatewayError):
    """The mail can never become a citizen SMS; ``reason`` is an enhanced status code and text.

    ``str(exc)`` is the reason, e.g. ``"5.6.0 body is not valid EUC-KR"``; the SMTP edge answers
    ``550 <reason>``.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class IntakePort(Protocol):
    """The intake core as this edge sees it (implemented by ``gateway.inbox.intake.Intake``)."""

    async def accept(self, sms: InboundSms) -> object:
        """Store ``sms`` durably and route it; return when durable.

        Raises `StoreUnavailable` when the message is not durable and other `GatewayError`
        subclasses for input it rejects. A repeated message id is a success (duplicate).
        """
        ...


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where the SMTP intake listens and whom it believes.

    ``peers``: client IP networks allowed to send (``"127.0.0.1/32"``, ``"10.1.2.0/24"``).
    ``senders``: allowed envelope senders (``MAIL FROM``), each either ``"@domain"`` (any address
    at exactly that domain) or a full address; matching ignores case.
    ``recipient_domain``: the domain of ``RCPT TO`` addresses; their local part is a phone number
    that must normalise to one of ``city_numbers`` (E.164).
    """

    host: str
    port: int
    peers: tuple[str, ...]
    senders: tuple[str, ...]
    recipient_domain: str
    city_numbers: frozenset[str]
    max_bytes: int = DEFAULT_MAX_BYTES
    provider: str = "smtp-relay"
    # Our name in the greeting and EHLO. Set explicitly: aiosmtpd's default is socket.getfqdn(),
    # a blocking DNS lookup per connection on the loop that also runs the PBX edge.
    server_name: str = "sms-gateway.invalid"
    # aiosmtpd's `timeout`: a client silent this long is disconnected. Restarted by each valid
    # command only, so it also bounds a whole DATA (a relay that stalls or trickles mid-mail).
    idle_timeout_s: float = 60.0
    # Sessions open at once; one more is answered "421" and closed (a relay opens a handful).
    max_connections: int = 100
    # STARTTLS (RFC 3207) with this PEM certificate chain and unencrypted PEM key; "": not offered.
    tls_cert: str = ""
    tls_key: str = ""
    # Refuse every transaction command before STARTTLS (530); needs tls_cert.
    require_tls: bool = False
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Accept lists from YAML/config code while keeping the dataclass hashable and immutable.
        object.__setattr__(self, "peers", tuple(self.peers))
        object.__setattr__(self, "senders", tuple(s.strip().lower() for s in self.senders))
        object.__setattr__(self, "city_numbers", frozenset(self.city_numbers))
        object.__setattr__(self, "recipient_domain", self.recipient_domain.strip().lower())
        try:
            networks = tuple(ipaddress.ip_network(p, strict=False) for p in self.peers)
        except ValueError as exc:
            raise ConfigError(f"smtp.peers: {exc}") from exc
        object.__setattr__(self, "networks", networks)
        if self.max_bytes <= 0:
            raise ConfigError("smtp.max_bytes: must be positive")
        bad = sorted(n for n in self.city_numbers if not n.startswith("+"))
        if bad:
            raise ConfigError(f"smtp.city_numbers: not E.164: {', '.join(bad)}")
        if self.idle_timeout_s <= 0:
            raise ConfigError("smtp.idle_timeout_s: must be positive")
        if self.max_connections < 1:
            raise ConfigError("smtp.max_connections: must be at least 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("smtp.tls_cert and smtp.tls_key: set both or neither")
        if self.require_tls and not self.tls_cert:
            raise ConfigError("smtp.require_tls: needs smtp.tls_cert and smtp.tls_key")

    def tls_context(self) -> ssl.SSLContext | None:
        """The STARTTLS context (None: TLS not configured); a bad file is a `ConfigError`
        naming its setting."""
        if not self.tls_cert:
            return None
        try:
            return server_context(Path(self.tls_cert), Path(self.tls_key))
        except TlsFileError as exc:
            raise ConfigError(f"smtp.tls_{exc.setting}: {exc}") from None


def settings_from_config(section: Mapping[str, Any], source: str) -> SmtpSettings:
    """The settings of gateway.yaml's `smtp:` section (checked by `gateway.infra.config.load_config`:
    schema, TLS files, paths made absolute); `source` names the file in errors."""
    plan = NumberPlan()
    numbers = []
    for raw in section["city_numbers"]:
        number = plan.classify(str(raw)).e164
        if not number.startswith("+"):
            raise ConfigError(f"{source}: smtp.city_numbers: {raw!r} is not a phone number")
        numbers.append(number)
    try:
        return SmtpSettings(
            host=section.get("host", "127.0.0.1"),
            port=int(section["port"]),
            peers=tuple(section["peers"]),
            senders=tuple(section["senders"]),
            recipient_domain=section["recipient_domain"],
            city_numbers=frozenset(numbers),
            max_bytes=int(section.get("max_bytes", DEFAULT_MAX_BYTES)),
            idle_timeout_s=float(section.get("idle_timeout_s", 60.0)),
            max_connections=int(section.get("max_connections", 100)),
            tls_cert=str(section.get("tls_cert", "")),
            tls_key=str(section.get("tls_key", "")),
            require_tls=bool(section.get("require_tls", False)),
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# --------------------------------------------------------------------------- pure MIME logic


def parse_mail(raw: bytes, *, plan: NumberPlan, provider: str, recipients: list[str], now: float) -> list[InboundSms]:
    """Turn one relayed mail into one `InboundSms` per recipient (E.164 city numbers).

    Pure: no I/O, the clock comes in as ``now``. Raises `MailRejected` with an enhanced status
    code and a reason for mail that can never be accepted. Each recipient's copy gets its own
    message id, ``<Message-ID>/<recipient>``: the intake's idempotency key is the message id, so
    two city numbers in one mail must not collide, and suffixing always (not only when there are
    several) keeps the key stable if a relay regroups recipients on retry.
    """
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)  # policy.default always builds EmailMessage
    # policy.default decodes RFC 2047 words leniently (a CP949 syllable under "EUC-KR" turns into
    # U+FFFD silently); a headers-only compat32 parse keeps the raw words for `_words`.
    raw_headers = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)

    # Message-ID and Date are read raw as well: policy.default's structured Message-ID parser
    # raises IndexError on "<>" (CPython 3.11), and we only need the plain strings.
    message_id = _message_id(raw_headers)
    sender = _sender(raw_headers, plan)
    text = _text(msg)
    if not text:
        text = _normalise(_header_text(raw_headers, "Subject"))
    if has_surrogate(text):
        # Some charsets (UTF-7, unicode_escape) decode bytes into lone surrogates: text that
        # cannot be stored or sent. A bounce, like any undecodable mail.
        raise MailRejected("5.6.0 text is not valid Unicode (a lone surrogate)")
    received_at = _received_at(raw_headers, now)
    return [
        InboundSms(
            message_id=f"{message_id}/{to}", provider=provider, to=to, sender=sender, text=text, received_at=received_at
        )
        for to in dict.fromkeys(recipients)
    ]


def _message_id(headers: Message) -> str:
    value = str(headers.get("Message-ID", "")).strip()
    value = value.removeprefix("<").removesuffix(">").strip()
    if not value:
        raise MailRejected("5.6.0 Message-ID header is required (idempotency)")
    if len(value) > MAX_MESSAGE_ID or _NON_REPLY.search(value):
        raise MailRejected("5.6.0 Message-ID is too long or not printable ASCII")
    return value


def _sender(headers: Message, plan: NumberPlan) -> str:
    for candidate in _sender_candidates(headers):
        number = plan.classify(candidate.strip())
        if number.kind in _SENDER_KINDS:
            return number.e164
    raise MailRejected("5.1.7 no sender phone number in X-SMS-From or From")


def _sender_candidates(headers: Message) -> Iterator[str]:
    """Possible sender numbers in order of trust; lazy, so a display name is decoded only if needed."""
    if headers.get("X-SMS-From") is not None:
        yield _header_text(headers, "X-SMS-From")
    raw = headers.get("From")
    if raw is None:
        return
    # Split addresses on the raw (ASCII, encoded-word) form: a decoded display name may hold commas.
    source = raw if isinstance(raw, str) else _words(raw, "From header")
    addresses = getaddresses([source])
    for _, address in addresses:
        yield address.partition("@")[0]
    for display_name, _ in addresses:
        yield from (m.group(0) for m in _PHONE_IN_TEXT.finditer(_words(display_name, "From header")))


def _header_text(headers: Message, name: str) -> str:
    value = headers.get(name)
    return "" if value is None else _words(value, f"{name} header")


def _words(value: object, what: str) -> str:
    """Decode RFC 2047 encoded words strictly in their declared charset (EUC-KR as CP949).

    ``value`` is what a compat32 parse returns: a str (ASCII, encoded words intact) or a
    `email.header.Header` for raw 8-bit headers, which RFC 6532 says are UTF-8.
    """
    parts: list[str] = []
    for chunk, charset in decode_header(value):  # type: ignore[arg-type]  # accepts str or Header
        if isinstance(chunk, str):  # no encoded words: already text
            parts.append(chunk)
        else:
            parts.append(_decode(chunk, charset or "utf-8", what))
    return "".join(parts)


def _text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        raise MailRejected("5.6.0 no text/plain or text/html part")
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    # RFC 2045: a text part without a charset is US-ASCII; UTF-8 is its superset and what a
    # relay that forgets the parameter sends in practice, and it stays strict.
    text = _decode(data, part.get_content_charset() or "utf-8", "body")
    if part.get_content_subtype() == "html":
        text = _html_to_text(text)
    return _normalise(text)


def _decode(data: bytes, charset: str, what: str) -> str:
    name = charset.strip().strip('"').lower()
    if name in _KOREAN_CHARSETS:
        # Both strict. euc_kr first: it also reads KS X 1001's 8-byte make-up sequences (filler +
        # jamo, an old way to write 똠 in EUC-KR) that cp949 would leave as loose jamo; anything
        # beyond EUC-KR fails there and is read as CP949.
        with contextlib.suppress(UnicodeDecodeError):
            return data.decode("euc_kr")
        codec = "cp949"
    elif name in _UTF8_CHARSETS:
        codec = "utf-8"
    else:
        try:
            codec = codecs.lookup(name).name
        except LookupError:
            raise MailRejected(f"5.6.1 unsupported charset {_reply_text(charset)}") from None
    try:
        return data.decode(codec)
    except LookupError:  # a codec that is not a text encoding: rot13, base64, zlib...
        raise MailRejected(f"5.6.1 unsupported charset {_reply_text(charset)}") from None
    except UnicodeError:  # UnicodeDecodeError, and the plain UnicodeError of idna/punycode
        # No guessing: a wrong guess stores a garbled complaint that nobody can read or answer;
        # a bounce tells the relay operator what is wrong.
        raise MailRejected(f"5.6.0 {what} is not valid {_reply_text(charset).upper()}") from None


def _received_at(headers: Message, now: float) -> float:
    raw = headers.get("Date")
    if raw is None:
        return now
    try:
        when = parsedate_to_datetime(str(raw))
        if when.tzinfo is None:  # "-0000": RFC 5322 says the time is UTC, origin zone unknown
            when = when.replace(tzinfo=UTC)
        stamp = when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):  # Overflow: a year of 11 digits
        return now
    return now if stamp > now + MAX_FUTURE_SKEW_S else stamp


def _normalise(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


class _TextExtractor(HTMLParser):
    """Visible text of an HTML body: tags dropped, block elements become line breaks."""

    _BREAKS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"})
    _HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            # Source line breaks inside HTML are layout, not content.
            self.parts.append(re.sub(r"\s+", " ", data))


def _html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line.strip() for line in text.split("\n")))


def _reply_text(text: str, limit: int = 200) -> str:
    """Make text safe for an SMTP reply line: printable ASCII, one line, bounded."""
    return _NON_REPLY.sub("?", text)[:limit]


# --------------------------------------------------------------------------- aiosmtpd handler


class SmtpHandler:
    """aiosmtpd handler object: the hooks run on the gateway's loop, one instance for all sessions."""

    def __init__(self, settings: SmtpSettings, intake: IntakePort, *, plan: NumberPlan | None = None) -> None:
        self.settings = settings
        self.intake = intake
        self.plan = plan or NumberPlan()
        self.draining = False
        self.replies: dict[tuple[str, str], int] = {}  # (command, reply code) for /metrics
        self.malformed = MalformedLog(log)  # refused mail: one WARNING per kind, rate-limited
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def _tally(self, command: str, reply: str) -> str:
        key = (command, reply[:3])
        self.replies[key] = self.replies.get(key, 0) + 1
        return reply

    # -- helpers

    def _refuse_when_draining(self, server: Any) -> str | None:
        if not self.draining:
            return None
        # RFC 5321 4.2.2: 421 closes the channel. The close is scheduled so aiosmtpd still
        # writes the reply first (a transport flushes its buffer before closing).
        transport = getattr(server, "transport", None)
        if transport is not None:
            asyncio.get_running_loop().call_soon(transport.close)
        return SHUTTING_DOWN

    def peer_allowed(self, peer: Any) -> bool:
        """Whether a socket peer (``(host, port, ...)``) is in ``settings.peers``."""
        if not isinstance(peer, tuple) or not peer:
            return False
        try:
            address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.settings.networks)

    def sender_allowed(self, address: str) -> bool:
        """Whether an envelope sender matches ``settings.senders`` (``@domain`` or full address)."""
        address = address.strip().lower()
        domain = address.rpartition("@")[2]
        for allowed in self.settings.senders:
            if allowed.startswith("@") or "@" not in allowed:
                if domain == allowed.lstrip("@"):
                    return True
            elif address == allowed:
                return True
        return False

    def recipient_number(self, address: str) -> str:
        """The E.164 city number of ``RCPT TO`` address, or raise `MailRejected`."""
        local, at, domain = address.strip().rpartition("@")
        if not at or domain.lower() != self.settings.recipient_domain:
            raise MailRejected(f"5.1.2 recipient domain is not {self.settings.recipient_domain}")
        number = self.plan.classify(local)
        if number.kind in (NumberKind.INVALID, NumberKind.EXTENSION):
            raise MailRejected("5.1.1 recipient is not a phone number")
        if number.e164 not in self.settings.city_numbers:
            raise MailRejected("5.1.1 recipient is not a city number served here")
        return number.e164

    # -- aiosmtpd hooks: names and signatures fixed by aiosmtpd's handler API (hence noqa: N802)

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:  # noqa: N802
        refused = self._refuse_when_draining(server)
        if refused:
            return refused
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        refused = self._refuse_when_draining(server)
        if refused:
            return [refused]
        session.host_name = hostname  # the 5-argument hook must set it (aiosmtpd docs)
        return responses

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:  # noqa: N802
        return self._refuse_when_draining(server) or OK

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        return self._refuse_when_draining(server) or OK

    async def handle_MAIL(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        return self._tally("MAIL", await self._mail(server, session, envelope, address, mail_options))

    async def _mail(self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]) -> str:
        refused = self._refuse_when_draining(server)
        if refused:
            return refused
        if not self.peer_allowed(session.peer):
            log.warning("smtp: refused client %s", session.peer[0] if session.peer else "?")
            return PEER_REFUSED
        if not self.sender_allowed(address):
            log.warning("smtp: refused envelope sender %s", _reply_text(address))
            return SENDER_REFUSED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return OK

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        return self._tally("RCPT", await self._rcpt(server, session, envelope, address, rcpt_options))

    async def _rcpt(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        refused = self._refuse_when_draining(server)
        if refused:
            return refused
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return TOO_MANY_RECIPIENTS
        try:
            self.recipient_number(address)
        except MailRejected as exc:
            return f"550 {exc.reason}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return OK

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        refused = self._refuse_when_draining(server)
        if refused:
            return self._tally("DATA", refused)
        self._inflight += 1
        self._idle.clear()
        try:
            return self._tally("DATA", await self._deliver(envelope))
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def handle_exception(self, error: Exception) -> str:
        """An exception escaped a hook or aiosmtpd itself: retryable, and no internals leak out."""
        log.error("smtp: unexpected error", exc_info=error)
        return TEMPFAIL

    # -- delivery

    async def _deliver(self, envelope: Any) -> str:
        raw: bytes = envelope.original_content or b""
        if len(raw) > self.settings.max_bytes:
            return TOO_BIG
        try:
            recipients = [self.recipient_number(a) for a in envelope.rcpt_tos]
            messages = parse_mail(
                raw, plan=self.plan, provider=self.settings.provider, recipients=recipients, now=time.time()
            )
        except MailRejected as exc:
            # The reason's enhanced code only: its text may quote the sender's input (a charset).
            self.malformed.note("smtp DATA", f"550 {exc.reason.split(' ', 1)[0]}")
            return f"550 {_reply_text(exc.reason)}"
        except Exception:
            log.exception("smtp: unexpected error while parsing a mail")
            return TEMPFAIL
        # Every recipient is tried even after a failure: copies that succeed are durable and a
        # retry of the whole mail finds them as duplicates. A temporary failure outranks a
        # rejection so that the relay retries rather than bounces a partly stored mail.
        temporary = False
        rejection: str | None = None
        for sms in messages:
            try:
                await self.intake.accept(sms)
            except StoreUnavailable as exc:
                log.warning("smtp: store unavailable for %s to %s: %s", sms.message_id, mask(sms.to), exc)
                temporary = True
            except GatewayError as exc:  # e.g. RecipientUnknown: a number routing.yaml does not list
                self.malformed.note("smtp DATA", f"{exc.smtp_reply} {type(exc).__name__}")
                rejection = rejection or f"{exc.smtp_reply} {_reply_text(str(exc)) or 'rejected'}"
            except Exception:
                log.exception(
                    "smtp: unexpected error accepting %s from %s to %s", sms.message_id, mask(sms.sender), mask(sms.to)
                )
                temporary = True
        if temporary:
            return TEMPFAIL
        if rejection:
            return rejection
        log.info(
            "smtp: accepted %s from %s to %s",
            messages[0].message_id.rpartition("/")[0],
            mask(messages[0].sender),
            ",".join(mask(m.to) for m in messages),
        )
        return OK

    @property
    def inflight(self) -> int:
        """How many mails are being handed to the intake core right now."""
        return self._inflight

    async def wait_idle(self) -> None:
        """Return when no ``DATA`` is being handed to the intake core."""
        await self._idle.wait()


# --------------------------------------------------------------------------- server lifecycle


class _BoundedSMTP(SMTP):
    """aiosmtpd's session protocol behind the listener's connection gate: over
    `smtp.max_connections`, a new session gets "421" (try later, RFC 5321 4.2.3) and is closed
    before aiosmtpd starts serving it. `connection_made` runs again after STARTTLS on the same
    session: only the first call counts."""

    _REFUSAL = b"421 4.7.0 Too many connections, try again later\r\n"

    def __init__(self, gate: ConnectionGate, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate
        self._admitted = False
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._admitted and not self._refused:
            if not self._gate.admit():
                self._refused = True
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(self._REFUSAL)
                transport.close()
                return
            self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:  # aiosmtpd never started this session: nothing of it to tear down
            return
        if self._admitted:
            self._admitted = False
            self._gate.release()
        super().connection_lost(error)


class SmtpIntake:
    """The SMTP server on the current running loop (not aiosmtpd's threaded Controller).

    The gateway is one asyncio process: running aiosmtpd on its own loop in a thread would put
    the intake core (Redis client, metrics) on two loops at once.
    """

    def __init__(self, settings: SmtpSettings, intake: IntakePort, *, plan: NumberPlan | None = None) -> None:
        self.settings = settings
        self.handler = SmtpHandler(settings, intake, plan=plan)
        # Built (and the files read) now, at startup: a bad certificate stops the gateway here,
        # not at a relay's first STARTTLS.
        self.tls = settings.tls_context()
        self._server: asyncio.Server | None = None
        # Live sessions, so `stop` can close them: Server.wait_closed does not wait for (or
        # close) accepted connections on Python 3.11.
        self._sessions: weakref.WeakSet[Any] = weakref.WeakSet()
        self.gate = ConnectionGate(settings.max_connections, "smtp listener", "smtp.max_connections")
        self.address: tuple[str, int] | None = None

    def _protocol(self) -> Any:
        smtp = _BoundedSMTP(
            self.gate,
            self.handler,
            data_size_limit=self.settings.max_bytes,
            enable_SMTPUTF8=False,
            decode_data=False,  # keep raw bytes: charsets are decided per MIME part in parse_mail
            hostname=self.settings.server_name,
            ident="civic-gateway",
            timeout=self.settings.idle_timeout_s,
            tls_context=self.tls,
            # aiosmtpd answers "530 Must issue a STARTTLS command first" to any command but
            # EHLO, NOOP, QUIT and STARTTLS until the session is encrypted.
            require_starttls=self.settings.require_tls,
            loop=asyncio.get_running_loop(),
        )
        self._sessions.add(smtp)
        return smtp

    async def start(self) -> tuple[str, int]:
        """Listen on ``settings.host:settings.port``; return the bound address (port 0 -> free port)."""
        if self._server is not None:
            raise RuntimeError("SmtpIntake already started")
        loop = asyncio.get_running_loop()
        self.handler.draining = False
        self._server = await loop.create_server(self._protocol, self.settings.host, self.settings.port)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (str(host), int(port))
        log.info("smtp: listening on %s:%d", host, port)
        return self.address

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop taking mail: close the listener, answer 421 to new commands, let DATA in flight finish."""
        self.handler.draining = True
        if self._server is not None:
            self._server.close()
        try:
            await asyncio.wait_for(self.handler.wait_idle(), timeout)
        except TimeoutError:
            log.warning("smtp: %d message(s) still in flight after %.1fs", self.handler.inflight, timeout)

    async def stop(self, timeout: float = 10.0) -> None:
        """Drain, then close every session and the listener."""
        await self.drain(timeout)
        for session in list(self._sessions):
            transport = getattr(session, "transport", None)
            if transport is not None:
                transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        # Let connection_lost callbacks and cancelled session tasks finish on this loop.
        await asyncio.sleep(0)
