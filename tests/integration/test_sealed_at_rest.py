"""Citizens' texts and numbers are sealed wherever Redis keeps them: queued jobs of every kind,
dead letters (`<queue>.XQ`, kept for days), threads. Checked on a real Redis by reading back
every key the gateway and the worker left, after the real enqueue paths (staff API, intake,
worker) and after jobs were dead-lettered; and jobs queued before sealing (old payloads) are
still delivered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis
from aiohttp import ClientSession

from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.app.gateway import Gateway, Overrides
from gateway.app.httpapps import make_app
from gateway.app.worker import build_worker
from gateway.domain.models import AlimtalkRequest, Button, SmsRequest
from gateway.inbox.intake import Intake
from gateway.infra.config import load_config
from gateway.infra.crypto import Sealer
from gateway.infra.http import HttpServer
from gateway.infra.wire import Wire
from gateway.messaging.jobs import Enqueuer, MsgpackEncoder, dead_letter_counts, decode_message, encode_message, redrive
from gateway.messaging.workers import start_worker, wait_idle
from gateway.outbox.guard import QueuedMessage
from gateway.outbox.store import number_hash
from tests.conftest import RULES
from tests.integration.test_intake import PUBLIC_URL, Collect, Site, seoul, sms
from tests.support.staff import issue_tokens

CITIZEN_LOCAL = "010-4827-3916"
CITIZEN = "+821048273916"
# The citizen's number as it could be written anywhere: E.164, national, with separators, bare.
NUMBER_FORMS = (
    "+821048273916",
    "821048273916",
    "01048273916",
    "010-4827-3916",
    "010 4827 3916",
    "010.4827.3916",
    "1048273916",
    "48273916",
    "4827-3916",
)
CITIZEN_TEXT = "우리집 앞 가로등이 고장났어요 (햇살로 12)"
ANSWER = "확인했습니다. 내일 오전 햇살로 가로등을 교체하겠습니다."
AUTO_REPLY = "[한빛시청] 민원처리팀에 접수되었습니다."
KEYS = {
    "GATEWAY_NUMBER_KEY": "test-number-key-0123456789",
    "GATEWAY_DATA_KEY": Sealer.new_key_spec(),
    "GATEWAY_INBOUND_SECRET": "inbound-secret",
    "GATEWAY_AMI_SECRET": "x",
    "GATEWAY_WEBHOOK_SECRET": "w",
}
assert PUBLIC_URL  # (the signed webhook URL Site.post signs for)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str, sqlite_records_url: str) -> Iterator[dict[str, str]]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("GATEWAY_RECORDS_URL", sqlite_records_url)  # the staff accounts and access records
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    # The complaint queue's webhook secret is left unset: its notification job is dead-lettered
    # (NotConfigured), which is one of the dead letters this file reads back.
    monkeypatch.delenv("COMPLAINT_WEBHOOK_SECRET", raising=False)
    yield dict(os.environ)


# ------------------------------------------------------------------ reading all of Redis back


def _strings(value: Any) -> Iterator[bytes]:
    """Every str/bytes inside a decoded msgpack value (keys included)."""
    if isinstance(value, bytes):
        yield value
    elif isinstance(value, str):
        yield value.encode("utf-8", "surrogatepass")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _expand(blob: bytes) -> list[bytes]:
    """A stored value, and what it holds when it is msgpack (a dramatiq job) or JSON."""
    out = [blob]
    with contextlib.suppress(Exception):  # not msgpack: the raw bytes are all there is to search
        out.extend(_strings(msgpack.unpackb(blob, raw=False, strict_map_key=False)))
    with contextlib.suppress(Exception):  # not JSON
        out.append(json.dumps(json.loads(blob), ensure_ascii=False).encode())
    return out


def redis_contents(url: str) -> dict[bytes, list[bytes]]:
    """Every key in Redis with everything readable in it: type-aware reads (hash fields, list and
    set members, sorted-set members, stream entries), DUMP's serialized form, msgpack decoded."""
    client: Any = redis.Redis.from_url(url)  # sync replies are typed as unions of everything
    found: dict[bytes, list[bytes]] = {}
    try:
        for key in client.scan_iter(count=500):
            kind = client.type(key)
            parts: list[bytes] = [key]
            if kind == b"string":
                parts.append(client.get(key) or b"")
            elif kind == b"hash":
                for field, value in client.hgetall(key).items():
                    parts += [field, value]
            elif kind == b"list":
                parts += client.lrange(key, 0, -1)
            elif kind == b"set":
                parts += list(client.smembers(key))
            elif kind == b"zset":
                parts += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == b"stream":
                for entry_id, fields in client.xrange(key):
                    parts.append(entry_id)
                    for field, value in fields.items():
                        parts += [field, value]
            else:
                raise AssertionError(f"unexpected Redis type {kind!r} of {key!r}")
            dumped = client.dump(key)
            if dumped:
                parts.append(dumped)
            found[key] = [piece for part in parts for piece in _expand(part)]
    finally:
        client.close()
    return found


