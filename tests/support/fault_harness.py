"""Harness of the fault suite (tests/system/test_faults.py) and the operations tests
(tests/system/test_sigterm_and_two_gateways.py).

One `Harness` per test: a private redis-server (AOF on, so it can be SIGKILLed and restarted
with its data), a fake KT lettering carrier and a fake NHN Cloud on loopback, the built-in AMI
server broadcasting recorded transcripts in a loop (fresh ids every cycle) to every gateway,
each gateway behind its own `TcpProxy` so its AMI link can be cut or silenced, and any number
of `gateway run` / `gateway worker` subprocesses (logs in files under the test's tmp dir).
`WebhookLoad` posts signed citizens' SMS continuously and, like a provider, retries a non-2xx
answer or a connection error against the next gateway. The `check_*` functions are the
end-of-test accounting: what was accepted or due must be in Redis / at the provider exactly
once, or visible (dead letter, job still held by the broker, a logged skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from aiohttp import ClientError, ClientSession, ClientTimeout

from adapters.carrier_http import PROFILES
from gateway.infra.crypto import Sealer, sign
from gateway.infra.rediskeys import inbox_key
from gateway.messaging.jobs import QUEUES, MsgpackEncoder
from gateway.sim.amiserver import AmiServer, Transcript, header
from gateway.sim.fake_carrier import FakeCarrierServer
from gateway.sim.fake_nhn import FakeNhnServer
from gateway.sim.redisproc import RedisProcess, free_port
from tests.conftest import ROOT, RULES
from tests.support.tcpproxy import TcpProxy

#: The calls looped by the AMI server: every outbound outcome with a mobile, a landline, an
#: inbound call. One cycle is ~60 recorded seconds.
LOAD_PLAN = (
    "answered_mobile",
    "busy",
    "answered_callee_hangs_up",
    "landline",
    "caller_cancels",
    "rejected",
    "inbound_from_citizen",
    "invalid_number",
)
MAIN_CITIZEN = "+821012345678"  # the mobile of most recorded outbound calls
INVALID_CITIZEN = "+821000000000"  # invalid_number.ami: opted out before every load
CITY_NUMBER = "031-900-2000"
PUBLIC_URL = "https://gateway.example/webhooks/sms/sandbox-sms"
REGISTERED_SENDERS = frozenset(
    {
        "0319000119",
        "0319002000",
        "0319002100",
        "0319003000",
        "0319003200",
        "0319003400",
        "0319003500",
        "0319003600",
        "0319004000",
    }
)
NAMESPACE = "gw"
QUEUE_NAMES = tuple(QUEUES)

ENV = {
    "GATEWAY_AMI_SECRET": "ami-secret-for-faults",
    "GATEWAY_NUMBER_KEY": "fault-number-key-0123456789",
    "GATEWAY_DATA_KEY": Sealer.new_key_spec(),
    "GATEWAY_INBOUND_SECRET": "inbound-secret-for-faults",
    "KT_TOKEN": "kt-token-for-faults",
}

GATEWAY_YAML = """
pbx:
  - {{name: city-hall, host: 127.0.0.1, port: {ami_port}, username: gateway, secret_env: GATEWAY_AMI_SECRET,
      trunks: [carrier], ping_interval_s: 1, ping_timeout_s: 1, backoff_max_s: 1}}
rules_dir: {rules}
redis: {{url_env: REDIS_URL}}
http: {{host: 127.0.0.1, port: {http_port}}}
shutdown_timeout_s: {shutdown_timeout_s}
carriers:
  kt: {{kind: http, profile: kt, base_url: "{carrier}", token_env: KT_TOKEN, deadline_ms: 800}}
alimtalk:
  nhn: {{kind: nhn, base_url: "{nhn}", appkey_env: NHN_AT_APPKEY, secret_env: NHN_AT_SECRET,
        sender_key_env: NHN_SENDER_KEY, deadline_ms: 2000}}
sms:
  nhn-sms: {{kind: nhn, base_url: "{nhn}", appkey_env: NHN_SMS_APPKEY, secret_env: NHN_SMS_SECRET, deadline_ms: 2000}}
