"""`gateway demo`: the whole call pipeline on the embedded default, no setup needed.

Starts a Redis (REDIS_URL, else a private redis-server), the built-in AMI server playing
every recorded transcript in a loop at real speed (fresh call ids each round), sandbox
carriers, the gateway, its worker and its health endpoints, and a loopback stand-in for
the complaint system the citizens' messages are posted to; prints each call, lettering and
message as it happens.

The facts for the SQL archive take the production path: the gateway's and the worker's
emitters put them on the Redis stream, a `RecordsWriter` writes them into a SQLite file in a
temporary directory (printed at start, kept at exit for `gateway report ... --records URL`),
or into the records database named by `GATEWAY_RECORDS_URL` / a `records.url` of the
configuration given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TextIO

import dramatiq
from aiohttp import ClientError, ClientSession, web
from dramatiq.brokers.redis import RedisBroker
from redis.exceptions import RedisError

from gateway.app.consoleapp import console_app
from gateway.app.gateway import Gateway, Overrides
from gateway.app.httpapps import make_app
from gateway.app.replay import demo_environ, sandbox_carriers, sandbox_messaging
from gateway.app.worker import build_worker
from gateway.domain.models import LetteringResult, SendResult
from gateway.domain.notify import NotifyRules
from gateway.domain.staff import Role
from gateway.errors import GatewayError
from gateway.inbox.webhooks import InboundProvider, verify
from gateway.infra.config import DEFAULT_RECORDS_URL, GatewayConfig
from gateway.infra.crypto import sign
from gateway.infra.http import HttpServer
from gateway.infra.sinks import ConsoleSink
from gateway.messaging.runtime import WorkerRuntime
from gateway.messaging.workers import start_worker, stop_worker
from gateway.outbox.providerstats import publish
from gateway.outbox.store import connect
from gateway.records.emitter import StreamRecordSink
from gateway.records.store import RecordsStore
from gateway.records.writer import RecordsWriter
from gateway.rules.notify import load_notify
from gateway.sim.amiserver import TRANSCRIPTS_DIR, AmiServer, Transcript
from gateway.sim.redisproc import RedisProcess

# The order a visitor learns most from: ordinary calls first, the odd cases after.
DEMO_ORDER = [
    "answered_mobile",
    "landline",
    "inbound_from_citizen",
    "busy",
    "internal",
    "no_answer",
    "blind_transfer",
    "inbound_queue_korean_name",
    "answered_callee_hangs_up",
    "rejected",
    "caller_cancels",
    "unavailable",
    "invalid_number",
    "blind_transfer_ami",
    "coreshowchannels",
    "originate_phone_no_answer",
    "restart_during_call",
    "restart_reconnect",
    "login_failed",
]

# One recorded citizen's phone cannot show lettering (as an iPhone would answer) and has no
# KakaoTalk either, so the demo shows the whole fallback chain for that number.
DEMO_OUTCOMES = {"+821000000000": LetteringResult.UNSUPPORTED_DEVICE}
DEMO_MESSAGING_OUTCOMES = {"+821000000000": SendResult.NOT_KAKAO_USER}


def demo_transcripts(directory: Path = TRANSCRIPTS_DIR) -> list[Transcript]:
    names = [n for n in DEMO_ORDER if (directory / f"{n}.ami").exists()]
    names += sorted(p.stem for p in directory.glob("*.ami") if p.stem not in names)
    return [Transcript.load(directory / f"{n}.ami") for n in names]


class ComplaintDesk:
    """A loopback stand-in for the systems `notify.yaml` posts citizens' messages to (the
    complaint system): it checks each notification's signature with its queue's secret, as the
    real receiver must, prints it, and answers 200 (401 for a bad signature)."""

    def __init__(self, notify: NotifyRules, environ: Mapping[str, str], out: TextIO) -> None:
        self.notify = notify
        self.environ = environ
        self.out = out
        self.url = ""
        self._http: HttpServer | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/citizen-sms", self._receive)
        self._http = HttpServer(app, "127.0.0.1", 0)
        host, port = await self._http.start()
        self.url = f"http://{host}:{port}/citizen-sms"
        return self.url

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            data = json.loads(body)
            secret = self.environ.get(self.notify.sinks(str(data["queue"])).webhook_secret_env, "")
            verify(InboundProvider("complaint-desk", secret, self.url), request.headers, body, time.time())
        except (ValueError, KeyError, TypeError, GatewayError) as exc:
            print(f"[complaint] rejected: {exc}", file=self.out)
            return web.json_response({"error": str(exc)}, status=401)
        print(
            f"[complaint] received (signature ok): queue {data['queue']} thread {data['thread']} "
            f'citizen {data.get("citizen")} "{data.get("text")}"',
            file=self.out,
        )
        return web.json_response({"status": "received"})

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()


def demo_records_url(config: GatewayConfig, environ: Mapping[str, str]) -> str:
    """The records database of a demo: the environment's or one the configuration names;
    else (the default, `records.sqlite3` beside the configuration) a SQLite file in a new
    temporary directory: a demo writes nothing where it was not asked to."""
    given = environ.get(config.records.url_env, "")
    if given:
        return given
    default_name = DEFAULT_RECORDS_URL.removeprefix("sqlite:///")
    if not (config.records.url.startswith("sqlite:///") and config.records.url.endswith("/" + default_name)):
        return config.records.url
    return f"sqlite:///{Path(tempfile.mkdtemp(prefix='gateway-demo-records-')) / default_name}"


async def run_demo(
    config: GatewayConfig,
    *,
    out: TextIO = sys.stdout,
    duration_s: float | None = None,
    http_port: int | None = None,
    speed: str = "real",
    rules_dir: Path | None = None,
) -> int:
    environ = demo_environ(config, os.environ)
    records_url = demo_records_url(config, environ)
    store = RecordsStore(records_url)
    try:
        await store.ready()  # an empty database is created; one behind this release is refused
    except BaseException:
        await store.close()
        raise
    print(f"demo: records in {records_url}", file=out)
    notify = load_notify(rules_dir or config.rules_dir)
    for sinks in notify.queues.values():  # the stand-in complaint system's keys
        if sinks.webhook_secret_env:
            environ.setdefault(sinks.webhook_secret_env, secrets.token_urlsafe(18))
    desk = ComplaintDesk(notify, environ, out)
    redis_proc: RedisProcess | None = None
    redis_url = config.resolved_redis_url(environ)
    if not redis_url:
        redis_proc = RedisProcess(own_session=True).start()
        redis_url = redis_proc.url
        print(f"demo: started a private redis-server on {redis_url}", file=out)
    pbx = config.pbxes[0]
    server = AmiServer(
        demo_transcripts(),
        username=pbx.username,
        secret=pbx.secret(environ),
        speed="real" if speed == "real" else float(speed),
        loop_forever=True,
        # Faster than real: stamp events with their recorded time so talk times stay true.
        add_timestamps=speed != "real",
    )
    sink = ConsoleSink(out)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    records_client = connect(redis_url, timeout_s=5.0, max_connections=4)
    worker_records = StreamRecordSink(records_client, maxlen=config.records.stream_maxlen)
    writer = RecordsWriter(records_client, store, config.records.batch_size)
    worker: dramatiq.Worker | None = None
    gateway: Gateway | None = None
    http: HttpServer | None = None
    console: HttpServer | None = None
    publisher: asyncio.Task[None] | None = None
    # Everything started is stopped in reverse order, whatever fails on the way (a broken pipe
    # on stdout included): dramatiq's worker threads would otherwise keep the process alive.
    try:
        host, port = await server.start()
        print(f"demo: built-in AMI server replaying {len(server.plans)} recorded sessions on {host}:{port}", file=out)
        desk_url = await desk.start()
        print(f"demo: stand-in complaint system (notify.yaml's webhooks) at {desk_url}", file=out)
        messaging = sandbox_messaging(config, DEMO_MESSAGING_OUTCOMES)
        messaging.queue_namespace = "gw-demo"
        broker, runtime = build_worker(
            config,
            environ=environ,
            redis_url=redis_url,
            sink=sink,
            overrides=replace(messaging, rules_dir=rules_dir, notify_webhook_url=desk_url),
            records=worker_records,
        )
        worker_records.start()
        writer.start()
        worker = start_worker(broker, threads=2, idle_ms=200)
        gateway = Gateway(
            config,
            sink,
            environ=environ,
            overrides=Overrides(
                redis_url=redis_url,
                rules_dir=rules_dir,
                pbx_address=(host, port),
                alimtalk=messaging.alimtalk,
                queue_namespace=messaging.queue_namespace,
                carriers=sandbox_carriers(config, DEMO_OUTCOMES),
                records_url=records_url,
                ami={
                    "backoff_initial_s": 0.2,
                    "backoff_max_s": 2.0,
                    "auth_backoff_initial_s": 1.0,
                    "auth_backoff_max_s": 5.0,
                },
            ),
        )
        app = make_app(gateway.health, gateway.reports, gateway.http_routes)
        http = HttpServer(
            app, config.http_host, config.http_port if http_port is None else http_port, limits=config.http_limits
        )
        try:
            h_host, h_port = await http.start()
        except OSError as exc:  # the configured port is taken: any free port will do for a demo
            print(f"demo: port {http.port} unavailable ({exc.strerror}); using a free one", file=out)
            http = HttpServer(app, config.http_host, 0, limits=config.http_limits)
            h_host, h_port = await http.start()
        print(f"demo: health at http://{h_host}:{h_port}/healthz and /health  (Ctrl-C to stop)", file=out)
        smtp = await gateway.start_smtp(port=0)
        if smtp:
            print(
                f"demo: citizens' SMS intake: SMTP {smtp[0]}:{smtp[1]}, "
                f"POST http://{h_host}:{h_port}/webhooks/sms/<provider>",
                file=out,
            )
        console = await _start_console(config, gateway, out)
        await gateway.start()
        publisher = asyncio.get_running_loop().create_task(_publish_providers(broker, runtime))
        await _sample_citizen_sms(gateway, f"http://{h_host}:{h_port}", out)
        if duration_s is None:
            await stop.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration_s)
    finally:
        if publisher is not None:
            publisher.cancel()
        if console is not None:
            await console.stop()
        if http is not None:
            await http.stop()
        if gateway is not None:
            await gateway.stop()
        if worker is not None:
            await asyncio.to_thread(stop_worker, worker)
        await worker_records.stop(1.0)
        await writer.stop(2.0)
        await records_client.aclose()
        await store.close()
        await server.stop()
        await desk.stop()
        if redis_proc is not None:
            redis_proc.cleanup()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(sink.counts.items()))
    print(f"demo: stopped ({counts})", file=out)
    return 0


async def _start_console(config: GatewayConfig, gateway: Gateway, out: TextIO) -> HttpServer | None:
    """The staff console on its configured port (any free one when that is taken), with a demo
    administrator who sees every queue; prints its address, user name and password on one line."""
    if config.console is None:
        return None
    app = console_app(gateway, config.console)
    console = HttpServer(app, config.console.host, config.console.port, limits=config.http_limits, name="console")
    try:
        host, port = await console.start()
    except OSError as exc:
        print(f"demo: console port {console.port} unavailable ({exc.strerror}); using a free one", file=out)
        console = HttpServer(app, config.console.host, 0, limits=config.http_limits, name="console")
        host, port = await console.start()
    directory = gateway.staff_directory
    actor = "demo"
    if await directory.by_username("demo") is None:
        _, password = await directory.add(
            actor, "demo", "데모 관리자", Role.ADMIN, queues="*", must_change_password=False
        )
    else:  # a records database kept from an earlier demo (GATEWAY_RECORDS_URL)
        password = await directory.reset_password(actor, "demo", must_change_password=False)
    print(f"console: http://{host}:{port}/  user demo password {password}", file=out)
    return console


async def _publish_providers(broker: RedisBroker, runtime: WorkerRuntime, every_s: float = 2.0) -> None:
    """What `gateway worker` does in its main loop: its providers' state, for /health."""
    while True:
        with contextlib.suppress(RedisError):
            await asyncio.to_thread(publish, broker.client, broker.namespace, "demo-worker", runtime.provider_report())
        await asyncio.sleep(every_s)


