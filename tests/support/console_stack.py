"""The stack the staff console's browser tests (tests/console/browser) run against.

Real processes on loopback, as operations run them: a private redis-server, a SQLite records
file, a fake NHN Cloud (the worker's SMS provider: staff answers reach it), the built-in AMI
server replaying a few recorded calls in a loop (so /health is ready and the status page has
PBX links and lettering decisions to show), then `gateway run` (webhooks + the console on a
listener of its own) and `gateway worker` subprocesses. Accounts are made with the real CLI
(`gateway staff add`), citizens' texts arrive through the signed webhook, and the access
records are checked with `gateway audit verify|list`.

Synchronous on purpose: Playwright's sync API drives the browser from the test's thread, and
it must not run inside an asyncio loop. The fake servers (asyncio) run on a loop of their own
in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from gateway.domain.routing import InboundSms, route
from gateway.infra.crypto import Sealer, sign
from gateway.messaging.jobs import QUEUES
from gateway.rules.routing import load_routing
from gateway.sim.amiserver import AmiServer, Transcript
from gateway.sim.fake_nhn import FakeDelivery, FakeNhnServer
from gateway.sim.redisproc import RedisProcess, free_port
from tests.conftest import ROOT, RULES

T = TypeVar("T")

CITY_NUMBER = "031-900-2000"  # routing.yaml's `civil`: office hours go to the complaint queue
DUTY_NUMBER = "031-900-0119"  # routing.yaml's `duty`: always the duty office
PROVIDER = "sandbox-sms"
PUBLIC_URL = f"https://gateway.example/webhooks/sms/{PROVIDER}"
NAMESPACE = "gw"
# The city numbers NHN knows as registered senders (the worker sends answers from them).
REGISTERED_SENDERS = frozenset({"0319000119", "0319002000", "0319002100"})
# Recorded calls the AMI server plays in a loop (lettering decisions for the status page).
CALLS = ("answered_mobile", "busy", "landline", "inbound_from_citizen")

ENV = {
    "GATEWAY_AMI_SECRET": "ami-secret-for-console",
    "GATEWAY_NUMBER_KEY": "console-number-key-0123456789",
    "GATEWAY_INBOUND_SECRET": "inbound-secret-for-console",
}

GATEWAY_YAML = """
pbx:
  - {{name: city-hall, host: 127.0.0.1, port: {ami_port}, username: gateway, secret_env: GATEWAY_AMI_SECRET,
      trunks: [carrier], ping_interval_s: 1, ping_timeout_s: 1, backoff_max_s: 1}}
rules_dir: {rules}
redis: {{url_env: REDIS_URL}}
http: {{host: 127.0.0.1, port: {http_port}}}
records: {{url_env: GATEWAY_RECORDS_URL}}
carriers:
  sandbox: {{kind: sandbox, default: delivered}}
alimtalk:
  nhn: {{kind: nhn, base_url: "{nhn}", appkey_env: NHN_AT_APPKEY, secret_env: NHN_AT_SECRET,
        sender_key_env: NHN_SENDER_KEY, deadline_ms: 2000}}
sms:
  nhn-sms: {{kind: nhn, base_url: "{nhn}", appkey_env: NHN_SMS_APPKEY, secret_env: NHN_SMS_SECRET, deadline_ms: 2000}}
inbound:
  {provider}: {{kind: generic, signature_env: GATEWAY_INBOUND_SECRET, public_url: "{public_url}"}}
# The browser talks plain HTTP to the console on loopback, so the session cookie cannot carry
# the Secure flag here (a browser would not send it back over http://); behind the city's TLS
# reverse proxy it stays on (the default).
console:
  host: 127.0.0.1
  port: {console_port}
  secure_cookie: false
  lockout_failures: 5
  lockout_minutes: 30
  waiting_minutes: 30
outbox: {{number_key_env: GATEWAY_NUMBER_KEY, data_key_env: GATEWAY_DATA_KEY}}
worker: {{threads: 2, namespace: {namespace}}}
log: {{json: true, level: INFO}}
"""


def make_rules(directory: Path) -> Path:
    """The project's rules, with what a test at any hour needs: no quiet hours (the test may run
    at night in Seoul, and an answer must go out now), no frequency cap, no notification sinks
    (their webhook secret is not configured). Routing is the project's, untouched."""
    rules = directory / "rules"
    shutil.copytree(RULES, rules)
    messaging = (rules / "messaging.yaml").read_text(encoding="utf-8")
    changed = messaging.replace("frequency_cap_days: 7", "frequency_cap_days: 0").replace(
        'quiet_hours: {start: "21:00", end: "08:00"}', 'quiet_hours: {start: "00:00", end: "00:00"}'
    )
    assert changed != messaging and '"00:00"' in changed and "frequency_cap_days: 0" in changed
    (rules / "messaging.yaml").write_text(changed, encoding="utf-8")
    (rules / "notify.yaml").unlink()
    return rules


