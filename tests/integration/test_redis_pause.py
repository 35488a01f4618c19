"""A paused or restarted Redis, with and without a password (issue #13): while Redis cannot
answer, citizens' webhooks get 503 and the lettering guard answers store_unavailable, each
within its timeouts (never a hang), and /health says not ready, Redis unreachable; once Redis
is back, the next requests succeed and /health is ready again, without restarting the gateway.

A pause is a SIGSTOP of the redis-server (a VM paused by its host, a stuck fork, a debugger):
its kernel still accepts TCP connections, so a reconnect gets as far as AUTH/SELECT and waits
there; a kill-and-restart is a SIGKILL and a new redis-server on the same port.

Everything is real: a redis-server per test, the gateway's HTTP app on a loopback port, signed
webhooks over HTTP, the outbox guard's admit over the real-time connection (`gateway.infra.wire`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import ClientSession, ClientTimeout

from gateway.app.gateway import Gateway, Overrides
from gateway.app.httpapps import make_app
from gateway.infra.config import load_config
from gateway.infra.crypto import Sealer, sign
from gateway.infra.http import HttpServer
from gateway.outbox.guard import Admission, Verdict
from gateway.sim.redisproc import RedisProcess
from tests.conftest import RULES
from tests.support.staff import issue_tokens

ENV = {
    "GATEWAY_NUMBER_KEY": "pause-number-key-0123456789",
    "GATEWAY_DATA_KEY": Sealer.new_key_spec(),
    "GATEWAY_INBOUND_SECRET": "inbound-secret",
    "GATEWAY_AMI_SECRET": "x",
    "GATEWAY_WEBHOOK_SECRET": "w",
}
PUBLIC_URL = "http://127.0.0.1:8080/webhooks/sms/sandbox-sms"  # the default config's (signatures cover it)
PASSWORD = "pause-s3cret"
# Generous bounds, never measured durations: a request must be answered within REQUEST_BOUND_S
# (its own timeouts are 0.25 s per command, 1 s per connect), and everything must work again
# within RECOVERY_BOUND_S of Redis being back.
REQUEST_BOUND_S = 5.0
RECOVERY_BOUND_S = 15.0


@dataclass
class Site:
    """A gateway (no PBX, so `ready` is about Redis alone) behind its real HTTP app."""

    gateway: Gateway
    http: HttpServer
    base: str
    server: RedisProcess
    password: str | None
    serial: itertools.count[int]
    thread: str = ""  # the last thread a webhook opened (staff reply to it)
    token: str = ""  # kim's personal staff-API token

    def admin(self) -> redis.Redis:
        return redis.Redis(port=self.server.port, password=self.password, socket_timeout=2)

    async def webhook(self, session: ClientSession) -> tuple[int, dict[str, Any]]:
        """A citizen's SMS, signed as the provider signs it; a fresh message id every time."""
        n = next(self.serial)
        fields = {
            "message_id": f"pause-{n}",
            "from": f"010-5555-{n % 10000:04d}",
            "to": "031-900-2000",
            "text": "가로등이 꺼졌어요",
            "received_at": str(time.time()),
        }
        body = json.dumps(fields, ensure_ascii=False).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Signature-Timestamp": ts,
            "X-Signature": sign("inbound-secret", ts, PUBLIC_URL, body),
        }
        async with session.post(f"{self.base}/webhooks/sms/sandbox-sms", data=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def reply(self, session: ClientSession, thread: str) -> tuple[int, dict[str, Any]]:
        """A staff reply to a thread (claim, reply-once marker, then the guard's admit and queue)."""
        body = {"text": f"확인했습니다 ({next(self.serial)})"}
        async with session.post(
            f"{self.base}/api/threads/{thread}/reply", json=body, headers={"Authorization": f"Bearer {self.token}"}
        ) as resp:
            return resp.status, await resp.json()

    async def staff_reads(self, session: ClientSession) -> list[tuple[str, int, Any]]:
        """Every other staff API route: the inbox, a thread, a claim, opt-out status and change.
        Each answers JSON (a 503 while Redis cannot answer, never a plain-text 500)."""
        auth = {"Authorization": f"Bearer {self.token}"}
        calls = [
            ("GET", "/api/inbox/complaint", None),
            ("GET", f"/api/threads/{self.thread}", None),
            ("POST", f"/api/threads/{self.thread}/claim", {}),
            ("GET", "/api/optout/010-5555-0001", None),
            ("POST", "/api/optout", {"number": "010-5555-0002", "action": "add"}),
        ]
        out = []
        for method, path, body in calls:
            async with session.request(method, f"{self.base}{path}", json=body, headers=auth) as resp:
                out.append((path, resp.status, await resp.json()))
        return out

    async def health(self, session: ClientSession) -> tuple[int, dict[str, Any]]:
        async with session.get(f"{self.base}/health") as resp:
            return resp.status, await resp.json()

    async def admit(self) -> Verdict:
        """The lettering guard's admit (opt-out, dedupe, rate limit: one script over the wire)."""
        n = next(self.serial)
        admission = Admission(
            pbx="city-hall", call_id=f"call-{n}", action="call_notice", recipient=f"+8210555{n % 100000:05d}"
        )
        return await asyncio.wait_for(self.gateway.outbox.admit(admission), REQUEST_BOUND_S)


def _protect(proc: RedisProcess, password: str | None) -> None:
    """`requirepass` on a (re)started redis-server (a restart forgets a CONFIG SET)."""
    if password:
        admin = redis.Redis(port=proc.port, socket_timeout=2)
        admin.config_set("requirepass", password)
        admin.close()


@pytest.fixture(params=[(PASSWORD, 0), (None, 0), (None, 3)], ids=["password", "no_password", "no_password_db3"])
async def site(request: pytest.FixtureRequest, tmp_path: Path, sqlite_records_url: str) -> AsyncIterator[Site]:
    """A gateway on its own redis-server: password-protected, open, or open with a database
    other than 0 (a reconnect then sends SELECT, which a paused Redis leaves unanswered too)."""
    password, db = request.param
    proc = RedisProcess(data_dir=tmp_path).start()
    _protect(proc, password)
    url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{proc.port}/{db}"
    environ = {**os.environ, **ENV, "REDIS_URL": url, "GATEWAY_RECORDS_URL": sqlite_records_url}
    config = replace(load_config(), pbxes=())
    gateway = Gateway(
        config, _Sink(), environ=environ, overrides=Overrides(redis_url=url, rules_dir=RULES, queue_namespace="t-pause")
    )
    await gateway.start()
    http = HttpServer(make_app(gateway.health, gateway.reports, gateway.http_routes), "127.0.0.1", 0)
    host, port = await http.start()
    s = Site(gateway, http, f"http://{host}:{port}", proc, password, itertools.count(1))
    s.token = (await issue_tokens(sqlite_records_url, ENV["GATEWAY_NUMBER_KEY"], {"kim": "*"}))["kim"]
    try:
        yield s
    finally:
        await http.stop()
        await gateway.stop(drain_timeout=2.0)
        proc.cleanup()


class _Sink:
    def decision(self, record: Any) -> None:
        pass


async def _works(site: Site, session: ClientSession) -> None:
    """Everything answers: a webhook is accepted, staff can reply to it, the guard admits,
    /health is ready."""
    status, body = await site.webhook(session)
    assert status == 200 and body["status"] == "accepted", (status, body)
    site.thread = body["thread"]
    status, answer = await site.reply(session, site.thread)
    assert status == 202 and answer["result"] == "queued", (status, answer)
    assert [status for _, status, _ in await site.staff_reads(session)] == [200] * 5
    assert await site.admit() is Verdict.ADMITTED
    status, health = await site.health(session)
    assert status == 200 and health["ready"] and health["redis"]["reachable"], health


async def _fails_fast(site: Site, session: ClientSession, *, pool_down: bool = True) -> None:
    """Redis cannot answer: a webhook and a staff reply get 503 (the provider, the staff client
    retries), the guard answers store_unavailable, /health 503 with Redis unreachable; each
    within its bound (no hang)."""
    status, body = await site.webhook(session)
    assert status == 503, (status, body)
    status, body = await site.reply(session, site.thread)
    # 503 whether the thread cannot be read or only the guard's admit fails (the pool still
    # answers, the real-time connection does not).
    assert status == 503, (status, body)
    if pool_down:  # (reads over the redis-py pool still work when only the real-time connection is cut)
        for path, status, body in await site.staff_reads(session):
            assert status == 503 and "error" in body, (path, status, body)
    assert await site.admit() is Verdict.STORE_UNAVAILABLE
    status, health = await site.health(session)
    assert status == 503 and not health["ready"] and not health["redis"]["reachable"], health


async def _during(seconds: float, check: Callable[[], Awaitable[None]]) -> int:
    """`check` again and again for `seconds` (each time a new reconnect attempt); how many times."""
    rounds = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or rounds == 0:
        await check()
        rounds += 1
        await asyncio.sleep(0.2)
    return rounds


async def _recovers(site: Site, session: ClientSession) -> None:
    """Within RECOVERY_BOUND_S of Redis being back, everything works (retrying meanwhile, as a
    provider would: a request that was under way when Redis came back may still fail)."""
    deadline = time.monotonic() + RECOVERY_BOUND_S
    while True:
        try:
            await _works(site, session)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    for _ in range(3):  # and keeps working
        await _works(site, session)


def _session() -> ClientSession:
    return ClientSession(timeout=ClientTimeout(total=REQUEST_BOUND_S))


@pytest.mark.parametrize("pause_s", [1.0, 3.0, pytest.param(10.0, marks=[pytest.mark.fault, pytest.mark.slow])])
async def test_a_paused_redis_fails_requests_fast_and_they_succeed_after(site: Site, pause_s: float) -> None:
    """SIGSTOP for `pause_s`, then SIGCONT: the issue's 1.5 s pause of a password-protected
    Redis once froze intake until the gateway was restarted (a reconnect's AUTH timed out with
    an error nobody caught, and every later command waited for that connect for ever)."""
    assert site.server.proc is not None
    pid = site.server.proc.pid
    async with _session() as session:
        await _works(site, session)
        os.kill(pid, signal.SIGSTOP)
        try:
            await _during(pause_s, lambda: _fails_fast(site, session))
        finally:
            os.kill(pid, signal.SIGCONT)
        await _recovers(site, session)
    assert site.gateway.wire.events["connect_failures"] + site.gateway.wire.events["timeouts"] > 0


@pytest.mark.parametrize("down_s", [0.5, 3.0])
async def test_a_killed_and_restarted_redis_fails_requests_fast_and_they_succeed_after(
    site: Site, down_s: float
) -> None:
    """SIGKILL, `down_s` with nothing listening (connects refused), then a new redis-server on
    the same port (empty: no AOF here) with the same password."""
    async with _session() as session:
        await _works(site, session)
        site.server.kill()
        await _during(down_s, lambda: _fails_fast(site, session))
        site.server.start()
        _protect(site.server, site.password)
        await _recovers(site, session)
    assert site.gateway.wire.events["lost"] + site.gateway.wire.events["connect_failures"] > 0


async def test_health_is_not_ready_while_the_real_time_connection_cannot_reach_redis(site: Site) -> None:
    """Redis at `maxclients` (another service leaking connections): the redis-py pool still has
    its warm connections and answers PING, but the real-time connection, dropped, cannot come
    back, so every webhook gets 503. /health must say so (it once asked the pool alone), and
    be ready again as soon as Redis takes connections again."""
    admin = site.admin()
    try:
        async with _session() as session:
            await _works(site, session)
            # Find the real-time connection among Redis' clients by a name given over it.
            assert await site.gateway.wire.execute("CLIENT", "SETNAME", "gw-realtime") == b"OK"
            clients = admin.client_list()
            realtime = [c for c in clients if c.get("name") == "gw-realtime"]
            assert len(realtime) == 1, clients
            admin.config_set("maxclients", int(admin.info("clients")["connected_clients"]) - 1)
            admin.client_kill_filter(_id=realtime[0]["id"])
            await _during(1.0, lambda: _fails_fast(site, session, pool_down=False))
            admin.config_set("maxclients", 10000)
            await _recovers(site, session)
    finally:
        admin.config_set("maxclients", 10000)
        admin.close()
