"""TLS server contexts from the certificate and key files gateway.yaml names (SMTP STARTTLS).

Each file is read and parsed on its own first, so that a wrong path, an unreadable file, a file
that is not PEM or a key that does not belong to the certificate is reported against the one
setting that is wrong (`TlsFileError.setting`), at startup, not at the first client's handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from gateway.errors import ConfigError


class TlsFileError(ConfigError):
    """A certificate or key file that cannot serve TLS. ``setting`` is "cert" or "key"."""

    def __init__(self, setting: str, path: Path, reason: str) -> None:
        self.setting = setting
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsFileError(setting, path, "file not found") from None
    except IsADirectoryError:
        raise TlsFileError(setting, path, "is a directory, not a file") from None
    except OSError as exc:
        raise TlsFileError(setting, path, f"cannot read: {exc.strerror or exc}") from None


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context (TLS 1.2 or later, no client certificates) with the PEM certificate
    chain in `cert` and its unencrypted PEM private key in `key`; raises `TlsFileError`."""
    try:
        x509.load_pem_x509_certificates(_read("cert", cert))
    except ValueError:
        raise TlsFileError("cert", cert, "not a PEM certificate") from None
    try:
        serialization.load_pem_private_key(_read("key", key), password=None)
    except TypeError:  # the key is encrypted: the gateway starts unattended, with no passphrase
        raise TlsFileError("key", key, "the private key is encrypted (a passphrase is not supported)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError("key", key, "not a PEM private key") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:  # both parse: what is left is a key of another certificate
        raise TlsFileError("key", key, f"does not match the certificate {cert} ({exc.reason or exc})") from None
    return context
