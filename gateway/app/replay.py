"""`gateway replay FILE.ami...`: recorded AMI through the real pipeline, as fast as possible.

A built-in AMI server on loopback plays the files (one AMI session each, in order) with
their recorded timing compressed to nothing (it stamps each event with its recorded time,
as Asterisk does with `timestampevents = yes`); the real AMI client, tracker, policy and
outbox guard process them with sandbox carriers and a Redis (REDIS_URL, else a throwaway
redis-server). One JSON object per decision goes to stdout.

With `records_url` (`--records URL`) the facts of the replay (calls, sends) are written straight
into that records store (created and migrated when empty), so that a report can be checked
against the replay's own decisions; without it nothing is archived (never a live stream).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from adapters.sandbox import SandboxCarrier
from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.app.gateway import Gateway, Overrides
from gateway.app.worker import build_worker
from gateway.domain.models import LetteringResult, SendResult
from gateway.errors import ConfigError
from gateway.infra.config import GatewayConfig
from gateway.infra.crypto import Sealer
from gateway.infra.sinks import JsonLinesSink
from gateway.messaging.workers import start_worker, stop_worker, wait_idle
from gateway.ports import LetteringCarrier, NoRecords, RecordSink
from gateway.records.store import RecordsStore
from gateway.records.writer import DirectRecordSink
from gateway.sim.amiserver import AmiServer, Transcript
from gateway.sim.redisproc import RedisProcess

FAST_RECONNECT = {
    "backoff_initial_s": 0.01,
    "backoff_max_s": 0.05,
    "auth_backoff_initial_s": 0.01,
    "auth_backoff_max_s": 0.05,
    "connect_timeout_s": 2.0,
}


def demo_environ(config: GatewayConfig, base: Mapping[str, str]) -> dict[str, str]:
    """Secrets for a self-contained run: a fresh AMI secret shared with the built-in
    server and a fresh number-hash key unless the environment provides one."""
    environ = dict(base)
    for pbx in config.pbxes:
        environ[pbx.secret_env] = secrets.token_urlsafe(18)
    if len(environ.get(config.number_key_env, "")) < 16:
        environ[config.number_key_env] = secrets.token_urlsafe(24)
    if not environ.get(config.data_key_env):
        environ[config.data_key_env] = Sealer.new_key_spec()
    for spec in (*config.webhooks.values(), *config.inbound.values(), *config.unsubscribe.values()):
        environ.setdefault(spec["signature_env"], secrets.token_urlsafe(18))
    return environ


def sandbox_messaging(config: GatewayConfig, outcomes: Mapping[str, SendResult]) -> Overrides:
    """Sandbox twins for every Alimtalk and SMS provider the configuration names."""
    spec = {"kind": "sandbox", "outcomes": {k: v.value for k, v in outcomes.items()}}
    # KakaoTalk-only answers mean nothing to an SMS provider: there the number gets its SMS.
    kakao_only = {SendResult.NOT_KAKAO_USER, SendResult.BLOCKED}
    sms_spec = {"kind": "sandbox", "outcomes": {k: v.value for k, v in outcomes.items() if v not in kakao_only}}
    return Overrides(
        alimtalk={n: SandboxAlimtalk.from_spec(n, spec) for n in config.alimtalk or {"sandbox": {}}},
        sms={n: SandboxSms.from_spec(n, sms_spec) for n in config.sms or {"sandbox": {}}},
    )


def sandbox_carriers(config: GatewayConfig, outcomes: Mapping[str, LetteringResult]) -> dict[str, LetteringCarrier]:
    return {name: SandboxCarrier(name=name, outcomes=dict(outcomes)) for name in config.carriers}


async def replay(
    files: Sequence[Path],
    config: GatewayConfig,
    *,
    rules_dir: Path | None,
    out: TextIO,
    outcomes: Mapping[str, LetteringResult] | None = None,
    messaging_outcomes: Mapping[str, SendResult] | None = None,
    timeout_s: float = 60.0,
    records_url: str | None = None,
) -> int:
    for f in files:
        if not f.is_file():
            raise ConfigError(f"{f}: no such transcript")
    transcripts = [Transcript.load(f) for f in files]
    store: RecordsStore | None = None
    records: RecordSink = NoRecords()
    direct: DirectRecordSink | None = None
    if records_url:
        store = RecordsStore(records_url)
        try:
            await store.ready()  # an empty database is created; one behind this release refused
        except BaseException:
            await store.close()
            raise
        direct = DirectRecordSink(store)
        direct.start()
        records = direct
    try:
        return await _replay(
            transcripts,
            config,
            rules_dir=rules_dir,
            out=out,
            outcomes=outcomes,
            messaging_outcomes=messaging_outcomes,
            timeout_s=timeout_s,
            records=records,
            direct=direct,
        )
    finally:
        if store is not None:
            await store.close()


async def _replay(
    transcripts: list[Transcript],
    config: GatewayConfig,
    *,
    rules_dir: Path | None,
    out: TextIO,
    outcomes: Mapping[str, LetteringResult] | None,
    messaging_outcomes: Mapping[str, SendResult] | None,
    timeout_s: float,
    records: RecordSink,
    direct: DirectRecordSink | None,
) -> int:
    config = replace(config, pbxes=config.pbxes[:1])  # one recorded PBX at a time
    environ = demo_environ(config, os.environ)
    redis_proc: RedisProcess | None = None
    redis_url = config.resolved_redis_url(environ)
    if not redis_url:
        redis_proc = RedisProcess(own_session=True).start()
        redis_url = redis_proc.url
    pbx = config.pbxes[0]
    server = AmiServer(transcripts, username=pbx.username, secret=pbx.secret(environ), speed="fast")
    sink = JsonLinesSink(out)
    # Jobs of this replay live in their own namespace: never mixed with a live deployment's queues.
    messaging = sandbox_messaging(config, messaging_outcomes or {})
    messaging.queue_namespace = f"gw-replay-{secrets.token_hex(4)}"
    broker, runtime = build_worker(
        config,
        environ=environ,
        redis_url=redis_url,
        sink=sink,
        overrides=replace(messaging, rules_dir=rules_dir),
        records=records,
    )
    worker = start_worker(broker, threads=2, idle_ms=100)
    try:
        host, port = await server.start()
        gateway = Gateway(
            config,
            sink,
            environ=environ,
            overrides=Overrides(
                redis_url=redis_url,
                rules_dir=rules_dir,
                pbx_address=(host, port),
                carriers=sandbox_carriers(config, outcomes or {}),
                ami=FAST_RECONNECT,
                alimtalk=messaging.alimtalk,
                queue_namespace=messaging.queue_namespace,
                records=records,
            ),
        )
        await gateway.start()
        try:
            await asyncio.wait_for(server.wait_done(), timeout_s)
            # The server closed its last session; wait until the client has read it all.
            deadline = time.monotonic() + 10
            # Polls the AMI clients' own state; they expose no event for "read to EOF".
            while any(c.status().get("connected") for c in gateway.clients) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            for client in gateway.clients:
                await client.stop()  # the recording is over: no reconnect attempts
            await gateway.pipeline.drain()
            await wait_idle(broker, runtime, timeout_s=timeout_s)
            if direct is not None:
                await direct.flush()
        except TimeoutError:
            print(f"replay: timed out after {timeout_s}s", file=sys.stderr)
            return 1
        finally:
            await gateway.stop()
    finally:
        await asyncio.to_thread(stop_worker, worker)
        await server.stop()
        if redis_proc is not None:
            redis_proc.cleanup()
    return 0
