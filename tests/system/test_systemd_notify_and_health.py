"""How operations run it: systemd's notify protocol on a real unix socket, the worker's health
and metrics, and the providers' state every gateway's /health shows (issue #5)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import ClientError, ClientSession

from gateway.domain.models import AlimtalkRequest
from gateway.infra.config import load_config
from gateway.infra.crypto import Sealer
from gateway.infra.sdnotify import Notifier
from gateway.messaging.jobs import Enqueuer, make_broker
from gateway.outbox.guard import QueuedMessage
from gateway.outbox.providerstats import ProviderStats, publish, read_published
from gateway.sim.amiserver import AmiServer, Transcript
from gateway.sim.redisproc import RedisProcess, free_port
from tests.conftest import ROOT, RULES

KEYS = {"TEST_NUMBER_KEY": "number-key-for-tests-0123", "TEST_DATA_KEY": Sealer.new_key_spec()}


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket named by $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    async def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.drain():
                if message.startswith(prefix):
                    return message
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {prefix!r} from the service; got {self.messages[-5:]}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def _config(tmp_path: Path, ami_port: int, http_port: int, worker_port: int, *, outcomes: dict[str, str]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"""
pbx:
  - name: city-hall
    host: 127.0.0.1
    port: {ami_port}
    username: gateway
    secret_env: TEST_AMI_SECRET
    trunks: [carrier]
rules_dir: {RULES}
redis: {{url_env: TEST_REDIS_URL}}
http: {{host: 127.0.0.1, port: {http_port}}}
carriers: {{sandbox: {{kind: sandbox}}}}
alimtalk:
  kakao:
    kind: sandbox
    outcomes: {json.dumps(outcomes)}