inbound:
  sandbox-sms: {{kind: generic, signature_env: GATEWAY_INBOUND_SECRET, public_url: "{public_url}"}}
outbox: {{number_key_env: GATEWAY_NUMBER_KEY, data_key_env: GATEWAY_DATA_KEY}}
worker: {{threads: 2, namespace: {namespace}, heartbeat_timeout_ms: 1500, maintenance_chance: 1000000}}
log: {{json: true, level: INFO}}
"""


def make_rules(directory: Path) -> Path:
    """The project's rules with what a load of repeated calls to one citizen needs: lettering via
    the KT fake, no rate limit or frequency cap to speak of, no quiet hours (the test may run
    at night in Seoul), no notification sinks (their webhook secret is not configured)."""
    rules = directory / "rules"
    shutil.copytree(RULES, rules)
    lettering = (rules / "lettering.yaml").read_text(encoding="utf-8")
    lettering = lettering.replace("  - provider: sandbox", "  - provider: kt")
    lettering = lettering.replace("  count: 10\n", "  count: 100000\n")
    (rules / "lettering.yaml").write_text(lettering, encoding="utf-8")
    messaging = (rules / "messaging.yaml").read_text(encoding="utf-8")
    messaging = messaging.replace("frequency_cap_days: 7", "frequency_cap_days: 0")
    messaging = messaging.replace(
        'quiet_hours: {start: "21:00", end: "08:00"}', 'quiet_hours: {start: "00:00", end: "00:00"}'
    )
    (rules / "messaging.yaml").write_text(messaging, encoding="utf-8")
    (rules / "notify.yaml").unlink()
    assert "provider: kt" in lettering and "frequency_cap_days: 0" in messaging and '"00:00"' in messaging
    return rules


# ------------------------------------------------------------------ subprocesses


class Proc:
    """A `python -m gateway ...` subprocess; each start writes its own log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.argv, self.env, self.logs = name, list(argv), env, logs
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.log_files: list[Path] = []
        self.killed_at: list[float] = []  # time.perf_counter() of each SIGKILL (the fake servers' clock)

    async def start(self) -> None:
        self.starts += 1
        path = self.logs / f"{self.name}-{self.starts}.log"
        self.log_files.append(path)
        with path.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                *self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=out,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.proc is not None and self.proc.returncode is None:
            self.killed_at.append(time.perf_counter())
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self, timeout: float = 25.0) -> int | None:
        """SIGTERM, then SIGKILL if it did not exit in time. Never leaves a process behind."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            return None

    def log_text(self) -> str:
        return "\n".join(p.read_text("utf-8", "replace") for p in self.log_files if p.exists())

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def decisions(self) -> list[dict[str, Any]]:
        """Decision records, whether the log puts their fields at the top level or in `msg`."""
        out = []
        for entry in self.lines():
            if entry.get("logger") != "gateway.decisions":
                continue
            if "event" in entry:
                out.append(entry)
                continue
            with contextlib.suppress(ValueError, TypeError):
                record = json.loads(entry["msg"])
                if isinstance(record, dict):
                    out.append(record)
        return out


class GatewayProc(Proc):
    """`gateway run` with its own HTTP port and its own proxy in front of the AMI server."""

    def __init__(
        self, name: str, env: dict[str, str], logs: Path, *, config: Path, http_port: int, proxy: TcpProxy
    ) -> None:
        super().__init__(name, ["run", "--config", str(config)], env, logs)
        self.config, self.http_port, self.proxy = config, http_port, proxy

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def health(self, session: ClientSession) -> dict[str, Any] | None:
        try:
            async with session.get(f"{self.base_url}/health", timeout=ClientTimeout(total=2)) as resp:
                data: dict[str, Any] = await resp.json()
                return data
        except (ClientError, TimeoutError, ValueError):
            return None

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /health says ready (Redis reachable, PBX logged in)."""
        deadline = time.monotonic() + timeout
        async with ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.running, f"{self.name} exited:\n{self.log_text()[-3000:]}"
                health = await self.health(session)
                if health and health.get("ready"):
                    return
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not ready within {timeout}s:\n{self.log_text()[-3000:]}")


