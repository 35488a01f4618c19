"""AES-GCM sealing of personal data kept at rest (citizens' numbers in queued jobs).

Keys come from the environment as `kid:base64key[,kid:base64key...]`; the first is used to
seal, all are tried by id to open, so keys can be rotated without losing queued data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import ConfigError, GatewayError

_HMAC_PADS: dict[bytes, tuple[Any, Any]] = {}
_HMAC_PADS_MAX = 64  # keys come from the configuration: a handful; never a table that grows


def hmac_sha256_hex(key: bytes, message: bytes) -> str:
    """``hmac.new(key, message, hashlib.sha256).hexdigest()``, about twice as cheap.

    `hmac.new` makes OpenSSL 3 look the algorithm up and key a new context on every call; the
    hot paths (every webhook's signature, every citizen's number hash) use a few fixed keys, so
    the keyed inner and outer states are kept per key and copied (RFC 2104, as the pure-Python
    `hmac` does)."""
    pads = _HMAC_PADS.get(key)
    if pads is None:
        block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        pads = (hashlib.sha256(block.translate(_IPAD)), hashlib.sha256(block.translate(_OPAD)))
        if len(_HMAC_PADS) < _HMAC_PADS_MAX:
            _HMAC_PADS[key] = pads
    inner = pads[0].copy()
    inner.update(message)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.hexdigest()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of a secret a client presented (a header value) with ours.

    Header values are bytes on the wire: aiohttp hands non-UTF-8 ones over as surrogate escapes,
    which a plain `str.encode()` refuses (a 500 the provider retries forever). Compared as the
    bytes they stand for, they are simply not the secret."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def sign(secret: str, timestamp: str, url: str, body: bytes) -> str:
    """The signature of a webhook, ours or a provider's: hex HMAC-SHA256 of `timestamp.url.body`
    (the intake checks citizens' messages with it, the worker signs its notifications)."""
    return hmac_sha256_hex(secret.encode(), timestamp.encode() + b"." + url.encode() + b"." + body)


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class SealError(GatewayError):
    """A sealed value could not be opened (unknown key id, tampered or truncated)."""


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    # = base64.urlsafe_b64encode(data).decode().rstrip("="), in one C call less per step
    # (four seals per citizen message)
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sealer:
    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise ConfigError(f"data key id {current!r} not among the configured keys")
        for kid, key in keys.items():
            if len(key) not in (16, 24, 32) or "." in kid or not kid:
                raise ConfigError(f"data key {kid!r} must be 16, 24 or 32 bytes and its id must not contain '.'")
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self.current = current

    @classmethod
    def from_env(cls, value: str, variable: str) -> Sealer:
        keys: dict[str, bytes] = {}
        first = ""
        for item in filter(None, (part.strip() for part in value.split(","))):
            kid, sep, encoded = item.partition(":")
            if not sep:
                raise ConfigError(f"{variable}: expected 'kid:base64key[,kid:base64key]'")
            try:
                keys[kid] = _unb64(encoded)
            except (binascii.Error, ValueError) as exc:
                raise ConfigError(f"{variable}: key {kid!r} is not base64") from exc
            first = first or kid
        if not keys:
            raise ConfigError(f"{variable} is not set: it holds the key that encrypts citizens' data at rest")
        return cls(keys, first)

    @staticmethod
    def new_key_spec(kid: str = "k1") -> str:
        """A fresh key in the environment format (demo, replay, tests)."""
        return f"{kid}:{_b64(os.urandom(32))}"

    def seal(self, plaintext: str, aad: bytes = b"") -> str:
        nonce = os.urandom(12)
        sealed = self._aead[self.current].encrypt(nonce, plaintext.encode(), aad)
        return f"{self.current}.{_b64(nonce)}.{_b64(sealed)}"

    def open(self, token: str, aad: bytes = b"") -> str:
        try:
            kid, nonce, sealed = token.split(".")
            aead = self._aead[kid]
            return aead.decrypt(_unb64(nonce), _unb64(sealed), aad).decode()
        except KeyError as exc:
            raise SealError(f"unknown data key id in sealed value: {exc}") from None
        except (ValueError, InvalidTag, binascii.Error) as exc:
            raise SealError(f"sealed value cannot be opened: {type(exc).__name__}") from None
