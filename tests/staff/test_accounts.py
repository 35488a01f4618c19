"""Accounts on SQLite and PostgreSQL: sign-in, lockout, tokens, administration, each recorded
(gateway.staff.accounts)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, update

from gateway.domain.staff import LoginPolicy, Role
from gateway.records.schema import audit_log, staff_accounts, staff_tokens
from gateway.staff.accounts import AccountNotFound, AccountProblem
from gateway.staff.sessions import RedisSessions
from tests.staff.conftest import Staff, make_staff

GOOD = "Hanbit-2026!"


async def actions(staff: Staff, chain: str) -> list[tuple[str, str, str, str, str]]:
    a = audit_log.c
    async with staff.store.engine.connect() as conn:
        rows = await conn.execute(
            select(a.account, a.action, a.target, a.result, a.detail).where(a.chain == chain).order_by(a.seq)
        )
        return [tuple(r) for r in rows]


async def test_lockout_after_five_failures_refuses_the_right_password_until_unlocked(staff: Staff) -> None:
    await staff.directory.add("admin", "kim", "김민원", "staff", queues="duty", password=GOOD)
    for _ in range(4):
        assert (await staff.directory.login("kim", "wrong", ip="10.0.0.9")).reason == "wrong_password"
    fifth = await staff.directory.login("kim", "wrong", ip="10.0.0.9")
    assert fifth.reason == "locked" and fifth.locked_until is not None
    locked = await staff.directory.login("kim", GOOD, ip="10.0.0.9")
    assert locked.account is None and locked.reason == "locked"
    info = await staff.directory.info("kim")
    assert info is not None and info.locked_until == fifth.locked_until
    await staff.directory.unlock("admin", "kim", ip="10.0.0.1")
    ok = await staff.directory.login("kim", GOOD, ip="10.0.0.9")
    assert ok.account is not None and ok.account.username == "kim"
    access = await actions(staff, "access")
    assert [x[1] for x in access] == ["login_failed"] * 5 + ["locked", "login_failed", "login"]
    assert access[-2] == ("kim", "login_failed", "", "failed", "locked")
    assert [x[1] for x in await actions(staff, "accounts")] == ["account_add", "unlock"]


async def test_a_lock_expires_and_the_count_starts_again(sqlite_staff: Staff) -> None:
    staff = await make_staff(sqlite_staff.store.url, LoginPolicy(max_failures=3, lock_s=600))
    try:
        await staff.directory.add("admin", "kim", "김민원", "staff", password=GOOD)
        for _ in range(3):
            await staff.directory.login("kim", "wrong", ip="x")
        async with staff.store.engine.begin() as conn:  # the lock's time has passed
            await conn.execute(update(staff_accounts).values(locked_until=1.0))
        assert (await staff.directory.login("kim", "wrong", ip="x")).reason == "wrong_password"
        assert (await staff.directory.login("kim", GOOD, ip="x")).account is not None
    finally:
        await staff.store.close()


async def test_unknown_and_disabled_fail_like_a_wrong_password(staff: Staff) -> None:
    await staff.directory.add("admin", "kim", "김민원", "staff", password=GOOD)
    assert (await staff.directory.login("nobody", GOOD, ip="x")).reason == "unknown"
    assert (await staff.directory.login("NOT A NAME!", GOOD, ip="x")).reason == "unknown"
    assert await staff.directory.disable("admin", "kim")
    assert not await staff.directory.disable("admin", "kim")  # already
    assert (await staff.directory.login("kim", GOOD, ip="x")).reason == "disabled"
    assert await staff.directory.enable("admin", "kim")
    assert (await staff.directory.login("KIM ", GOOD, ip="x")).account is not None  # name normalised
    failed = [x for x in await actions(staff, "access") if x[1] == "login_failed"]
    assert [x[0] for x in failed] == ["nobody", "", "kim"]  # what is not a user name is not kept


async def test_tokens_are_personal_revocable_and_stored_as_hashes(staff: Staff) -> None:
    await staff.directory.add("admin", "kim", "김민원", "staff", queues="duty")
    token = await staff.directory.issue_token("admin", "kim", "민원 시스템")
    assert token.startswith("gwt_") and len(token.split(".")[1]) >= 43  # 256 bits
    account = await staff.directory.account_for_token(token)
    assert account is not None and account.username == "kim" and account.queues == frozenset({"duty"})
    for bad in ("", "gwt_", token + "x", token[:-1], "gwt_nope.secret", token.replace("gwt_", "gwx_")):
        assert await staff.directory.account_for_token(bad) is None, bad
    async with staff.store.engine.connect() as conn:
        stored = (await conn.execute(select(staff_tokens))).one()
    assert token.split(".")[1] not in str(tuple(stored)) and stored.last_used_at is not None
    (listed,) = await staff.directory.tokens("kim")
    assert listed.label == "민원 시스템" and listed.revoked_at is None
    await staff.directory.disable("admin", "kim")
    assert await staff.directory.account_for_token(token) is None  # a disabled person's token
    await staff.directory.enable("admin", "kim")
    assert await staff.directory.revoke_token("admin", listed.id)
    assert not await staff.directory.revoke_token("admin", f"gwt_{listed.id}")
    assert await staff.directory.account_for_token(token) is None
    with pytest.raises(AccountNotFound):
        await staff.directory.revoke_token("admin", "nope")
    accounts_chain = await actions(staff, "accounts")
    assert [x[1] for x in accounts_chain] == [
        "account_add",
        "token_issue",
        "account_disable",
        "account_enable",
        "token_revoke",
    ]
    assert all(token.split(".")[1] not in x[4] for x in accounts_chain)


async def test_administration_is_recorded_without_passwords(staff: Staff) -> None:
    account, temporary = await staff.directory.add("admin", "kim", "김민원", "staff", queues="duty,complaint")
    assert account.must_change_password and account.role is Role.STAFF
    assert (await staff.directory.login("kim", temporary, ip="x")).account is not None
    changed = await staff.directory.update("admin", "kim", role="telecom", queues="dept:*")
    assert changed.role is Role.TELECOM and changed.queues == frozenset({"dept:*"})
    unchanged = await staff.directory.update("admin", "kim", role="telecom")
    assert unchanged == changed
    reset = await staff.directory.reset_password("admin", "kim")
    assert reset != temporary
    assert (await staff.directory.login("kim", temporary, ip="x")).reason == "wrong_password"
    signed = await staff.directory.login("kim", reset, ip="x")
    assert signed.account is not None and signed.account.must_change_password
    with pytest.raises(AccountProblem, match="현재 비밀번호"):
        await staff.directory.change_password(signed.account, "wrong", "Another-Pass-77")
    with pytest.raises(AccountProblem, match="같은 문자"):
        await staff.directory.change_password(signed.account, reset, "aaaaBBBB1111!")
    with pytest.raises(AccountProblem, match="달라야"):
        await staff.directory.change_password(signed.account, reset, reset)
    await staff.directory.change_password(signed.account, reset, "Another-Pass-77")
    after = await staff.directory.login("kim", "Another-Pass-77", ip="x")
    assert after.account is not None and not after.account.must_change_password
    chain = await actions(staff, "accounts")
    assert [x[1] for x in chain] == ["account_add", "account_change", "password_reset", "password_change"]
    assert chain[0] == ("admin", "account_add", "kim", "ok", "role=staff queues=complaint,duty")
    assert chain[1][4] == "role=telecom queues=dept:*"
    secrets_used = (temporary, reset, "Another-Pass-77")
    assert not any(s in str(row) for row in chain + await actions(staff, "access") for s in secrets_used)


async def test_bad_administration_input_is_refused_in_korean(staff: Staff) -> None:
    with pytest.raises(AccountProblem, match="사용자 이름"):
        await staff.directory.add("admin", "k", "김", "staff")
    with pytest.raises(AccountProblem, match="역할"):
        await staff.directory.add("admin", "kim", "김", "boss")
    with pytest.raises(AccountProblem, match="이름"):
        await staff.directory.add("admin", "kim", "  ", "staff")
    with pytest.raises(AccountProblem, match="비밀번호"):
        await staff.directory.add("admin", "kim", "김", "staff", password="1234")
    await staff.directory.add("admin", "kim", "김", "staff")
    with pytest.raises(AccountProblem, match="이미"):
        await staff.directory.add("admin", "kim", "김", "staff")
    with pytest.raises(AccountNotFound):
        await staff.directory.disable("admin", "lee")
    assert [x[1] for x in await actions(staff, "accounts")] == ["account_add"]  # refusals change nothing


async def test_a_weaker_hash_is_upgraded_at_sign_in(staff: Staff) -> None:
    from argon2 import PasswordHasher
    from argon2.profiles import CHEAPEST

    await staff.directory.add("admin", "kim", "김민원", "staff", password=GOOD)
    async with staff.store.engine.begin() as conn:
        await conn.execute(
            update(staff_accounts).values(password_hash=PasswordHasher.from_parameters(CHEAPEST).hash(GOOD))
        )
    assert (await staff.directory.login("kim", GOOD, ip="x")).account is not None
    async with staff.store.engine.connect() as conn:
        stored = (await conn.execute(select(staff_accounts.c.password_hash))).scalar_one()
    assert stored.startswith("$argon2id$") and "m=65536" in stored


async def test_disable_and_reset_end_the_persons_sessions(sqlite_staff: Staff, redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    sessions = RedisSessions(client, idle_s=60, max_s=600)
    staff = await make_staff(sqlite_staff.store.url)
    staff.directory.sessions = sessions
    try:
        account, _ = await staff.directory.add("admin", "kim", "김민원", "staff")
        first = await sessions.create(account.id, ip="x")
        await staff.directory.reset_password("admin", "kim")
        assert await sessions.get(first.id) is None
        second = await sessions.create(account.id, ip="x")
        await staff.directory.disable("admin", "kim")
        assert await sessions.get(second.id) is None
    finally:
        await staff.store.close()
        await client.aclose()


async def test_concurrent_failures_are_all_counted(sqlite_staff: Staff) -> None:
    await sqlite_staff.directory.add("admin", "kim", "김민원", "staff", password=GOOD)
    outcomes = await asyncio.gather(*(sqlite_staff.directory.login("kim", "wrong", ip="x") for _ in range(5)))
    assert sorted(o.reason for o in outcomes) == ["locked"] + ["wrong_password"] * 4
    assert (await sqlite_staff.directory.login("kim", GOOD, ip="x")).reason == "locked"