def _forms(text: str) -> list[bytes]:
    """A text as it could sit in Redis: UTF-8, JSON-escaped, and its first 20 characters (an
    LMS title is the text's first line, cut at 20)."""
    out = [text.encode(), json.dumps(text)[1:-1].encode()]
    out.append(text[:20].encode())
    return out


def assert_nothing_in_clear(url: str, texts: tuple[str, ...], numbers: tuple[str, ...] = NUMBER_FORMS) -> int:
    """No text (any form) and no form of the citizen's number anywhere in Redis; returns how
    many keys were read (so a test can tell the scan saw something)."""
    contents = redis_contents(url)
    needles = [(n, n.encode()) for n in numbers] + [(t, f) for t in texts for f in _forms(t)]
    leaks = sorted(
        {
            (key.decode(errors="replace"), what)
            for key, pieces in contents.items()
            for what, needle in needles
            for piece in pieces
            if needle in piece
        }
    )
    assert leaks == [], f"in clear in Redis: {leaks}"
    return len(contents)


# ------------------------------------------------------------------ the staff answer, end to end


async def test_a_staff_answer_is_sealed_queued_and_dead_lettered_and_still_delivered(
    env: dict[str, str], redis_url: str
) -> None:
    """A citizen texts, staff answer through the API before the worker runs: the answer's job,
    the notification job (with its automatic reply) and the thread hold nothing in clear. A
    worker with the wrong data key dead-letters both jobs: still nothing in clear, tracebacks
    included. The right worker, after `redrive`, delivers the answer's exact text."""
    config = load_config()
    outbox_sms = SandboxSms("sandbox-sms")
    over = Overrides(
        redis_url=redis_url,
        rules_dir=RULES,
        queue_namespace="t-sealed",
        alimtalk={"sandbox-alimtalk": SandboxAlimtalk("sandbox-alimtalk")},
        sms={"sandbox-sms": outbox_sms},
    )
    gateway = Gateway(config, Collect(), environ=env, overrides=over)
    http = HttpServer(make_app(gateway.health, gateway.reports, gateway.http_routes), "127.0.0.1", 0)
    host, port = await http.start()
    texts = (CITIZEN_TEXT, ANSWER, AUTO_REPLY)
    worker = None
    try:
        tokens = await issue_tokens(env["GATEWAY_RECORDS_URL"], env["GATEWAY_NUMBER_KEY"])
        site = Site(
            gateway, http, f"http://{host}:{port}", outbox_sms, worker=None, runtime=None, broker=None, tokens=tokens
        )
        async with ClientSession() as session:
            status, body = await site.post(
                session, sms("z-1", CITIZEN_TEXT, seoul("2026-11-24T10:00:00"), sender=CITIZEN_LOCAL)
            )
            assert status == 200 and body["queue"] == "complaint"
            tid = body["thread"]
            status, result = await site.api(session, "POST", f"/api/threads/{tid}/reply", {"text": ANSWER})
            assert status == 202 and result["result"] == "queued"
        # 1. queued: the notification job (with its reply) and the answer's SMS job wait in Redis
        ns = "t-sealed"
        client: Any = redis.Redis.from_url(redis_url)
        assert client.llen(f"{ns}:sms") == 1 and client.llen(f"{ns}:inbound") == 1
        assert assert_nothing_in_clear(redis_url, texts) > 5

        # 2. dead-lettered: a worker that cannot open them (a data key missing on this host)
        wrong = {**env, "GATEWAY_DATA_KEY": Sealer.new_key_spec("other")}
        broker, runtime = build_worker(config, environ=wrong, redis_url=redis_url, overrides=over)
        worker = start_worker(broker, threads=2, idle_ms=50)
        assert await wait_idle(broker, runtime, timeout_s=15)
        await asyncio.to_thread(worker.stop)
        worker = None
        assert dead_letter_counts(broker) == {"call_notice": 0, "inbound": 1, "postcall": 0, "sms": 1}
        assert outbox_sms.requests == []
        assert assert_nothing_in_clear(redis_url, texts) > 5

        # 3. re-driven to a worker with the right key: the exact answer reaches the citizen
        broker, runtime = build_worker(config, environ=env, redis_url=redis_url, overrides=over)
        worker = start_worker(broker, threads=2, idle_ms=50)
        assert redrive(broker) == 2
        assert await wait_idle(broker, runtime, timeout_s=15)
        await asyncio.to_thread(worker.stop)
        worker = None
        to_citizen = [r for r in outbox_sms.requests if r.to == CITIZEN]
        assert [(r.sender, r.text, r.title) for r in to_citizen] == [("+82319002000", ANSWER, ANSWER[:20])]
        # The notification is dead-lettered again (its webhook secret is not set): sealed there too.
        assert dead_letter_counts(broker)["inbound"] == 1
        assert assert_nothing_in_clear(redis_url, texts) > 5
        client.close()
    finally:
        await http.stop()
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        await gateway.stop()