def received_for(
    queue: str, text: str, to: str = CITY_NUMBER, *, before: float | None = None, sender: str = "+821099990000"
) -> float:
    """The latest time at or before `before` (default now; else on the half hour) at which the
    project's routing sends `text` to `to` into `queue`: the routing depends on office hours and
    holidays, and the test must not depend on when it runs."""
    rules = load_routing(RULES / "routing.yaml")
    to_e164 = "+82" + to.replace("-", "")[1:]
    latest = time.time() if before is None else before
    half_hours = (latest // 1800 * 1800 - 1800 * k for k in range(24 * 2 * 14))  # two weeks: any holidays
    for when in (latest, *half_hours):
        if route(InboundSms("probe", PROVIDER, to_e164, sender, text, when), rules).queue == queue:
            return when
    raise AssertionError(f"no time in two weeks routes {text!r} to {to} into {queue!r}")


class _Loop:
    """An asyncio loop in a daemon thread, for the fake servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="console-stack-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Proc:
    """A `python -m gateway ...` subprocess, its stderr in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", *self.argv],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if it did not exit in time. Never leaves a process behind."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text("utf-8", "replace") if self.log.exists() else ""


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@dataclass
class ConsoleStack:
    """The running stack (`console_stack`): its addresses, the CLI, citizens' texts, and what
    reached Redis and the fake SMS provider."""

    tmp: Path
    redis_proc: RedisProcess
    nhn: FakeNhnServer
    ami: AmiServer
    loop: _Loop
    env: dict[str, str]
    config: Path
    http_port: int
    console_port: int
    gateway: Proc
    worker: Proc
    records_url: str
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/webhooks/sms/{PROVIDER}"

    # ------------------------------------------------------------------ the CLI

    def cli(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60.0) -> CliResult:
        """`gateway <args> --config <the stack's>`; asserts exit 0 unless `check` is False."""
        done = subprocess.run(
            [sys.executable, "-m", "gateway", *args, "--config", str(self.config)],
            cwd=ROOT,
            env=self.env,
            input=(stdin or "").encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        result = CliResult(
            done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")
        )
        if check:
            assert result.code == 0, f"gateway {' '.join(args)} exited {result.code}:\n{result.out}\n{result.err}"
        return result

    def add_account(self, username: str, name: str, role: str, queues: Sequence[str], password: str) -> CliResult:
        """`gateway staff add USER --name NAME --role ROLE --queues Q,.. --password-stdin`."""
        args = ["staff", "add", username, "--name", name, "--role", role, "--password-stdin"]
        if queues:
            args += ["--queues", ",".join(queues)]
        return self.cli(*args, stdin=password + "\n")

    def audit_verify(self) -> CliResult:
        return self.cli("audit", "verify", check=False)

    def audit_list(self, *args: str) -> str:
        return self.cli("audit", "list", *args).out

    # ------------------------------------------------------------------ citizens

    def citizen_sms(self, sender: str, text: str, *, to: str = CITY_NUMBER, at: float | None = None) -> dict[str, Any]:
        """A citizen's text through the signed webhook, as the provider posts it; the 2xx answer
        (status, thread, queue)."""
        fields = {
            "message_id": f"console-{os.getpid()}-{next(self._ids)}-{time.time_ns()}",
            "from": sender,
            "to": to,
            "text": text,
            "received_at": f"{time.time() if at is None else at:.3f}",
        }
        body = json.dumps(fields, ensure_ascii=False).encode()
        ts = str(int(time.time()))
        request = urllib.request.Request(
            self.webhook_url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "X-Signature-Timestamp": ts,
                "X-Signature": sign(ENV["GATEWAY_INBOUND_SECRET"], ts, PUBLIC_URL, body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                answer: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"webhook answered {exc.code}: {exc.read()[:500]!r}") from exc
        assert answer.get("status") == "accepted", answer
        return answer

    # ------------------------------------------------------------------ looking inside

    def client(self) -> Any:
        """A synchronous Redis client (redis-py types every reply as a union of everything: Any)."""
        return redis.Redis.from_url(self.redis_proc.url, socket_timeout=5)

    def sms_deliveries(self) -> list[FakeDelivery]:
        """What reached the fake NHN's SMS/LMS API so far."""
        return [d for d in list(self.nhn.deliveries) if d.channel in ("sms", "lms")]

    def settle(self, timeout: float = 30.0) -> None:
        """Until no job is queued or running at the worker (five quiet looks in a row): whatever
        was queued before has reached the providers by then."""
        client = self.client()
        try:
            quiet = 0

            def idle() -> bool:
                nonlocal quiet
                pending = sum(int(client.llen(f"{NAMESPACE}:{q}")) for q in QUEUES)
                running = sum(
                    int(client.scard(k)) for k in client.scan_iter(f"{NAMESPACE}:__acks__.*") if not k.endswith(b".DQ")
                )
                quiet = quiet + 1 if pending == 0 and running == 0 else 0
                return quiet >= 5

            self.wait_for("the worker idle", idle, timeout)
        finally:
            client.close()

    def wait_for(self, what: str, check: Any, timeout: float = 20.0) -> Any:
        """Poll `check()` until it returns something truthy (conditions, never fixed sleeps)."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout}s")
            time.sleep(0.05)

    def logs(self) -> str:
        return f"--- gateway\n{self.gateway.log_text()[-4000:]}\n--- worker\n{self.worker.log_text()[-2000:]}"


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def _wait_listening(proc: Proc, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _get(url) != 200:
        assert proc.running, f"{proc.name} exited:\n{proc.log_text()[-4000:]}"
        assert time.monotonic() < deadline, f"{url} not answering within {timeout}s:\n{proc.log_text()[-4000:]}"
        time.sleep(0.05)


@contextlib.contextmanager
def console_stack(tmp: Path, *, worker: bool = True) -> Iterator[ConsoleStack]:
    """The whole stack, torn down whatever happens (no process outlives it)."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "redis").mkdir()
    redis_proc = RedisProcess(data_dir=tmp / "redis").start()
    loop = _Loop()
    nhn = FakeNhnServer(registered_senders=REGISTERED_SENDERS, slow_s=3.0)
    ami = AmiServer(
        [Transcript.named(n) for n in CALLS],
        secret=ENV["GATEWAY_AMI_SECRET"],
        speed=5.0,
        loop_forever=True,
        broadcast=True,
        add_timestamps=True,
    )
    procs: list[Proc] = []
    try:
        loop.run(nhn.start())
        _, ami_port = loop.run(ami.start())
        records_url = f"sqlite:///{tmp / 'records.sqlite3'}"
        env = dict(
            os.environ,
            **ENV,
            GATEWAY_DATA_KEY=Sealer.new_key_spec(),
            REDIS_URL=redis_proc.url,
            GATEWAY_RECORDS_URL=records_url,
            NHN_AT_APPKEY=nhn.alimtalk_appkey,
            NHN_AT_SECRET=nhn.alimtalk_secret,
            NHN_SENDER_KEY=nhn.sender_key,
            NHN_SMS_APPKEY=nhn.sms_appkey,
            NHN_SMS_SECRET=nhn.sms_secret,
        )
        env.pop("COMPLAINT_WEBHOOK_SECRET", None)
        http_port, console_port = free_port(), free_port()
        config = tmp / "gateway.yaml"
        config.write_text(
            GATEWAY_YAML.format(
                ami_port=ami_port,
                rules=make_rules(tmp),
                http_port=http_port,
                console_port=console_port,
                nhn=nhn.base_url,
                provider=PROVIDER,
                public_url=PUBLIC_URL,
                namespace=NAMESPACE,
            ),
            encoding="utf-8",
        )
        gateway = Proc("gateway", ["run", "--config", str(config)], env, tmp / "gateway.log")
        work = Proc("worker", ["worker", "--config", str(config)], env, tmp / "worker.log")
        stack = ConsoleStack(
            tmp, redis_proc, nhn, ami, loop, env, config, http_port, console_port, gateway, work, records_url
        )
        stack.cli("records", "migrate")
        procs.append(gateway)
        gateway.start()
        if worker:
            procs.append(work)
            work.start()
        _wait_listening(gateway, f"http://127.0.0.1:{http_port}/healthz")
        _wait_listening(gateway, f"{stack.console_url}/healthz")
        yield stack
        # A clean stop is part of the test: SIGTERM with console pages open must drain and exit 0.
        codes = {proc.name: proc.stop() for proc in reversed(procs)}
        assert set(codes.values()) == {0}, f"exit codes {codes}\n{stack.logs()}"
    finally:
        for proc in reversed(procs):
            proc.stop()
        with contextlib.suppress(Exception):
            loop.run(ami.stop())
        with contextlib.suppress(Exception):
            loop.run(nhn.stop())
        loop.close()
        redis_proc.cleanup()
