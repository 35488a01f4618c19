"""Fixtures of the staff tests: a records store with its access log and directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.domain.audit import audit_key
from gateway.domain.staff import LoginPolicy
from gateway.records.store import RecordsStore
from gateway.staff.accounts import SqlStaffDirectory
from gateway.staff.audit import SqlAccessLog

NUMBER_KEY = "staff-test-number-key-0123456789"
KEY = audit_key(NUMBER_KEY.encode())


@dataclass
class Staff:
    store: RecordsStore
    access: SqlAccessLog
    directory: SqlStaffDirectory


async def make_staff(url: str, policy: LoginPolicy | None = None) -> Staff:
    store = RecordsStore(url)
    access = SqlAccessLog(store, KEY)
    return Staff(store, access, SqlStaffDirectory(store, access, policy or LoginPolicy(max_failures=5, lock_s=600)))


@pytest.fixture
async def staff(records_url: str) -> AsyncIterator[Staff]:
    """On SQLite and on PostgreSQL."""
    s = await make_staff(records_url)
    yield s
    await s.store.close()


@pytest.fixture
async def sqlite_staff(sqlite_records_url: str) -> AsyncIterator[Staff]:
    s = await make_staff(sqlite_records_url)
    yield s
    await s.store.close()
