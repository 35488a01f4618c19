"""Argon2id hashes and the temporary passwords (gateway.staff.passwords, gateway.staff.accounts)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.profiles import CHEAPEST

from gateway.domain.staff import password_problems
from gateway.staff import passwords
from gateway.staff.accounts import generate_password


def test_hash_is_argon2id_and_verifies() -> None:
    stored = passwords.hash_password("Hanbit-2026!")
    assert stored.startswith("$argon2id$")
    assert passwords.verify_password(stored, "Hanbit-2026!")
    assert not passwords.verify_password(stored, "hanbit-2026!")
    assert passwords.hash_password("Hanbit-2026!") != stored  # a fresh salt each time
    assert not passwords.needs_rehash(stored)


def test_a_garbled_or_foreign_hash_is_false_never_an_exception() -> None:
    for stored in ("", "garbage", "$argon2id$v=19$m=1,t=1,p=1$xx$yy", "$2b$12$" + "a" * 53):
        assert passwords.verify_password(stored, "anything") is False
        assert passwords.needs_rehash(stored) is True


def test_weaker_parameters_need_a_rehash() -> None:
    weak = PasswordHasher.from_parameters(CHEAPEST).hash("Hanbit-2026!")
    assert passwords.verify_password(weak, "Hanbit-2026!")
    assert passwords.needs_rehash(weak)


async def test_async_helpers_run_off_the_loop() -> None:
    stored = await passwords.hash_async("Hanbit-2026!")
    assert await passwords.verify_async(stored, "Hanbit-2026!")
    assert not await passwords.verify_async(stored, "wrong")


def test_temporary_passwords_pass_the_rule_and_differ() -> None:
    made = {generate_password() for _ in range(50)}
    assert len(made) == 50
    assert all(password_problems(p) == [] for p in made)