# ------------------------------------------------------------------ the harness


@dataclass
class Harness:
    tmp: Path
    redis_proc: RedisProcess
    carrier: FakeCarrierServer
    nhn: FakeNhnServer
    ami: AmiServer
    rules: Path
    env: dict[str, str]
    gateways: list[GatewayProc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    dials: dict[str, float] = field(default_factory=dict)  # Linkedid of each broadcast mobile DialBegin -> time
    shutdown_timeout_s: float = 10.0

    @property
    def redis_url(self) -> str:
        return self.redis_proc.url

    def on_block(self, data: bytes) -> None:
        """Note every DialBegin to a mobile over the carrier trunk the PBX broadcast."""
        if not data.startswith(b"Event: DialBegin\r\n"):
            return
        dial = header(data, b"DialString") or b""
        if (header(data, b"DestChannel") or b"").startswith(b"PJSIP/carrier-") and dial.startswith(b"010"):
            linked = header(data, b"Linkedid")
            if linked:
                self.dials[linked.decode()] = time.monotonic()

    def config_for(self, name: str, ami_port: int, http_port: int) -> Path:
        path = self.tmp / f"{name}.yaml"
        path.write_text(
            GATEWAY_YAML.format(
                ami_port=ami_port,
                rules=self.rules,
                http_port=http_port,
                carrier=self.carrier.base_url,
                nhn=self.nhn.base_url,
                public_url=PUBLIC_URL,
                namespace=NAMESPACE,
                shutdown_timeout_s=self.shutdown_timeout_s,
            ),
            encoding="utf-8",
        )
        return path

    async def add_gateway(self, *, start: bool = True) -> GatewayProc:
        name = f"gw{len(self.gateways) + 1}"
        proxy = TcpProxy(self.ami.host, self.ami.port)
        _, proxy_port = await proxy.start()
        http_port = free_port()
        gw = GatewayProc(
            name,
            self.env,
            self.tmp,
            config=self.config_for(name, proxy_port, http_port),
            http_port=http_port,
            proxy=proxy,
        )
        self.gateways.append(gw)
        if start:
            await gw.start()
        return gw

    async def add_worker(self, *, start: bool = True) -> Proc:
        config = self.gateways[0].config if self.gateways else self.config_for("worker", 1, free_port())
        worker = Proc(f"worker{len(self.workers) + 1}", ["worker", "--config", str(config)], self.env, self.tmp)
        self.workers.append(worker)
        if start:
            await worker.start()
        return worker

    async def cli(self, *args: str) -> str:
        """`gateway <args> --config <gw1's>`; returns stdout (asserts exit 0)."""
        config = self.gateways[0].config if self.gateways else self.config_for("cli", 1, free_port())
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            *args,
            "--config",
            str(config),
            cwd=ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]
        return out.decode()

    async def opt_out(self, number: str) -> float:
        """`gateway optout add NUMBER`; returns the time it was recorded."""
        await self.cli("optout", "add", number)
        return time.time()

    async def restart_redis(self, down_s: float = 0.0) -> None:
        """SIGKILL redis-server, stay down `down_s`, start it again on the same port and data."""
        self.redis_proc.kill()
        if down_s:
            await asyncio.sleep(down_s)
        old = self.redis_proc
        self.redis_proc = await asyncio.to_thread(
            RedisProcess(port=old.port, appendonly=True, data_dir=old.data_dir, appendfsync="always").start
        )

    def client(self) -> Any:
        """A synchronous client (redis-py types every reply as a union of everything: Any)."""
        return redis.Redis.from_url(self.redis_url, socket_timeout=5)

    async def settle(self, timeout: float = 30.0) -> bool:
        """Until no job is queued or running (retries waiting out their backoff aside)."""
        deadline = time.monotonic() + timeout
        client = self.client()
        quiet = 0
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    pending = sum(int(client.llen(f"{NAMESPACE}:{q}")) for q in QUEUE_NAMES)
                    running = sum(
                        int(client.scard(k))
                        for k in client.scan_iter(f"{NAMESPACE}:__acks__.*")
                        if not k.endswith(b".DQ")
                    )
                    quiet = quiet + 1 if pending == 0 and running == 0 else 0
                    if quiet >= 5:
                        return True
                await asyncio.sleep(0.2)
            return False
        finally:
            client.close()

    async def stop_all(self) -> None:
        for proc in [*self.gateways, *self.workers]:
            await proc.stop(timeout=15)
        for gw in self.gateways:
            await gw.proxy.stop()

    def decisions(self, event: str | None = None) -> list[dict[str, Any]]:
        out = [d for gw in self.gateways for d in gw.decisions()]
        out += [d for w in self.workers for d in w.decisions()]
        return [d for d in out if event is None or d.get("event") == event]


