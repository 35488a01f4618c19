"""The unit tier runs without Redis, PostgreSQL, sockets or subprocesses (`pytest tests/unit`, seconds):
a unit test that asks for a Redis or PostgreSQL fixture fails here instead of quietly starting one."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def redis_server() -> None:
    pytest.fail("unit tests do not use Redis: move this test to tests/integration")


@pytest.fixture
def redis_url() -> None:
    pytest.fail("unit tests do not use Redis: move this test to tests/integration")


@pytest.fixture(scope="session")
def pg_server() -> None:
    pytest.fail("unit tests do not use PostgreSQL: move this test to tests/integration")


@pytest.fixture
def records_url() -> None:
    pytest.fail("unit tests do not use the records store: move this test to tests/integration")


@pytest.fixture
def empty_records_url() -> None:
    pytest.fail("unit tests do not use the records store: move this test to tests/integration")


@pytest.fixture
def sqlite_records_url() -> None:
    pytest.fail("unit tests do not use the records store: move this test to tests/integration")
