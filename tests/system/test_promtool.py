"""Prometheus's own linter on what we expose and on our alert rules.

`promtool check metrics` reads the real /metrics of a gateway (one lettered call behind it) and
of a `gateway worker` (HTTP listener, a job handled, delayed jobs held); `promtool check rules`
reads ops/prometheus/alerts.yml. promtool is Debian's `prometheus` package (ops/bootstrap.sh).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import urllib.request
from typing import Any

import pytest

from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.app.gateway import Overrides
from gateway.app.replay import demo_environ
from gateway.app.worker import build_worker
from gateway.app.workerhttp import WorkerHttp
from gateway.domain.models import AlimtalkRequest
from gateway.infra.config import load_config
from gateway.messaging.jobs import Enqueuer
from gateway.messaging.workers import start_worker, stop_worker, wait_idle
from gateway.outbox.guard import QueuedMessage
from tests.conftest import ROOT
from tests.system.test_ops_files import _gateway_scrape

PROMTOOL = shutil.which("promtool")
# Skipped only outside CI (a contributor without Debian's prometheus); in CI a missing promtool fails.
pytestmark = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"), reason="promtool missing (ops/bootstrap.sh installs prometheus)"
)


def _check_metrics(exposition: str) -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60, check=False
    )
    # promtool prints lint problems and exits non-zero (3 for lint findings).
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr
    assert "gateway_" in exposition


async def test_gateway_metrics_pass_promtool(redis_url: str) -> None:
    text = await _gateway_scrape(redis_url)
    assert "gateway_lettering_latency_seconds_bucket" in text
    _check_metrics(text)


async def test_worker_metrics_pass_promtool(redis_url: str) -> None:
    config = load_config()
    env = demo_environ(config, os.environ)
    alimtalk = SandboxAlimtalk("sandbox-alimtalk")
    broker, runtime = build_worker(
        config,
        environ=env,
        redis_url=redis_url,
        overrides=Overrides(alimtalk={"sandbox-alimtalk": alimtalk}, sms={"sandbox-sms": SandboxSms("sandbox-sms")}),
    )
    enqueuer = Enqueuer(broker, config.sealer(env))
    to = "+821012345678"

    def message(key: str) -> QueuedMessage:
        return QueuedMessage(
            key,
            "pbx",
            key,
            "postcall",
            to,
            "sandbox-alimtalk",
            alimtalk=AlimtalkRequest(key, to, "HB_POSTCALL_01", (("title", "안내"),)),
        )

    worker = start_worker(broker, threads=2, idle_ms=50)
    http = WorkerHttp(broker, runtime, worker, "127.0.0.1", 0)
    host, port = http.start()
    try:
        assert await enqueuer.enqueue("postcall", message("now"))  # the outbox's series appear with a job
        assert await wait_idle(broker, runtime, timeout_s=20)
        assert await enqueuer.enqueue("postcall", message("morning"), delay_s=3600)
        client: Any = broker.client
        deadline = time.monotonic() + 20
        while client.llen(f"{broker.namespace}:postcall.DQ"):
            assert time.monotonic() < deadline, "the worker did not take the delayed job"
            await asyncio.sleep(0.05)

        def get() -> str:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
                return str(resp.read().decode())

        text = await asyncio.to_thread(get)
    finally:
        http.stop()
        await asyncio.to_thread(stop_worker, worker)
        enqueuer.close()
    assert len(alimtalk.deliveries) == 1
    assert 'gateway_queue_delayed_held{queue="postcall"} 1.0' in text
    assert "gateway_sends_total" in text and "gateway_outbox_decisions_total" in text
    _check_metrics(text)


def test_alert_rules_pass_promtool() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(ROOT / "ops" / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