@contextlib.asynccontextmanager
async def harness(
    tmp_path: Path, *, speed: float = 10.0, plan: Iterable[str] = LOAD_PLAN, shutdown_timeout_s: float = 10.0
) -> AsyncIterator[Harness]:
    """Everything a fault test needs, torn down whatever happens (no process outlives the test)."""
    data = tmp_path / "redis"
    data.mkdir()
    redis_proc = RedisProcess(appendonly=True, data_dir=data, appendfsync="always").start()
    carrier = FakeCarrierServer(PROFILES["kt"], ENV["KT_TOKEN"], slow_s=3.0)
    nhn = FakeNhnServer(registered_senders=REGISTERED_SENDERS, slow_s=3.0)
    h: Harness | None = None
    ami: AmiServer | None = None
    try:
        await carrier.start()
        await nhn.start()
        env = dict(
            os.environ,
            **ENV,
            REDIS_URL=redis_proc.url,
            NHN_AT_APPKEY=nhn.alimtalk_appkey,
            NHN_AT_SECRET=nhn.alimtalk_secret,
            NHN_SENDER_KEY=nhn.sender_key,
            NHN_SMS_APPKEY=nhn.sms_appkey,
            NHN_SMS_SECRET=nhn.sms_secret,
        )
        env.pop("COMPLAINT_WEBHOOK_SECRET", None)
        holder: list[Harness] = []
        ami = AmiServer(
            [Transcript.named(n) for n in plan],
            secret=ENV["GATEWAY_AMI_SECRET"],
            speed=speed,
            loop_forever=True,
            broadcast=True,
            add_timestamps=True,
            on_block=lambda data: holder[0].on_block(data) if holder else None,
        )
        await ami.start()
        h = Harness(
            tmp_path, redis_proc, carrier, nhn, ami, make_rules(tmp_path), env, shutdown_timeout_s=shutdown_timeout_s
        )
        holder.append(h)
        yield h
    finally:
        if h is not None:
            await h.stop_all()
            redis_proc = h.redis_proc
        if ami is not None:
            await ami.stop()
        await nhn.stop()
        await carrier.stop()
        redis_proc.cleanup()


# ------------------------------------------------------------------ citizens' SMS load


def citizen(i: int) -> str:
    return f"+8210500{i:05d}"


def local(e164: str) -> str:
    national = "0" + e164[3:]
    return f"{national[:3]}-{national[3:7]}-{national[7:]}"


TEXTS = (
    "가로등이 고장났어요 {n}",
    "12가3456 불법주차 신고합니다 {n}",
    "여권 발급 문의드립니다 {n}",
    "쓰레기 무단투기 {n}",
)


@dataclass
class Post:
    at: float
    target: str
    result: int | str  # HTTP status or the exception's name


