"""Staff accounts and personal staff-API tokens for tests (issue #16: the shared token is gone).

`issue_tokens` creates accounts through the real `SqlStaffDirectory` on a test's records
database (tests/support/records.py fixtures) and issues each a token; the gateway under test
reads the same database (GATEWAY_RECORDS_URL in its environment, or `Overrides.records_url`).
The access records are chained with the key the gateway derives from the same number key, so
`gateway audit verify` on that database stays clean.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.domain.audit import audit_key
from gateway.domain.staff import LoginPolicy
from gateway.records.store import RecordsStore
from gateway.staff.accounts import SqlStaffDirectory
from gateway.staff.audit import SqlAccessLog

# Who the tests act as by default: two people working every queue (a claim conflict needs two).
EVERYONE: Mapping[str, str] = {"kim": "*", "lee": "*"}


async def issue_tokens(
    records_url: str, number_key: str, people: Mapping[str, str] = EVERYONE, *, role: str = "staff"
) -> dict[str, str]:
    """Accounts for `people` (user name -> queues, e.g. "duty,complaint" or "*") and a token
    for each: {user name: "gwt_..."}."""
    store = RecordsStore(records_url)
    try:
        await store.ready()
        access = SqlAccessLog(store, audit_key(number_key.encode()))
        directory = SqlStaffDirectory(store, access, LoginPolicy())
        tokens = {}
        for username, queues in people.items():
            if await directory.by_username(username) is None:
                await directory.add("test", username, username.title(), role, queues=queues)
            tokens[username] = await directory.issue_token("test", username, "tests")
        return tokens
    finally:
        await store.close()


def issue_tokens_sync(
    records_url: str, number_key: str, people: Mapping[str, str] = EVERYONE, *, role: str = "staff"
) -> dict[str, str]:
    """`issue_tokens` from synchronous code (a sync fixture, a subprocess harness)."""
    return asyncio.run(issue_tokens(records_url, number_key, people, role=role))
