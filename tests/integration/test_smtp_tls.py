"""SMTP intake over STARTTLS, and what one SMTP client may hold: real aiosmtpd on 127.0.0.1,
stdlib smtplib (and raw sockets) as the relay, certificates made per test by `cryptography`
(a test CA and a server certificate for 127.0.0.1/localhost), gateway.yaml files in tmp_path."""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from email.message import EmailMessage
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.app.gateway import Gateway, Overrides
from gateway.errors import ConfigError
from gateway.inbox.smtp import SmtpIntake, SmtpSettings, settings_from_config
from gateway.infra.config import DEFAULT_CONFIG, load_config
from gateway.infra.crypto import Sealer
from tests.conftest import ROOT, RULES
from tests.integration.test_smtp import RCPT, RELAY, RecordingIntake, mail

ENV = {
    "GATEWAY_NUMBER_KEY": "test-number-key-0123456789",
    "GATEWAY_DATA_KEY": Sealer.new_key_spec(),
    "GATEWAY_INBOUND_SECRET": "inbound-secret",
    "GATEWAY_AMI_SECRET": "x",
    "GATEWAY_WEBHOOK_SECRET": "w",
}


# --------------------------------------------------------------------------- test certificates


@dataclass(frozen=True)
class Pki:
    ca: Path  # the test CA's certificate: what the relay trusts
    cert: Path  # the server's certificate (127.0.0.1 and localhost), signed by the CA
    key: Path  # its private key
    other_key: Path  # a valid key of another certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: Any) -> bytes:
    return bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def make_pki(where: Path) -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("gateway test CA"))
        .issuer_name(_name("gateway test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("sms-gateway.test"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    where.mkdir(parents=True, exist_ok=True)
    pki = Pki(where / "ca.pem", where / "server.pem", where / "server.key", where / "other.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(_pem_key(server_key))
    pki.other_key.write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_context(pki: Pki) -> ssl.SSLContext:
    """What the relay uses: the test CA trusted, the server's name checked."""
    return ssl.create_default_context(cafile=str(pki.ca))


def write_config(where: Path, smtp_lines: str) -> Path:
    """The embedded default gateway.yaml with lines added to its `smtp:` section."""
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    assert text.count("\nsmtp:\n") == 1
    path = where / "gateway.yaml"
    path.write_text(text.replace("\nsmtp:\n", "\nsmtp:\n" + smtp_lines), encoding="utf-8")
    return path


def tls_settings(pki: Pki, **kwargs: Any) -> SmtpSettings:
    return SmtpSettings(
        host="127.0.0.1",
        port=0,
        peers=("127.0.0.1/32",),
        senders=("@sms.carrier.example",),
        recipient_domain="sms.hanbit.go.kr",
        city_numbers=frozenset({"+82319002000"}),
        tls_cert=str(pki.cert),
        tls_key=str(pki.key),
        **kwargs,
    )


@asynccontextmanager
async def serving(settings: SmtpSettings, intake: Any) -> AsyncIterator[int]:
    server = SmtpIntake(settings, intake)
    _, port = await server.start()
    try:
        yield port
    finally:
        await server.stop(timeout=2)


# --------------------------------------------------------------------------- STARTTLS


async def test_starttls_through_the_gateway_stores_the_mail(
    pki: Pki, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gateway.yaml names the certificate and key; the gateway's SMTP intake offers STARTTLS,
    the relay (trusting the test CA, checking the name) upgrades, and the mail is stored."""
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    config = load_config(write_config(tmp_path, f"  tls_cert: {pki.cert}\n  tls_key: {pki.key}\n"))
    over = Overrides(
        redis_url=redis_url,
        rules_dir=RULES,
        queue_namespace="t-smtp-tls",
        alimtalk={"sandbox-alimtalk": SandboxAlimtalk("sandbox-alimtalk")},
        sms={"sandbox-sms": SandboxSms("sandbox-sms")},
    )
    gateway = Gateway(config, _Sink(), environ=dict(os.environ), overrides=over)
    try:
        address = await gateway.start_smtp(port=0)
        assert address is not None
        message = EmailMessage()
        message["From"] = "01012345678@sms.carrier.example"
        message["To"] = "0319000119@sms.hanbit.go.kr"
        message["Message-ID"] = "<tls-1@sms.carrier.example>"
        message["Date"] = "Tue, 24 Nov 2026 10:00:00 +0900"
        message.set_content("도로에 포트홀이 있어요", charset="euc-kr")

        def send() -> tuple[bool, str, bool]:
            with smtplib.SMTP(*address, timeout=10) as client:
                client.ehlo("relay.test")
                offered = client.has_extn("starttls")
                code, _ = client.starttls(context=client_context(pki))
                assert code == 220
                assert isinstance(client.sock, ssl.SSLSocket)
                version = str(client.sock.version())
                client.ehlo("relay.test")
                again = client.has_extn("starttls")  # not offered twice
                client.send_message(message, from_addr=RELAY, to_addrs=[message["To"]])
                return offered, version, again

        offered, version, again = await asyncio.to_thread(send)
        assert offered and not again and version in ("TLSv1.2", "TLSv1.3")
        (entry,) = await gateway.intake.inbox("duty")
        thread = await gateway.intake.thread(entry["thread"])
        assert thread is not None
        assert [m["text"] for m in thread["messages"] if m["dir"] == "in"] == ["도로에 포트홀이 있어요"]
    finally:
        await gateway.stop()


class _Sink:
    def decision(self, record: Any) -> None:
        pass


async def test_a_relay_that_does_not_trust_the_certificate_cannot_upgrade(pki: Pki, tmp_path: Path) -> None:
    """The server really presents the configured certificate: a relay with another CA fails."""
    other = make_pki(tmp_path / "other")
    intake = RecordingIntake()
    async with serving(tls_settings(pki), intake) as port:

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.starttls(context=client_context(other))

        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.to_thread(send)
    assert intake.calls == []


async def test_without_a_certificate_starttls_is_not_offered() -> None:
    settings = SmtpSettings(
        host="127.0.0.1",
        port=0,
        peers=("127.0.0.1/32",),
        senders=("@sms.carrier.example",),
        recipient_domain="sms.hanbit.go.kr",
        city_numbers=frozenset({"+82319002000"}),
    )
    async with serving(settings, RecordingIntake()) as port:

        def ehlo() -> tuple[bool, int]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("relay.test")
                return client.has_extn("starttls"), client.docmd("STARTTLS")[0]

        offered, code = await asyncio.to_thread(ehlo)
    assert not offered and code in (454, 502)


async def test_tls_optional_by_default_plaintext_still_accepted(pki: Pki) -> None:
    intake = RecordingIntake()
    async with serving(tls_settings(pki), intake) as port:

        def send() -> dict[str, Any]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                return client.sendmail(RELAY, [RCPT], mail())

        assert await asyncio.to_thread(send) == {}
    assert len(intake.stored) == 1


@pytest.mark.parametrize(
    "command",
    [
        "MAIL FROM:<relay@sms.carrier.example>",
        f"RCPT TO:<{RCPT}>",
        "DATA",
        "HELO relay.test",
        "RSET",
        "VRFY postmaster",
    ],
)
async def test_require_tls_refuses_commands_before_starttls_with_530(pki: Pki, command: str) -> None:
    """`require_tls: true`: every transaction command before STARTTLS gets 530 (RFC 3207); after
    STARTTLS the same relay delivers."""
    intake = RecordingIntake()
    async with serving(tls_settings(pki, require_tls=True), intake) as port:

        def session() -> tuple[bool, int, dict[str, Any]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("relay.test")
                offered = client.has_extn("starttls")
                code, _ = client.docmd(command)
                client.starttls(context=client_context(pki))
                return offered, code, client.sendmail(RELAY, [RCPT], mail())

        offered, code, refused = await asyncio.to_thread(session)
    assert offered and code == 530
    assert refused == {} and len(intake.stored) == 1


async def test_require_tls_refuses_a_plaintext_sendmail(pki: Pki) -> None:
    intake = RecordingIntake()
    async with serving(tls_settings(pki, require_tls=True), intake) as port:

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail(RELAY, [RCPT], mail())

        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            await asyncio.to_thread(send)
    assert refused.value.smtp_code == 530
    assert intake.calls == []


def test_require_tls_without_a_certificate_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.yaml:\d+: smtp\.require_tls: .*tls_cert"):
        load_config(write_config(tmp_path, "  require_tls: true\n"))


# --------------------------------------------------------------------------- bad certificate settings


def _bad_files(pki: Pki, where: Path) -> dict[str, tuple[str, str, str, str]]:
    """Kinds of wrong files: (tls_cert, tls_key, the setting named, what the error says)."""
    garbage = where / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    empty = where / "empty.pem"
    empty.write_bytes(b"")
    encrypted = where / "encrypted.key"
    key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    missing = where / "missing.pem"
    return {
        "cert missing": (str(missing), str(pki.key), "tls_cert", "file not found"),
        "key missing": (str(pki.cert), str(missing), "tls_key", "file not found"),
        "cert is a directory": (str(where), str(pki.key), "tls_cert", "directory"),
        "cert is not PEM": (str(garbage), str(pki.key), "tls_cert", "not a PEM certificate"),
        "cert is empty": (str(empty), str(pki.key), "tls_cert", "not a PEM certificate"),
        "key is a certificate": (str(pki.cert), str(pki.cert), "tls_key", "not a PEM private key"),
        "key is encrypted": (str(pki.cert), str(encrypted), "tls_key", "encrypted"),
        "key of another certificate": (str(pki.cert), str(pki.other_key), "tls_key", "does not match"),
        "cert and key swapped": (str(pki.key), str(pki.cert), "tls_cert", "not a PEM certificate"),
    }


KINDS = [
    "cert missing",
    "key missing",
    "cert is a directory",
    "cert is not PEM",
    "cert is empty",
    "key is a certificate",
    "key is encrypted",
    "key of another certificate",
    "cert and key swapped",
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_certificate_or_key_is_a_config_error_naming_file_and_key(pki: Pki, tmp_path: Path, kind: str) -> None:
    cert, key, setting, reason = _bad_files(pki, tmp_path)[kind]
    path = write_config(tmp_path, f"  tls_cert: {cert}\n  tls_key: {key}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    named = cert if setting == "tls_cert" else key
    # <gateway.yaml>:<line>: smtp.<setting>: <path>: <reason>
    assert re.match(rf"{re.escape(path.as_posix())}:\d+: smtp\.{setting}: ", message), message
    assert named in message and reason in message, message


def test_the_key_alone_or_the_certificate_alone_is_a_config_error(pki: Pki, tmp_path: Path) -> None:
    for lines, missing in ((f"  tls_cert: {pki.cert}\n", "tls_key"), (f"  tls_key: {pki.key}\n", "tls_cert")):
        with pytest.raises(ConfigError, match=rf"gateway\.yaml:\d+: smtp.*{missing}"):
            load_config(write_config(tmp_path, lines))


def test_relative_paths_are_read_from_the_config_files_directory(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "smtp.pem").write_bytes(pki.cert.read_bytes())
    (tmp_path / "tls" / "smtp.key").write_bytes(pki.key.read_bytes())
    config = load_config(write_config(tmp_path, "  tls_cert: tls/smtp.pem\n  tls_key: tls/smtp.key\n"))
    settings = settings_from_config(config.smtp, config.source)
    assert settings.tls_cert == str(tmp_path / "tls" / "smtp.pem") and settings.require_tls is False


def test_gateway_run_stops_at_startup_on_a_bad_key_path(pki: Pki, tmp_path: Path) -> None:
    """`gateway run` refuses to start, and says which file and which key."""
    missing = tmp_path / "nowhere" / "smtp.key"
    path = write_config(tmp_path, f"  tls_cert: {pki.cert}\n  tls_key: {missing}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **ENV, "REDIS_URL": "redis://127.0.0.1:9/0"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "gateway.yaml:" in proc.stderr and "smtp.tls_key" in proc.stderr and str(missing) in proc.stderr


# --------------------------------------------------------------------------- what a client may hold


def test_idle_timeout_and_size_limit_come_from_gateway_yaml(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "  idle_timeout_s: 7.5\n  max_bytes: 2048\n"))
    settings = settings_from_config(config.smtp, config.source)
    assert settings.idle_timeout_s == 7.5 and settings.max_bytes == 2048
    defaults = settings_from_config(load_config().smtp, "default")
    assert defaults.idle_timeout_s == 60.0 and defaults.max_bytes == 64 * 1024
    with pytest.raises(ConfigError, match=r"smtp\.idle_timeout_s"):
        load_config(write_config(tmp_path, "  idle_timeout_s: 0\n"))


def _recv_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's own timeout
    bounds the wait: a server that never closes fails the test)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


@pytest.fixture
def short_idle() -> Iterator[SmtpSettings]:
    yield SmtpSettings(
        host="127.0.0.1",
        port=0,
        peers=("127.0.0.1/32",),
        senders=("@sms.carrier.example",),
        recipient_domain="sms.hanbit.go.kr",
        city_numbers=frozenset({"+82319002000"}),
        idle_timeout_s=0.5,
        max_bytes=4096,
    )


@pytest.mark.parametrize("stop_at", ["before a command", "after EHLO", "mid-DATA", "mid-line in DATA", "after MAIL"])
async def test_a_client_that_stops_talking_is_disconnected(short_idle: SmtpSettings, stop_at: str) -> None:
    intake = RecordingIntake()
    async with serving(short_idle, intake) as port:

        def stall() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                script = {
                    "before a command": b"",
                    "after EHLO": b"EHLO relay.test\r\n",
                    "after MAIL": b"EHLO relay.test\r\nMAIL FROM:<relay@sms.carrier.example>\r\n",
                    "mid-DATA": (
                        b"EHLO relay.test\r\nMAIL FROM:<relay@sms.carrier.example>\r\n"
                        + f"RCPT TO:<{RCPT}>\r\nDATA\r\n".encode()
                        + b"Subject: x\r\n\r\nhello\r\n"
                    ),
                    "mid-line in DATA": (
                        b"EHLO relay.test\r\nMAIL FROM:<relay@sms.carrier.example>\r\n"
                        + f"RCPT TO:<{RCPT}>\r\nDATA\r\n".encode()
                        + b"Subject: x\r\n\r\nhel"
                    ),
                }[stop_at]
                sock.sendall(script)
                return _recv_until_closed(sock)  # then nothing more: the server must hang up

        transcript = await asyncio.to_thread(stall)
    assert transcript.startswith(b"220 ")
    if stop_at.startswith("mid"):
        assert b"354 " in transcript and b"\r\n250 OK" not in transcript.split(b"354 ", 1)[1]
    assert intake.calls == []


async def test_a_client_that_stops_mid_data_after_starttls_is_disconnected(pki: Pki) -> None:
    intake = RecordingIntake()
    async with serving(replace(tls_settings(pki), idle_timeout_s=0.5), intake) as port:

        def stall() -> bool:
            client = smtplib.SMTP("127.0.0.1", port, timeout=20)
            client.starttls(context=client_context(pki))
            client.ehlo("relay.test")
            assert client.mail(RELAY)[0] == 250 and client.rcpt(RCPT)[0] == 250
            code, _ = client.docmd("DATA")
            assert code == 354
            assert client.sock is not None
            client.sock.sendall(b"Subject: x\r\n\r\nhello, this mail never ends")
            try:
                return client.sock.recv(4096) == b""
            except (ssl.SSLError, ConnectionError):
                return True  # closed under TLS: an abrupt end reads as an error
            finally:
                client.close()

        assert await asyncio.to_thread(stall)
    assert intake.calls == []


async def test_an_oversized_mail_is_refused_and_its_body_not_kept(short_idle: SmtpSettings) -> None:
    intake = RecordingIntake()
    async with serving(replace(short_idle, idle_timeout_s=30.0), intake) as port:

        def send() -> tuple[int, int, int]:
            big = mail("\n".join(["가로등이 꺼졌어요"] * 300))  # short lines, 9 KB
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("relay.test")
                size = int(client.esmtp_features["size"])
                with pytest.raises(smtplib.SMTPSenderRefused) as announced:  # MAIL FROM:<...> SIZE=n
                    client.sendmail(RELAY, [RCPT], big)
                client.rset()
                # A relay that does not announce the size: refused after the body, which is not kept.
                assert client.mail(RELAY)[0] == 250 and client.rcpt(RCPT)[0] == 250
                code, _ = client.data(big)
                return size, announced.value.smtp_code, code

        size, announced, after_data = await asyncio.to_thread(send)
    assert size == 4096 and announced == 552 and after_data == 552 and intake.calls == []


async def test_sessions_over_the_limit_are_refused_with_421_and_the_held_ones_keep_working(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """`smtp.max_connections`: past the limit a new session gets 421 at once and is closed; the
    open sessions (one of them upgraded by STARTTLS, counted once) still deliver, and a session
    is taken again once one closes."""
    intake = RecordingIntake()
    async with serving(replace(tls_settings(pki), max_connections=2), intake) as port:

        def scenario() -> tuple[bytes, bytes, int, int]:
            first = smtplib.SMTP("127.0.0.1", port, timeout=10)
            first.starttls(context=client_context(pki))  # connection_made runs twice for this session
            first.ehlo("relay.test")
            second = smtplib.SMTP("127.0.0.1", port, timeout=10)
            refused = []
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    refused.append(_recv_until_closed(sock))
            assert refused[0] == refused[1] == refused[2]
            first.sendmail(RELAY, [RCPT], mail("가로등이 꺼졌어요"))
            second.sendmail(RELAY, [RCPT], mail("보도블록이 깨졌어요"))
            second.quit()
            # One closed: a new session is served again (greeting 220, not 421).
            deadline = 50
            while deadline:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    greeting = sock.recv(4096)
                if greeting.startswith(b"220 "):
                    break
                deadline -= 1
            first.quit()
            return refused[0], greeting, deadline, len(refused)

        refused, greeting, left, _ = await asyncio.to_thread(scenario)
    assert refused.startswith(b"421 ") and b"220" not in refused
    assert greeting.startswith(b"220 ") and left > 0
    assert len(intake.calls) == 2
    warnings = [r for r in caplog.records if "smtp.max_connections" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"


def test_smtp_max_connections_comes_from_gateway_yaml(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "  max_connections: 7\n"))
    assert settings_from_config(config.smtp, config.source).max_connections == 7
    assert settings_from_config(load_config(DEFAULT_CONFIG).smtp, "default").max_connections == 100
    with pytest.raises(ConfigError, match=r"smtp\.max_connections"):
        load_config(write_config(tmp_path, "  max_connections: 0\n"))
