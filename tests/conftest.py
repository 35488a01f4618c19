"""Shared fixtures: a real private redis-server per test session, and transcript paths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.redisproc import RedisProcess

ROOT = Path(__file__).resolve().parent.parent
TRANSCRIPTS = ROOT / "gateway" / "data" / "transcripts"
RULES = ROOT / "rules"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> Iterator[str]:
    """A clean database on the session's redis-server."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url
