"""Password hashes: Argon2id (argon2-cffi), RFC 9106's low-memory parameters.

Hashing or verifying costs tens of milliseconds of CPU on purpose: the async helpers run it in a
thread so the gateway's event loop (lettering shares it) never stalls behind a login.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.profiles import RFC_9106_LOW_MEMORY

_HASHER = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)
assert RFC_9106_LOW_MEMORY.type is Type.ID

# Verified when the user name is unknown, so that an unknown name costs what a wrong password
# costs (no timing oracle telling which names exist).
DUMMY_HASH = _HASHER.hash("no account has this password: only its cost matters")


def hash_password(password: str) -> str:
    """The Argon2id hash (PHC string) of `password`, with a fresh random salt."""
    return _HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """Whether `password` matches `stored`. Never raises: a garbled or foreign hash is False."""
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError, TypeError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether `stored` was made with other parameters than today's (rehash at the next login)."""
    try:
        return _HASHER.check_needs_rehash(stored)
    except (InvalidHashError, ValueError):
        return True


async def hash_async(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)


async def verify_async(stored: str, password: str) -> bool:
    return await asyncio.to_thread(verify_password, stored, password)