outbox: {{number_key_env: TEST_NUMBER_KEY, data_key_env: TEST_DATA_KEY}}
worker: {{http_port: {worker_port}, threads: 2}}
shutdown_timeout_s: 5
log: {{json: true, level: INFO}}
""",
        encoding="utf-8",
    )
    return path


async def _get(url: str, tries: int = 200) -> tuple[int, Any]:
    async with ClientSession() as session:
        for _ in range(tries):
            try:
                async with session.get(url) as resp:
                    body = await resp.text()
                    return resp.status, json.loads(body) if url.endswith("health") else body
            except ClientError:
                await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered")


async def test_gateway_run_tells_systemd_ready_feeds_watchdog_and_says_stopping(
    tmp_path: Path, redis_url: str, notify_socket: NotifySocket
) -> None:
    secret = "ami-secret-for-test"
    server = AmiServer([Transcript.named("answered_mobile")], secret=secret, speed="fast")
    ami_port = (await server.start())[1]
    http_port = free_port()
    config = _config(tmp_path, ami_port, http_port, free_port(), outcomes={})
    env = dict(
        os.environ,
        TEST_AMI_SECRET=secret,
        TEST_REDIS_URL=redis_url,
        NOTIFY_SOCKET=str(notify_socket.path),
        WATCHDOG_USEC="200000",
        **KEYS,
    )
    env.pop("WATCHDOG_PID", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "run",
        "--config",
        str(config),
        cwd=ROOT,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        ready = await notify_socket.wait_for("READY=1")
        assert "STATUS=ready" in ready  # every PBX logged in before READY
        # READY means the listeners are up: /health answers at once, no retry needed.
        status, health = await _get(f"http://127.0.0.1:{http_port}/health", tries=1)
        assert status == 200 and health["pbx"][0]["authenticated"] and not health["draining"]
        assert health["providers"]["lettering"]["sandbox"]["circuit"] == "none"
        for _ in range(3):  # fed at half the 0.2 s period, from the event loop
            notify_socket.messages.clear()
            await notify_socket.wait_for("WATCHDOG=1", timeout=5)
        proc.send_signal(signal.SIGTERM)
        stopping = await notify_socket.wait_for("STOPPING=1")
        assert "draining" in stopping
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await server.stop()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "stopped in" in err.decode()


async def test_ready_is_sent_without_a_pbx_after_ready_timeout(
    tmp_path: Path, redis_url: str, notify_socket: NotifySocket
) -> None:
    """Citizens' SMS intake must not wait for a PBX that is down: READY anyway, /health says 503."""
    http_port = free_port()
    config = _config(tmp_path, free_port(), http_port, free_port(), outcomes={})  # nobody listens there
    config.write_text(config.read_text(encoding="utf-8") + "ready_timeout_s: 0.5\n", encoding="utf-8")
    env = dict(os.environ, TEST_AMI_SECRET="x", TEST_REDIS_URL=redis_url, NOTIFY_SOCKET=str(notify_socket.path), **KEYS)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "run",
        "--config",
        str(config),
        cwd=ROOT,
        env=env,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        ready = await notify_socket.wait_for("READY=1")
        assert "without every PBX or Redis" in ready
        status, health = await _get(f"http://127.0.0.1:{http_port}/health", tries=1)
        assert status == 503 and not health["pbx"][0]["authenticated"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_worker_notifies_systemd_and_reports_providers(
    tmp_path: Path, redis_url: str, notify_socket: NotifySocket
) -> None:
    failing = "+821055550001"
    worker_port = free_port()
    config_path = _config(tmp_path, free_port(), free_port(), worker_port, outcomes={failing: "temporary_error"})
    env = dict(
        os.environ, TEST_REDIS_URL=redis_url, NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="400000", **KEYS
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "worker",
        "--config",
        str(config_path),
        cwd=ROOT,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    config = load_config(config_path, env)
    broker = make_broker(redis_url, namespace=config.queue_namespace)
    enqueuer = Enqueuer(broker, config.sealer(env))
    try:
        await notify_socket.wait_for("READY=1")
        status, health = await _get(f"http://127.0.0.1:{worker_port}/health")
        assert status == 200 and health["threads_alive"] and health["providers"] == {}
        for n, to in enumerate(("+821055550000", failing)):
            alimtalk = AlimtalkRequest(f"k{n}", to, "HB_POSTCALL_01", (("title", "여권 발급 안내"),))
            assert await enqueuer.enqueue(
                "postcall", QueuedMessage(f"k{n}", "pbx", f"c{n}", "postcall", to, "kakao", alimtalk=alimtalk)
            )
        metrics = ""
        for _ in range(200):
            _, metrics = await _get(f"http://127.0.0.1:{worker_port}/metrics")
            if 'result="temporary_error"' in metrics and 'result="accepted"' in metrics:
                break
            await asyncio.sleep(0.05)
        assert 'gateway_sends_total{channel="alimtalk",provider="kakao",result="accepted"} 1.0' in metrics
        assert 'gateway_sends_total{channel="alimtalk",provider="kakao",result="temporary_error"}' in metrics
        notify_socket.messages.clear()
        await notify_socket.wait_for("WATCHDOG=1", timeout=5)
        # The worker publishes its view; any gateway's /health merges it (read_published).
        client = redis.Redis.from_url(redis_url)
        try:
            published: dict[str, Any] = {}
            for _ in range(100):
                published = read_published(client, config.queue_namespace)
                if published.get("kakao", {}).get("recent_errors"):
                    break
                await asyncio.sleep(0.1)
        finally:
            client.close()
        kakao = published["kakao"]
        assert kakao["workers"] == 1 and kakao["circuit"] == "closed" and kakao["recent_errors"] >= 1
        assert 0 < kakao["error_rate"] <= 1
        proc.send_signal(signal.SIGTERM)
        await notify_socket.wait_for("STOPPING=1")
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        enqueuer.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    sent = [d for d in lines if d.get("event") == "sent"]
    assert {d["call"] for d in sent} >= {"c0", "c1"}
    assert all(d["to"].startswith("+82-10-****") or d["to"].startswith("010-****") for d in sent), sent


def test_providers_merge_worst_circuit_and_drop_stale_workers(redis_server: RedisProcess) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.delete("ops-test:providers")
        publish(client, "ops-test", "host-a:1", {"nhn": {"circuit": "closed", "recent": 10, "recent_errors": 1}})
        publish(client, "ops-test", "host-b:2", {"nhn": {"circuit": "open", "recent": 10, "recent_errors": 9}})
        stale = json.dumps({"circuit": "open", "recent": 5, "recent_errors": 5, "at": time.time() - 3600})
        client.hset("ops-test:providers", "sms@host-c:3", stale)
        merged = read_published(client, "ops-test")
    finally:
        client.close()
    assert merged == {"nhn": {"circuit": "open", "recent": 20, "recent_errors": 10, "workers": 2, "error_rate": 0.5}}


def test_provider_window_is_recent_and_totals_only_grow() -> None:
    stats = ProviderStats(window=4)
    for result in ("temporary_error", "temporary_error", "accepted", "accepted", "accepted", "accepted"):
        stats.record("alimtalk", "nhn", result)
    assert stats.snapshot()["nhn"]["error_rate"] == 0.0  # the two errors left the window
    assert stats.totals() == {("alimtalk", "nhn", "temporary_error"): 2, ("alimtalk", "nhn", "accepted"): 4}


def test_notifier_is_silent_outside_systemd_and_speaks_to_abstract_sockets() -> None:
    assert not Notifier({}).enabled and not Notifier({}).ready()
    name = f"gateway-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
        assert notifier.ready("ok")
        assert listener.recv(100) == b"READY=1\nSTATUS=ok"
        assert notifier.watchdog_s is None  # WATCHDOG_PID names another process: not ours to feed
