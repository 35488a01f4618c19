"""A staff console on a real listener for the page tests (inbox, thread, events, counter).

Real parts only: the console app (`make_console_app`) on 127.0.0.1:0, a real `Intake` on the test
Redis with the project's routing rules and an enqueuer (answers are queued on the broker; no
worker needed), the real `Desk` and `EventHub`, accounts, sessions and the hash-chained access
records of `gateway.staff` on a SQLite records file. People are signed in by creating their
session with the real `RedisSessions` and sending its cookie, as a browser would.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from aiohttp import ClientSession, ClientTimeout, web

from gateway.console.app import SESSION_COOKIE, ConsoleDeps, make_console_app
from gateway.domain.audit import AccessRecord, audit_key
from gateway.domain.numbers import NumberPlan
from gateway.domain.routing import InboundSms
from gateway.domain.staff import Account, LoginPolicy
from gateway.inbox.desk import Desk, EventHub
from gateway.inbox.intake import Intake
from gateway.infra.config import ConsoleConfig
from gateway.infra.crypto import Sealer
from gateway.infra.wire import Wire
from gateway.messaging.jobs import Enqueuer, make_broker
from gateway.outbox.guard import Outbox
from gateway.outbox.store import RedisOutboxStore, connect
from gateway.records.store import RecordsStore
from gateway.rules.console import load_console
from gateway.rules.messaging import load_messaging
from gateway.rules.routing import load_routing_rules
from gateway.staff.accounts import SqlStaffDirectory
from gateway.staff.audit import SqlAccessLog
from gateway.staff.sessions import RedisSessions
from tests.conftest import RULES

SEOUL = ZoneInfo("Asia/Seoul")
NUMBER_KEY = b"console-pages-number-key-0123"
CIVIL = "+82319002000"  # routing.yaml `civil`: weekday office hours -> complaint
DUTY = "+82319000119"  # routing.yaml `duty`: always the duty office
# A Tuesday morning in Seoul: civil-number texts route to "complaint".
TUESDAY_10 = datetime(2026, 11, 24, 10, 0, tzinfo=SEOUL).timestamp()
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


class Collect:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def decision(self, record: Any) -> None:
        self.records.append(dict(record))


@dataclass
class Person:
    account: Account
    session_id: str
    csrf: str


@dataclass
class Answer:
    status: int
    text: str
    headers: dict[str, str]


class Site:
    """The console and its parts (see the module docstring)."""

    def __init__(self, redis_url: str, records_url: str, extra: dict[str, Any] | None = None) -> None:
        self.extra = dict(extra or {})  # more of the console's extras (e.g. events_heartbeat_s)
        self.redis_url = redis_url
        self.records_url = records_url
        self.client = connect(redis_url, timeout_s=2.0)
        self.wire = Wire.from_url(redis_url, timeout_s=2.0)
        self.sealer = Sealer.from_env(Sealer.new_key_spec(), "KEY")
        routing = load_routing_rules(RULES)
        messaging = load_messaging(RULES)
        self.routing = routing
        self.outbox = Outbox(RedisOutboxStore(self.client, self.wire), {}, hash_key=NUMBER_KEY)
        self.broker = make_broker(redis_url, namespace="t-console")
        self.intake = Intake(
            self.client,
            routing=lambda: routing,
            messaging=lambda: messaging,
            sealer=self.sealer,
            hash_key=NUMBER_KEY,
            outbox=self.outbox,
            enqueuer=Enqueuer(self.broker, self.sealer, wire=self.wire),
            sms_provider="sandbox-sms",
            sink=Collect(),
            wire=self.wire,
        )
        self.desk = Desk(self.intake, waiting_s=30 * 60.0)
        self.hub = EventHub(redis_url)
        self.store = RecordsStore(records_url)
        self.access = SqlAccessLog(self.store, audit_key(NUMBER_KEY))
        self.directory = SqlStaffDirectory(self.store, self.access, LoginPolicy())
        self.sessions_client = aioredis.Redis.from_url(redis_url)
        self.sessions = RedisSessions(self.sessions_client, idle_s=1800, max_s=12 * 3600)
        self.console_rules = load_console(RULES, routing) if (RULES / "console.yaml").exists() else None
        self.runner: web.AppRunner | None = None
        self.base = ""
        self.http = ClientSession(timeout=ClientTimeout(total=20))
        self.counter = 0

    def deps(self) -> ConsoleDeps:
        queues = {q: info.name for q, info in self.routing.queues.items()} if self.routing else {}

        async def health() -> dict[str, Any]:
            return {"ok": True}

        extras: dict[str, Any] = {
            "desk": self.desk,
            "events": self.hub,
            "queue_names": lambda: queues,
            **self.extra,
        }
        if self.console_rules is not None:
            rules = self.console_rules
            extras["console_rules"] = lambda: rules
        return ConsoleDeps(
            config=ConsoleConfig(secure_cookie=False),
            intake=self.intake,
            directory=self.directory,
            access=self.access,
            sessions=self.sessions,
            plan=NumberPlan(),
            health=health,
            extras=extras,
        )

    async def start(self) -> Site:
        await self.store.ready()
        await self.hub.start()
        assert await self.hub.wait_connected(5.0)
        self.runner = web.AppRunner(make_console_app(self.deps()))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        await self.http.close()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.hub.stop()
        await self.store.close()
        await self.sessions_client.aclose()
        await self.client.aclose()
        await self.wire.aclose()

    # ------------------------------------------------------------------ people

    async def person(self, username: str, queues: str, *, role: str = "staff", name: str = "") -> Person:
        """An account (made through the real directory) with a signed-in session."""
        account, _ = await self.directory.add(
            "test",
            username,
            name or username.title(),
            role,
            queues=queues,
            password="Hanbit#Console82",  # a chosen password: no forced change at the first page
            must_change_password=False,
        )
        session = await self.sessions.create(account.id, ip="127.0.0.1")
        return Person(account, session.id, session.csrf)

    def _headers(self, who: Person | None, htmx: bool) -> dict[str, str]:
        headers = {}
        if who is not None:
            headers["Cookie"] = f"{SESSION_COOKIE}={who.session_id}"
        if htmx:
            headers["HX-Request"] = "true"
        return headers

    async def get(self, who: Person | None, path: str, *, htmx: bool = False) -> Answer:
        async with self.http.get(self.base + path, headers=self._headers(who, htmx), allow_redirects=False) as r:
            return Answer(r.status, await r.text(), dict(r.headers))

    async def post(self, who: Person, path: str, data: dict[str, str] | None = None, *, htmx: bool = False) -> Answer:
        """A form post with the CSRF field, as the page's form sends it (htmx adds its header)."""
        form = {"csrf": who.csrf, **(data or {})}
        headers = self._headers(who, htmx)
        async with self.http.post(self.base + path, data=form, headers=headers, allow_redirects=False) as r:
            return Answer(r.status, await r.text(), dict(r.headers))

    # ------------------------------------------------------------------ citizens

    async def text(
        self, body: str, *, sender: str = "+821012345678", to: str = CIVIL, at: float = TUESDAY_10
    ) -> tuple[str, str]:
        """A citizen's text through the real intake: (thread id, queue)."""
        self.counter += 1
        result = await self.intake.accept(InboundSms(f"m-{self.counter}", "sandbox-sms", to, sender, body, at))
        return result.thread, result.queue

    async def opt_out(self, sender: str) -> None:
        await self.intake.optouts.set(sender, True, channel="sms", via="test")

    # ------------------------------------------------------------------ records

    async def records(self, action: str | None = None, subject: str | None = None) -> Sequence[AccessRecord]:
        return await self.access.list(action=action, subject=subject, limit=1000)


async def running_site(redis_url: str, records_url: str, **extra: Any) -> AsyncIterator[Site]:
    site = await Site(redis_url, records_url, extra).start()
    try:
        yield site
    finally:
        await site.stop()