async def test_intake_reply_and_automatic_replies_are_sealed(env: dict[str, str], redis_url: str) -> None:
    """`Intake.reply` directly, and the worker's own jobs (the automatic reply it queues from a
    notification, the opt-out confirmation): nothing in clear while they wait."""
    config = load_config()
    outbox_sms = SandboxSms("sandbox-sms")
    over = Overrides(
        redis_url=redis_url,
        rules_dir=RULES,
        queue_namespace="t-sealed2",
        alimtalk={"sandbox-alimtalk": SandboxAlimtalk("sandbox-alimtalk")},
        sms={"sandbox-sms": outbox_sms},
    )
    gateway = Gateway(config, Collect(), environ=env, overrides=over)
    http = HttpServer(make_app(gateway.health, gateway.reports, gateway.http_routes), "127.0.0.1", 0)
    host, port = await http.start()
    confirm = "수신거부가 처리"
    try:
        tokens = await issue_tokens(env["GATEWAY_RECORDS_URL"], env["GATEWAY_NUMBER_KEY"])
        site = Site(
            gateway, http, f"http://{host}:{port}", outbox_sms, worker=None, runtime=None, broker=None, tokens=tokens
        )
        async with ClientSession() as session:
            _, body = await site.post(
                session, sms("y-1", CITIZEN_TEXT, seoul("2026-11-24T10:00:00"), sender=CITIZEN_LOCAL)
            )
        assert await gateway.intake.reply(body["thread"], ANSWER, "lee") == "queued"
        # The worker's side: it turns the notification's reply into an SMS job; run only that
        # step (no provider send yet), so the job waits in Redis to be read back.
        _, runtime = build_worker(config, environ=env, redis_url=redis_url, overrides=over)
        try:
            assert (
                await runtime.replies.send(
                    body["thread"], CITIZEN, "+82319002000", AUTO_REPLY, "auto_reply:y-1-extra", rule_text=True
                )
                == "queued"
            )
            assert (
                await runtime.replies.send(
                    body["thread"],
                    CITIZEN,
                    "+82319002000",
                    f"{confirm}되었습니다.",
                    "opt_out_confirm:y-1",
                    rule_text=True,
                )
                == "queued"
            )
            assert assert_nothing_in_clear(redis_url, (CITIZEN_TEXT, ANSWER, AUTO_REPLY, confirm)) > 5
        finally:
            await runtime.aclose()
            runtime.enqueuer.close()
    finally:
        await http.stop()
        await gateway.stop()


# ------------------------------------------------------------------ every payload kind


SEALER = Sealer.from_env(Sealer.new_key_spec("k1"), "GATEWAY_DATA_KEY")


def _messages() -> list[QueuedMessage]:
    """One queued message of each shape the gateway enqueues: Alimtalk with the SMS fallback
    (call notice, post-call: also as `sms`, the worker's fallback), Alimtalk alone, SMS alone
    (staff answer, automatic reply, opt-out confirmation, SMS fallback), LMS with a title."""
    sms_ = SmsRequest("k", CITIZEN, "+82319002000", ANSWER, ANSWER[:20], "lms")
    alim = AlimtalkRequest("k", CITIZEN, "T1", (("content", "여권 발급 안내"),), (Button("b", "https://x"),), sms_)
    return [
        QueuedMessage("k", "pbx", "1.1", "call_notice", CITIZEN, "nhn", alimtalk=alim, sms=sms_),
        QueuedMessage("k", "pbx", "1.1", "postcall", CITIZEN, "nhn", alimtalk=alim),
        QueuedMessage(
            "k",
            "pbx",
            "1.1",
            "postcall",
            CITIZEN,
            "nhn",
            alimtalk=AlimtalkRequest("k", CITIZEN, "T1", (("content", "안내"),)),
        ),
        QueuedMessage(
            "k",
            "sms",
            "t1",
            "reply:abc",
            CITIZEN,
            "nhn",
            sms=SmsRequest("k", CITIZEN, "+82319002000", CITIZEN_TEXT, "", "sms"),
        ),
    ]