class WebhookLoad:
    """Signed citizens' SMS posted at a steady rate; each is retried (next gateway, short
    backoff) until some gateway answers 2xx, as a provider does, or `give_up_s` after the
    load stopped."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        rate_per_s: float = 10.0,
        senders: int = 40,
        optout_senders: Sequence[int] = (),
        give_up_s: float = 20.0,
    ) -> None:
        self.targets = list(targets)
        self.rate_per_s = rate_per_s
        self.senders = senders
        self.optout_senders = list(optout_senders)  # these citizens text "수신거부" at some point
        self.give_up_s = give_up_s
        self.sent: dict[str, tuple[str, str]] = {}  # message id -> (sender E.164, text)
        self.accepted: dict[str, float] = {}  # message id -> time.time() of its 2xx
        self.answers: dict[str, dict[str, Any]] = {}  # message id -> the 2xx body
        self.optouts: dict[str, float] = {}  # E.164 -> time.time() its opt-out got a 2xx
        self.posts: list[Post] = []
        self.gave_up: list[str] = []
        self.rejected: list[tuple[str, int, str]] = []  # 4xx answers: a bug in the load or the gateway
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped_at: float | None = None
        self._seq = itertools.count(1)

    async def run(self, stop: asyncio.Event) -> None:
        async with ClientSession(timeout=ClientTimeout(total=5)) as session:
            interval = 1.0 / self.rate_per_s
            next_at = time.monotonic()
            while not stop.is_set():
                n = next(self._seq)
                sender_i = n % self.senders
                text = TEXTS[n % len(TEXTS)].format(n=n)
                if self.optout_senders and n % 25 == 0:
                    sender_i = self.optout_senders.pop(0)
                    text = "수신거부"
                mid = f"fault-{n}"
                self.sent[mid] = (citizen(sender_i), text)
                task = asyncio.ensure_future(self._deliver(session, mid, citizen(sender_i), text, n))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                next_at += interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            self._stopped_at = time.monotonic()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=self.give_up_s + 10)

    async def _deliver(self, session: ClientSession, mid: str, sender: str, text: str, n: int) -> None:
        fields = {
            "message_id": mid,
            "from": local(sender),
            "to": CITY_NUMBER,
            "text": text,
            "received_at": f"{time.time():.3f}",
        }
        body = json.dumps(fields, ensure_ascii=False).encode()
        for attempt in itertools.count():
            target = self.targets[(n + attempt) % len(self.targets)]
            ts = str(int(time.time()))
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "X-Signature-Timestamp": ts,
                "X-Signature": sign(ENV["GATEWAY_INBOUND_SECRET"], ts, PUBLIC_URL, body),
            }
            result: int | str
            try:
                async with session.post(f"{target}/webhooks/sms/sandbox-sms", data=body, headers=headers) as resp:
                    result = resp.status
                    answer = await resp.json(content_type=None) if resp.status < 500 else {}
            except (ClientError, TimeoutError, ValueError, OSError) as exc:
                result, answer = type(exc).__name__, {}
            self.posts.append(Post(time.time(), target, result))
            if isinstance(result, int) and 200 <= result < 300:
                self.accepted[mid] = time.time()
                self.answers[mid] = answer
                if text == "수신거부":
                    self.optouts[sender] = time.time()
                return
            if isinstance(result, int) and 400 <= result < 500:
                self.rejected.append((mid, result, json.dumps(answer, ensure_ascii=False)))
                return
            if self._stopped_at is not None and time.monotonic() - self._stopped_at > self.give_up_s:
                self.gave_up.append(mid)
                return
            await asyncio.sleep(min(0.05 * (attempt + 1), 0.5))

    def statuses(self) -> Counter[int | str]:
        return Counter(p.result for p in self.posts)


# ------------------------------------------------------------------ end-of-test accounting


def inbox_counts(client: Any) -> Counter[str]:
    """How often each provider message id is in a queue's inbox (every queue)."""
    counts: Counter[str] = Counter()
    for key in client.scan_iter(inbox_key("*")):
        for _, fields in client.xrange(key):
            counts[fields[b"message_id"].decode()] += 1
    return counts


