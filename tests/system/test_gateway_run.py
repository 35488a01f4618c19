"""`gateway run` as operations run it: a subprocess with a gateway.yaml naming two PBXes,
secrets in the environment, a real redis-server, SIGTERM to stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession

from gateway.infra.crypto import Sealer
from gateway.sim.amiserver import AmiServer, Transcript
from gateway.sim.redisproc import RedisProcess, free_port
from tests.conftest import ROOT, RULES


async def test_run_two_pbxes_logs_masked_and_stops_on_sigterm(tmp_path: Path, redis_server: RedisProcess) -> None:
    secret = "ami-secret-for-test"
    servers = [
        AmiServer([Transcript.named("answered_mobile")], secret=secret, speed="fast"),
        AmiServer([Transcript.named("inbound_from_citizen")], secret=secret, speed="fast"),
    ]
    ports = [(await s.start())[1] for s in servers]
    http_port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
pbx:
  - name: main-hall
    host: 127.0.0.1
    port: {ports[0]}
    username: gateway
    secret_env: TEST_AMI_SECRET
    trunks: [carrier]
  - name: annex
    host: 127.0.0.1
    port: {ports[1]}
    username: gateway
    secret_env: TEST_AMI_SECRET
    trunks: [carrier]
rules_dir: {RULES}
redis: {{url_env: TEST_REDIS_URL}}
http: {{host: 127.0.0.1, port: {http_port}}}
carriers: {{sandbox: {{kind: sandbox}}}}
outbox: {{number_key_env: TEST_NUMBER_KEY, data_key_env: TEST_DATA_KEY}}
log: {{json: true, level: INFO}}
""",
        encoding="utf-8",
    )
    env = dict(
        os.environ,
        TEST_AMI_SECRET=secret,
        TEST_REDIS_URL=redis_server.url,
        TEST_NUMBER_KEY="number-key-for-tests-0123",
        TEST_DATA_KEY=Sealer.new_key_spec(),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "run",
        "--config",
        str(config),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(asyncio.gather(*(s.wait_done() for s in servers)), 30)
        health: dict[str, Any] = {}
        async with ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://127.0.0.1:{http_port}/healthz") as resp:
                        assert resp.status == 200
                    async with session.get(f"http://127.0.0.1:{http_port}/health") as resp:
                        health = await resp.json()
                        assert resp.status in (200, 503)
                    break
                except ClientError:
                    await asyncio.sleep(0.05)
        assert [p["name"] for p in health["pbx"]] == ["main-hall", "annex"]
        await asyncio.sleep(0.5)  # let the last decisions be logged
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for s in servers:
            await s.stop()
    assert proc.returncode == 0, err.decode()[-2000:]
    log = err.decode()
    decisions = [
        json.loads(line) for line in log.splitlines() if line.startswith("{") and '"gateway.decisions"' in line
    ]
    # One line per decision, its fields at the top level, the call id on every line of a call.
    assert all(d["call"] and d["pbx"] and d["msg"] for d in decisions if d["event"] != "pbx")
    assert {d["state"] for d in decisions if d["event"] == "pbx"} >= {"connected"}
    calls = {(d["pbx"], d["direction"]) for d in decisions if d["event"] == "call"}
    assert calls == {("main-hall", "outbound"), ("annex", "inbound")}
    assert [d["pbx"] for d in decisions if d["event"] == "lettering"] == ["main-hall"]
    # Privacy: no citizen number in clear anywhere in the logs, masked ones only.
    for digits in ("01012345678", "1012345678", "01098765432", "1098765432"):
        assert digits not in log
    assert "010-****-5678" in log and "010-****-5432" in log