@pytest.mark.parametrize("message", _messages(), ids=lambda m: f"{m.action}-{bool(m.alimtalk)}-{bool(m.sms)}")
def test_every_queued_message_shape_is_sealed_and_round_trips(message: QueuedMessage) -> None:
    payload = encode_message(message, SEALER)
    encoded = MsgpackEncoder().encode({"args": [payload]})
    needles = [n.encode() for n in NUMBER_FORMS] + [f for t in (ANSWER, CITIZEN_TEXT) for f in _forms(t)]
    for needle in needles:
        assert needle not in encoded, needle
    assert decode_message(MsgpackEncoder().decode(encoded)["args"][0], SEALER) == message


def test_a_payload_from_before_sealing_is_still_read() -> None:
    """Jobs queued by the previous release (texts in clear, "v": 1) stay deliverable."""
    message = _messages()[0]
    assert message.sms is not None and message.alimtalk is not None and message.alimtalk.fallback is not None
    fields = {
        "sender": message.sms.sender,
        "text": message.sms.text,
        "title": message.sms.title,
        "kind": message.sms.kind,
    }
    old = {
        "v": 1,
        "key": message.key,
        "pbx": message.pbx,
        "call": message.call_id,
        "action": message.action,
        "provider": message.provider,
        "to": SEALER.seal(CITIZEN, message.key.encode()),
        "sms": fields,
        "alimtalk": {
            "template": "T1",
            "vars": [["content", "여권 발급 안내"]],
            "buttons": [["b", "https://x"]],
            "fallback": fields,
        },
    }
    assert decode_message(old, SEALER) == message


async def test_jobs_queued_before_sealing_are_still_delivered(env: dict[str, str], redis_url: str) -> None:
    """At upgrade, the queues hold jobs the previous release wrote: an SMS job with its text in
    clear, a notification whose automatic reply is in clear. The new worker delivers both."""
    config = load_config()
    outbox_sms = SandboxSms("sandbox-sms")
    over = Overrides(
        redis_url=redis_url,
        rules_dir=RULES,
        queue_namespace="t-old",
        sms={"sandbox-sms": outbox_sms},
        alimtalk={"sandbox-alimtalk": SandboxAlimtalk("sandbox-alimtalk")},
    )
    sealer = config.sealer(env)
    hash_key = config.number_key(env)
    broker, runtime = build_worker(config, environ=env, redis_url=redis_url, overrides=over)
    enqueuer = Enqueuer(broker, sealer, wire=Wire.from_url(redis_url, timeout_s=2.0))
    tid = Intake.thread_id(number_hash(hash_key, CITIZEN), "+82319002000")
    key = f"sms:{tid}:reply:old1:{number_hash(hash_key, CITIZEN)}"
    old_sms = {
        "v": 1,
        "key": key,
        "pbx": "sms",
        "call": tid,
        "action": "reply:old1",
        "provider": "sandbox-sms",
        "to": sealer.seal(CITIZEN, key.encode()),
        "sms": {"sender": "+82319002000", "text": ANSWER, "title": ANSWER[:20], "kind": "lms"},
    }
    old_inbound = {
        "v": 1,
        "thread": tid,
        "queue": "duty",
        "rule": "r",
        "priority": "normal",
        "message_id": "old-2",
        "provider": "sandbox-sms",
        "at": seoul("2026-11-24T10:00:00"),
        "citizen": "010-****-3916",
        "text": sealer.seal(CITIZEN_TEXT, tid.encode()),
        "reply": {
            "text": AUTO_REPLY,
            "action": "auto_reply:old-2",
            "to": sealer.seal(CITIZEN, tid.encode()),
            "from": "+82319002000",
        },
    }
    worker = None
    try:
        assert await enqueuer.enqueue_payload("sms", old_sms, "old sms job")
        assert await enqueuer.enqueue_payload("inbound", old_inbound, "old notification")
        worker = start_worker(broker, threads=2, idle_ms=50)
        assert await wait_idle(broker, runtime, timeout_s=15)
    finally:
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        await enqueuer.aclose(2.0)
    to_citizen = sorted((r.text, r.title) for r in outbox_sms.requests if r.to == CITIZEN)
    assert to_citizen == sorted([(ANSWER, ANSWER[:20]), (AUTO_REPLY, AUTO_REPLY[:20])])
    assert dead_letter_counts(broker) == {"call_notice": 0, "inbound": 0, "postcall": 0, "sms": 0}