# Citizens' texts the demo posts to its own webhook, signed like a provider would (Asia/Seoul).
SAMPLE_SMS = [
    ("demo-sms-1", "010-3333-4444", "031-900-2000", "가로등이 고장났어요", "2026-11-24T10:00:00+09:00"),
    ("demo-sms-2", "010-5555-6666", "031-900-2000", "가로등이 고장났어요", "2026-09-25T23:00:00+09:00"),
    ("demo-sms-3", "010-7777-8888", "031-900-2100", "수신거부", "2026-11-24T11:00:00+09:00"),
    (
        "demo-sms-4",
        "010-2222-1357",
        "031-900-2000",
        "집 앞에 불법주차 차량이 3일째 있어요",
        "2026-12-01T09:30:00+09:00",
    ),
    ("demo-sms-5", "010-4444-2468", "031-900-0119", "도로에 물이 넘쳐요 빨리 와주세요", "2026-11-29T02:10:00+09:00"),
    ("demo-sms-6", "010-6666-9753", "031-900-2100", "밤마다 공사 소음이 심합니다", "2026-12-02T22:40:00+09:00"),
]


async def _sample_citizen_sms(gateway: Gateway, base: str, out: TextIO) -> None:
    """Flow B in the demo: three citizens text the city; the answers show the routing."""
    provider = next(iter(gateway.inbound.values()), None)
    if provider is None:
        return
    async with ClientSession() as session:
        for message_id, sender, to, text, at in SAMPLE_SMS:
            body = json.dumps(
                {
                    "message_id": message_id,
                    "from": sender,
                    "to": to,
                    "text": text,
                    "received_at": datetime.fromisoformat(at).timestamp(),
                },
                ensure_ascii=False,
            ).encode()
            ts = str(int(time.time()))
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "X-Signature-Timestamp": ts,
                "X-Signature": sign(provider.secret, ts, provider.public_url, body),
            }
            try:
                async with session.post(f"{base}/webhooks/sms/{provider.name}", data=body, headers=headers) as resp:
                    answer = await resp.json()
            except ClientError as exc:
                print(f"demo: sample SMS not posted: {exc}", file=out)
                return
            print(f'[sms in]    {at[:16]} "{text}" -> HTTP {resp.status} queue {answer.get("queue")}', file=out)
