"""Shared fixtures: a real private redis-server per test session, and transcript paths."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from gateway.sim.redisproc import RedisProcess

# The records store's fixtures (a private PostgreSQL per session; tests/unit refuses them).
pytest_plugins = ["tests.support.records"]

# Hypothesis profiles for the fuzz suite (tests/test_fuzz_*.py, marker `fuzz`; see tests/fuzz/FUZZING.md).
# "ci" (default) keeps the whole fuzz suite well under a minute on two cores; "long" is the
# documented soak run (HYPOTHESIS_PROFILE=long). No deadline: shared CI cores make timing flaky.
settings.register_profile(
    "ci", max_examples=60, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=5000, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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