def check_inbound(h: Harness, load: WebhookLoad) -> Counter[str]:
    """Every message that got a 2xx is in its queue exactly once; nothing is there twice."""
    assert not load.rejected, load.rejected[:5]
    client = h.client()
    try:
        counts = inbox_counts(client)
    finally:
        client.close()
    missing = [m for m in load.accepted if counts[m] == 0]
    twice = {m: c for m, c in counts.items() if c > 1}
    assert not missing, f"{len(missing)} accepted messages are in no queue: {missing[:10]}"
    assert not twice, f"messages stored more than once: {list(twice.items())[:10]}"
    for answer in load.answers.values():
        assert answer.get("status") in ("accepted", "duplicate"), answer
    return counts


def broker_messages(client: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(pending, dead): idempotency key (or thread:message id) -> queue, of every job the broker
    still holds (queued, running, waiting out a retry backoff) or dead-lettered."""
    import dramatiq

    dramatiq.set_encoder(MsgpackEncoder())
    pending: dict[str, str] = {}
    dead: dict[str, str] = {}
    for key in client.scan_iter(f"{NAMESPACE}:*.msgs"):
        name = key.decode().removeprefix(f"{NAMESPACE}:").removesuffix(".msgs")
        for raw in client.hvals(key):
            message = dramatiq.Message.decode(raw)
            payload = message.args[0] if message.args else {}
            job = str(payload.get("key") or f"{payload.get('thread')}:{payload.get('message_id')}")
            (dead if name.endswith(".XQ") else pending)[job] = name
    return pending, dead


@dataclass
class Ledger:
    """What the end-of-test accounting found, for the report."""

    letterings_due: int = 0
    letterings_sent: int = 0
    postcalls_due: int = 0
    delivered: int = 0
    dead: int = 0
    pending: int = 0
    not_sent_opted_out: int = 0
    sms_delivered: int = 0
    sms_twice: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"letterings due/sent {self.letterings_due}/{self.letterings_sent}; post-call due {self.postcalls_due}:"
            f" delivered {self.delivered}, dead-lettered {self.dead}, pending retry {self.pending}, refused as"
            f" opted out {self.not_sent_opted_out}; SMS delivered {self.sms_delivered}, twice {len(self.sms_twice)}"
            f" {self.details}"
        )


def check_lettering(
    h: Harness,
    ledger: Ledger,
    *,
    opted_out: dict[str, float] | None = None,
    every_call_decided: bool = False,
    margin_s: float = 4.0,
    blind: Sequence[tuple[float, float]] = (),
) -> None:
    """Each call is lettered at most once at the carrier; every logged lettering reached it;
    no lettering to a number after its opt-out (plus `margin_s` for one in flight). With
    `every_call_decided`, every mobile DialBegin the PBX broadcast got a decision (lettering or
    a visible skip) from some gateway, except those dialed within a `blind` window
    ((start, end) in time.monotonic(): the AMI link was down) which may go unseen.

    One exception, by design (lettering claims are leases, see `Outbox.deliver`): a gateway
    SIGKILLed after its request reached the carrier but before it settled its lease leaves
    the call to its peer, which letters it again, with the same `callKey`, once the lease
    lapses if the phone still rings. That second request is counted
    (`ledger.details["relettered_after_kill"]`), and allowed only when a gateway was killed
    between the first request and the second."""
    requests = [r for r in h.carrier.requests if not r.error]
    per_call = Counter(str((r.body or {}).get("callKey")) for r in requests)
    kills = sorted(t for gw in h.gateways for t in gw.killed_at)
    twice = {}
    relettered = 0
    for call, n in per_call.items():
        if n == 1:
            continue
        times = sorted(r.received_at for r in requests if str((r.body or {}).get("callKey")) == call)
        if n == 2 and any(times[0] <= k <= times[1] for k in kills):
            relettered += 1
        else:
            twice[call] = n
    assert not twice, f"calls lettered more than once at the carrier: {twice}"
    ledger.details["relettered_after_kill"] = relettered
    assert not [r.error for r in h.carrier.requests if r.error]
    logged = {str(d["call"]) for d in h.decisions("lettering")}
    assert logged <= set(per_call), f"logged but never reached the carrier: {sorted(logged - set(per_call))[:5]}"
    for number, at in (opted_out or {}).items():
        late = [r for r in h.carrier.requests if r.recipient == number and _wall(r.received_at) > at + margin_s]
        assert not late, f"{len(late)} letterings to {number} after its opt-out"
    skipped = {str(d["call"]) for d in h.decisions("skipped")}
    ledger.letterings_sent = len(per_call)
    ledger.letterings_due = len(h.dials)
    if every_call_decided:
        undecided = [
            c
            for c, at in h.dials.items()
            if c not in per_call and c not in skipped and not any(start <= at <= end for start, end in blind)
        ]
        assert not undecided, f"{len(undecided)} dialed calls got no decision: {undecided[:5]}"
    ledger.details["skips"] = dict(
        Counter(str(d.get("reason")) for d in h.decisions("skipped") if str(d["call"]) in h.dials)
    )


def _wall(perf: float) -> float:
    """A perf_counter() stamp of this process as wall time."""
    return time.time() - (time.perf_counter() - perf)


def check_messages(
    h: Harness, ledger: Ledger, *, optouts: dict[str, float] | None = None, margin_s: float = 5.0
) -> None:
    """Every post-call content the gateways queued was delivered to NHN exactly once, or is a
    dead letter, or is still held by the broker (waiting out a retry backoff), or was refused by
    the guard because its citizen opted out meanwhile. No message reached a phone twice; after a
    citizen's opt-out only the confirmation of that opt-out reached them."""
    deliveries = Counter(d.idempotency_key for d in h.nhn.deliveries if d.idempotency_key)
    twice = {k: n for k, n in deliveries.items() if n > 1}
    # NHN's SMS API has no idempotency key: an SMS whose request reached NHN but whose job was
    # redelivered (worker killed mid-request, answer past the deadline) must be found by the
    # outbox's lookup (NHN's List API by senderGroupingKey), not sent again. Asserted by each test.
    sms_channels = {"sms", "lms"}
    sms_keys = {d.idempotency_key for d in h.nhn.deliveries if d.channel in sms_channels}
    ledger.sms_twice = {k: n for k, n in twice.items() if k in sms_keys}
    twice = {k: n for k, n in twice.items() if k not in sms_keys}
    assert not twice, f"delivered more than once: {twice}"
    client = h.client()
    try:
        pending, dead = broker_messages(client)
    finally:
        client.close()
    refused = {
        (str(d.get("pbx")), str(d.get("call")), str(d.get("action")))
        for d in h.decisions("sent")
        if d.get("result") in ("opted_out", "already_sent")
    }
    due = [(str(d["pbx"]), str(d["call"])) for d in h.decisions("postcall") if d.get("result") == "queued"]
    assert len(due) == len(set(due)), "a call's post-call content was queued twice"
    lost = []
    for pbx, call in due:
        prefix = f"{pbx}:{call}:postcall:"
        hits = [k for k in deliveries if k.startswith(prefix)]
        if hits:
            ledger.delivered += 1
        elif any(k.startswith(prefix) for k in dead):
            ledger.dead += 1
        elif any(k.startswith(prefix) for k in pending):
            ledger.pending += 1
        elif (pbx, call, "postcall") in refused:
            ledger.not_sent_opted_out += 1
        else:
            lost.append(prefix)
    ledger.postcalls_due = len(due)
    assert not lost, f"{len(lost)} queued post-call messages were neither delivered nor visible: {lost[:5]}"
    ledger.sms_delivered = sum(1 for d in h.nhn.deliveries if d.channel in ("sms", "lms"))
    for number, at in (optouts or {}).items():
        late = [
            d
            for d in h.nhn.deliveries
            if d.to == number and d.at > at + margin_s and ":opt_out_confirm:" not in d.idempotency_key
        ]
        assert not late, f"{number} opted out at {at:.1f} but got {late[:3]}"
    ledger.details["dead_letters"] = dict(Counter(v for v in dead.values()))
    ledger.details["held_by_broker"] = dict(Counter(v for v in pending.values()))
