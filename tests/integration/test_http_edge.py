"""The HTTP edge over real sockets, as a network delivers bytes: bodies in several TCP reads,
chunked bodies, clients that never finish (slowloris), idle keep-alive connections, too many
connections, and /health and /metrics on a separate internal listener.

The client is a raw `asyncio.open_connection` socket (not aiohttp's client), so the test decides
exactly which bytes go out in which write and when.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web

from adapters.nhn_sms import parse_unsubscribe
from gateway.app.gateway import Gateway, Overrides
from gateway.app.httpapps import gateway_listeners, make_app
from gateway.app.workerhttp import WorkerHttp
from gateway.domain.numbers import NumberPlan
from gateway.errors import ConfigError
from gateway.inbox import staffapi, webhooks
from gateway.inbox.webhooks import MAX_SMS_BODY
from gateway.infra.config import DEFAULT_CONFIG, HttpLimits, load_config
from gateway.infra.crypto import Sealer, sign
from gateway.infra.http import HttpServer, read_body
from tests.conftest import RULES
from tests.support.staff import issue_tokens

HOST = "127.0.0.1"
INBOUND_SECRET = "inbound-secret"
NHN_SIG = "nhn-webhook-signature"
PUBLIC_URL = "http://127.0.0.1:8080/webhooks/sms/sandbox-sms"
ENV = {
    "GATEWAY_NUMBER_KEY": "test-number-key-0123456789",
    "GATEWAY_DATA_KEY": Sealer.new_key_spec(),
    "GATEWAY_INBOUND_SECRET": INBOUND_SECRET,
    "GATEWAY_AMI_SECRET": "x",
    "GATEWAY_WEBHOOK_SECRET": "w",
}
# Korean text spans multi-byte characters, so some splits land inside a character.
LMS = ("안녕하세요. 우리 동네 가로등이 사흘째 꺼져 있어 밤길이 위험합니다. 확인 부탁드립니다. " * 20)[:1900]


# -- a raw HTTP/1.1 client ------------------------------------------------------------------------


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return Response(status, headers, body)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    # Every write goes out as its own segment(s): no coalescing by Nagle's algorithm.
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def send_pieces(writer: asyncio.StreamWriter, pieces: list[bytes], pause: float) -> None:
    for i, piece in enumerate(pieces):
        if i:
            await asyncio.sleep(pause)
        writer.write(piece)
        await writer.drain()


async def exchange(port: int, pieces: list[bytes], pause: float = 0.1) -> Response:
    """One request written in `pieces` with `pause` seconds between them; its response."""
    reader, writer = await connect(port)
    try:
        await send_pieces(writer, pieces, pause)
        return await asyncio.wait_for(read_response(reader), 30)
    finally:
        writer.close()


def request_head(method: str, path: str, headers: dict[str, str], *, length: int | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(body: bytes, size: int) -> list[bytes]:
    """`body` in chunked transfer-encoding, one list item per chunk (then the last chunk)."""
    return [
        f"{len(body[i : i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n" for i in range(0, len(body), size)
    ] + [b"0\r\n\r\n"]


def split(data: bytes, *cuts: int) -> list[bytes]:
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# How a request's bytes may arrive: each strategy returns the pieces for (head, body).
Splitter = Callable[[bytes, bytes], list[bytes]]
SPLITS: dict[str, Splitter] = {
    "headers, then body": lambda h, b: [h, b],
    "headers with the start of the body, then the rest": lambda h, b: [h + b[:100], b[100:]],
    "inside a header line and three body pieces": lambda h, b: (
        split(h, len(h) // 2) + split(b, 1, len(b) // 3, 2 * len(b) // 3)
    ),
    "every 512 bytes": lambda h, b: split(h + b, *range(512, len(h + b), 512)),
    "last bytes one at a time": lambda h, b: [h + b[:-4], *(b[i : i + 1] for i in range(len(b) - 4, len(b)))],
}


def pieces_for(splitter: Splitter, head: bytes, body: bytes, *, transfer: str) -> list[bytes]:
    if transfer == "chunked":
        # Each chunk in its own write, the chunk-size line sometimes apart from its data.
        parts = chunked(body, 400)
        return [head, *[p for part in parts for p in split(part, 3)]]
    return splitter(head, body)


# -- a gateway with every body-taking endpoint -----------------------------------------------------


class Edge:
    def __init__(self, gateway: Gateway, http: HttpServer, token: str) -> None:
        self.gateway, self.http = gateway, http
        self.token = token  # a person's staff-API token

    @property
    def port(self) -> int:
        return self.http.port


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str, sqlite_records_url: str) -> Iterator[dict[str, str]]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    yield {**ENV, "REDIS_URL": redis_url, "GATEWAY_RECORDS_URL": sqlite_records_url}


@pytest.fixture
async def edge(env: dict[str, str], redis_url: str) -> AsyncIterator[Edge]:
    gateway = Gateway(
        load_config(),
        _Sink(),
        environ=env,
        overrides=Overrides(redis_url=redis_url, rules_dir=RULES, queue_namespace="t-edge"),
    )

    def routes(app: web.Application) -> None:
        # The gateway's own routes, plus an NHN 080 opt-out webhook (not in the default config).
        webhooks.add_routes(
            app,
            gateway.intake,
            gateway.inbound,
            plan=NumberPlan(),
            unsubscribe={"nhn": lambda h, b: parse_unsubscribe(h, b, NHN_SIG)},
        )
        staffapi.add_routes(
            app,
            gateway.intake,
            directory=gateway.staff_directory,
            access=gateway.access_log,
            plan=NumberPlan(),
            throttle=gateway.throttle,
        )

    http = HttpServer(
        make_app(gateway.health, gateway.reports, routes),
        HOST,
        0,
        limits=HttpLimits(header_timeout_s=5, body_timeout_s=5, keepalive_timeout_s=5),
    )
    await http.start()
    tokens = await issue_tokens(env["GATEWAY_RECORDS_URL"], env["GATEWAY_NUMBER_KEY"], {"kim": "*"})
    yield Edge(gateway, http, tokens["kim"])
    await http.stop()
    await gateway.stop(drain_timeout=2)


class _Sink:
    def decision(self, record: Any) -> None:
        pass


def signed_sms(
    message_id: str, *, form: bool = False, text: str = LMS, sender: str = "010-1234-5678", secret: str = INBOUND_SECRET
) -> tuple[dict[str, str], bytes]:
    fields = {
        "message_id": message_id,
        "from": sender,
        "to": "031-900-2000",
        "text": text,
        "received_at": str(time.time()),
    }
    if form:
        body = urlencode(fields, encoding="euc-kr").encode("ascii")
        content_type = "application/x-www-form-urlencoded; charset=euc-kr"
    else:
        body = json.dumps(fields, ensure_ascii=False).encode()
        content_type = "application/json; charset=utf-8"
    ts = str(int(time.time()))
    return {
        "Content-Type": content_type,
        "X-Signature-Timestamp": ts,
        "X-Signature": sign(secret, ts, PUBLIC_URL, body),
    }, body


def unsubscribe_body(numbers: list[str]) -> bytes:
    hooks = [
        {
            "hookId": f"hook-{i}",
            "recipientNo": "0" + n[3:],
            "unsubscribeNo": "0801234567",
            "enterpriseName": "한빛시청 민원안내 서비스 " * 20,
            "createdDateTime": "2024-05-01T10:00:00.000+09:00",
        }
        for i, n in enumerate(numbers)
    ]
    return json.dumps(
        {
            "hooksId": "hooks-1",
            "webhookConfigId": "cfg",
            "productName": "SMS",
            "appKey": "k",
            "event": "UNSUBSCRIBE",
            "hooks": hooks,
        },
        ensure_ascii=False,
    ).encode()


def report_body(count: int) -> bytes:
    return json.dumps(
        {
            "reports": [
                {"reference": f"ref-{i:04d}", "status": "delivered", "at": 1_700_000_000 + i, "detail": "수신 완료"}
                for i in range(count)
            ]
        },
        ensure_ascii=False,
    ).encode()


TRANSFERS = ["content-length", "chunked"]


# -- 1. bodies that arrive in several TCP reads ----------------------------------------------------


@pytest.mark.parametrize("transfer", TRANSFERS)
@pytest.mark.parametrize("how", list(SPLITS))
async def test_signed_sms_in_pieces_is_accepted(edge: Edge, how: str, transfer: str) -> None:
    for n, form in enumerate((False, True)):
        headers, body = signed_sms(f"pieces-{how}-{transfer}-{n}", form=form, sender=f"010-5555-{1000 + n}")
        head = request_head(
            "POST", "/webhooks/sms/sandbox-sms", headers, length=None if transfer == "chunked" else len(body)
        )
        resp = await exchange(edge.port, pieces_for(SPLITS[how], head, body, transfer=transfer), pause=0.05)
        assert resp.status == 200, resp.body
        assert resp.json()["status"] == "accepted"


@pytest.mark.parametrize("transfer", TRANSFERS)
@pytest.mark.parametrize("how", list(SPLITS))
async def test_080_opt_out_in_pieces_is_kept(edge: Edge, how: str, transfer: str) -> None:
    numbers = [f"+82105555{2000 + i}" for i in range(4)]
    body = unsubscribe_body(numbers)
    assert len(body) > 2000  # several segments' worth
    head = request_head(
        "POST",
        "/webhooks/unsubscribe/nhn",
        {"Content-Type": "application/json", "X-Toast-Webhook-Signature": NHN_SIG},
        length=None if transfer == "chunked" else len(body),
    )
    resp = await exchange(edge.port, pieces_for(SPLITS[how], head, body, transfer=transfer), pause=0.05)
    assert resp.status == 200, resp.body
    assert resp.json() == {"opted_out": len(numbers)}
    for number in numbers:
        assert await edge.gateway.intake.optouts.status(number)


@pytest.mark.parametrize("transfer", TRANSFERS)
@pytest.mark.parametrize("how", list(SPLITS))
async def test_delivery_report_in_pieces_is_read_whole(edge: Edge, how: str, transfer: str) -> None:
    body = report_body(40)
    head = request_head(
        "POST",
        "/webhooks/report/sandbox-alimtalk",
        {"Content-Type": "application/json", "X-Sandbox-Signature": "w"},
        length=None if transfer == "chunked" else len(body),
    )
    resp = await exchange(edge.port, pieces_for(SPLITS[how], head, body, transfer=transfer), pause=0.05)
    assert resp.status == 200, resp.body
    assert sum(resp.json().values()) == 40  # every report of the body was read (unknown references)


@pytest.mark.parametrize("transfer", TRANSFERS)
async def test_staff_api_json_in_pieces(edge: Edge, transfer: str) -> None:
    headers, body = signed_sms(f"api-{transfer}", text="민원 문의드립니다", sender="010-7777-0001")
    resp = await exchange(
        edge.port, [request_head("POST", "/webhooks/sms/sandbox-sms", headers, length=len(body)), body]
    )
    thread = resp.json()["thread"]
    auth = {"Authorization": f"Bearer {edge.token}", "Content-Type": "application/json; charset=utf-8"}
    # Long multi-byte fields (ignored by the routes) so that the splits land inside characters.
    for path, data, expect in (
        (f"/api/threads/{thread}/claim", {"note": "김민원" * 30}, {"claimed": True}),
        ("/api/optout", {"number": "010-7777-0002", "action": "add", "note": "박담당" * 30}, {"opted_out": True}),
    ):
        raw = json.dumps(data, ensure_ascii=False).encode()
        head = request_head("POST", path, auth, length=None if transfer == "chunked" else len(raw))
        resp = await exchange(
            edge.port,
            pieces_for(SPLITS["inside a header line and three body pieces"], head, raw, transfer=transfer),
            pause=0.05,
        )
        assert resp.status == 200, resp.body
        assert expect.items() <= resp.json().items()


async def test_signed_sms_after_100_continue_in_pieces(edge: Edge) -> None:
    """curl and many HTTP libraries send `Expect: 100-continue` and the body only after the 100."""
    headers, body = signed_sms("expect-100", sender="010-5555-3001")
    reader, writer = await connect(edge.port)
    try:
        writer.write(
            request_head("POST", "/webhooks/sms/sandbox-sms", {**headers, "Expect": "100-continue"}, length=len(body))
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100")
        await send_pieces(writer, split(body, 700, 1400), pause=0.1)
        resp = await asyncio.wait_for(read_response(reader), 30)
        assert resp.status == 200 and resp.json()["status"] == "accepted", resp.body
    finally:
        writer.close()


@pytest.mark.parametrize("transfer", TRANSFERS)
@pytest.mark.parametrize(
    "path", ["/webhooks/sms/sandbox-sms", "/webhooks/unsubscribe/nhn", "/webhooks/report/sandbox-alimtalk"]
)
async def test_webhook_body_that_stalls_is_408(edge: Edge, path: str, transfer: str) -> None:
    headers, body = signed_sms("stalled", sender="010-5555-4001")
    headers.update({"X-Toast-Webhook-Signature": NHN_SIG, "X-Sandbox-Signature": "w"})
    reader, writer = await connect(edge.port)
    try:
        head = request_head("POST", path, headers, length=None if transfer == "chunked" else len(body))
        writer.write(head + (chunked(body, len(body))[0] if transfer == "chunked" else body)[: len(body) // 2])
        resp = await asyncio.wait_for(read_response(reader), 30)  # the fixture's body bound is 5 s
        assert resp.status == 408, resp.body
        assert await closed_within(reader, 20)
    finally:
        writer.close()
    # Nothing of the half body was taken in, and the listener still serves.
    for queue in ("complaint", "duty"):
        assert await edge.gateway.intake.inbox(queue, count=50) == []
    assert await healthz(edge.port) == 200


@pytest.mark.parametrize("transfer", TRANSFERS)
@pytest.mark.parametrize(
    "path,headers",
    [
        (
            "/webhooks/sms/sandbox-sms",
            {"Content-Type": "application/json", "X-Signature-Timestamp": "1", "X-Signature": "0" * 64},
        ),
        ("/webhooks/unsubscribe/nhn", {"Content-Type": "application/json", "X-Toast-Webhook-Signature": NHN_SIG}),
        ("/webhooks/report/sandbox-alimtalk", {"Content-Type": "application/json", "X-Sandbox-Signature": "w"}),
    ],
)
async def test_over_limit_body_in_pieces_is_413(edge: Edge, path: str, headers: dict[str, str], transfer: str) -> None:
    limit = MAX_SMS_BODY if "/report/" not in path else 256 * 1024
    body = b'{"padding": "' + b"x" * (limit + 3000) + b'"}'
    head = request_head("POST", path, headers, length=None if transfer == "chunked" else len(body))
    pieces = (
        [head, *split(body, *range(8192, len(body), 8192))] if transfer != "chunked" else [head, *chunked(body, 8192)]
    )
    resp = await exchange(edge.port, pieces, pause=0.02)
    assert resp.status == 413, resp.body
    # ... and the listener still serves.
    assert (await exchange(edge.port, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"])).status == 200


async def test_read_body_limit_is_inclusive() -> None:
    """Exactly `limit` bytes are accepted, one more is refused, for both transfer kinds."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"length": len(await read_body(request, 1000))})

    app = web.Application()
    app.router.add_post("/echo", echo)
    http = HttpServer(app, HOST, 0)
    await http.start()
    try:
        for size, status in ((0, 200), (1000, 200), (1001, 413)):
            body = b"a" * size
            for transfer in TRANSFERS:
                head = request_head("POST", "/echo", {}, length=None if transfer == "chunked" else size)
                pieces = (
                    [head, *chunked(body, 300)]
                    if transfer == "chunked" and body
                    else [head, b"0\r\n\r\n"]
                    if transfer == "chunked"
                    else [head, body]
                )
                resp = await exchange(http.port, [p for p in pieces if p], pause=0.05)
                assert resp.status == status, (size, transfer, resp.body)
                if status == 200:
                    assert resp.json() == {"length": size}
    finally:
        await http.stop()


# -- 6. slow and idle clients, too many connections ------------------------------------------------


async def _echo_server(limits: HttpLimits) -> HttpServer:
    async def health() -> dict[str, Any]:
        return {"ready": True}

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"length": len(await read_body(request, 64 * 1024))})

    def extra(app: web.Application) -> None:
        app.router.add_post("/echo", echo)

    http = HttpServer(make_app(health, extra=extra), HOST, 0, limits=limits)
    await http.start()
    return http


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True once the server closed the connection (EOF or reset), False if still open after `seconds`.
    Whatever the server answered before closing is read and ignored."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def trickle(port: int, data: bytes, every: float, prefix: bytes = b"") -> tuple[int, int]:
    """Send `prefix`, then `data` one byte every `every` s until the server closes the connection.
    Returns (bytes of `data` sent, len(data)): fewer than all means the server cut us off."""
    reader, writer = await connect(port)
    sent = 0
    try:
        writer.write(prefix)
        closed = asyncio.ensure_future(closed_within(reader, 3600))
        for i in range(len(data)):
            if closed.done():
                break
            try:
                writer.write(data[i : i + 1])
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            await asyncio.wait([closed], timeout=every)
        closed.cancel()
        return sent, len(data)
    finally:
        writer.close()


async def healthz(port: int) -> int:
    return (await exchange(port, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"])).status


SLOW_HEADERS = {
    "request line": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n\r\n",
    "a POST's headers": b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    "an endless header": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 60 + b"\r\n\r\n",
}


@pytest.mark.parametrize("kind", list(SLOW_HEADERS))
@pytest.mark.parametrize("after_a_request", [False, True])
async def test_slowloris_headers_are_cut(kind: str, after_a_request: bool) -> None:
    http = await _echo_server(HttpLimits(header_timeout_s=1, body_timeout_s=30, keepalive_timeout_s=30))
    try:
        # On a kept-alive connection too: the second request's headers get the same bound.
        prefix = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" if after_a_request else b""
        sent, total = await trickle(http.port, SLOW_HEADERS[kind], every=0.5, prefix=prefix)
        assert sent < total, "a client sending one header byte every 0.5 s was never cut off"
        assert await healthz(http.port) == 200
    finally:
        await http.stop()


async def test_idle_keepalive_connection_is_closed() -> None:
    http = await _echo_server(HttpLimits(header_timeout_s=30, body_timeout_s=30, keepalive_timeout_s=1))
    try:
        # After a request ...
        reader, writer = await connect(http.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
        assert await closed_within(reader, 20)
        writer.close()
        # ... and a connection that never sends a byte.
        reader, writer = await connect(http.port)
        assert await closed_within(reader, 20)
        writer.close()
        assert await healthz(http.port) == 200
    finally:
        await http.stop()


async def test_keepalive_connection_is_reused_within_the_timeout() -> None:
    http = await _echo_server(HttpLimits(header_timeout_s=5, body_timeout_s=5, keepalive_timeout_s=5))
    try:
        reader, writer = await connect(http.port)
        for _ in range(3):
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            resp = await asyncio.wait_for(read_response(reader), 10)
            assert resp.json() == {"length": 2}
            await asyncio.sleep(0.2)
        writer.close()
    finally:
        await http.stop()


@pytest.mark.parametrize("transfer", TRANSFERS)
async def test_stalled_body_is_cut(transfer: str) -> None:
    http = await _echo_server(HttpLimits(header_timeout_s=30, body_timeout_s=1, keepalive_timeout_s=30))
    try:
        reader, writer = await connect(http.port)
        body = b"x" * 1000
        if transfer == "chunked":
            writer.write(request_head("POST", "/echo", {}, length=None) + chunked(body, 1000)[0][:500])
        else:
            writer.write(request_head("POST", "/echo", {}, length=len(body)) + body[:500])
        try:
            resp = await asyncio.wait_for(read_response(reader), 20)
            assert resp.status == 408, resp.body
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # closed without an answer: also cut
        assert await closed_within(reader, 20)
        writer.close()
        assert await healthz(http.port) == 200
    finally:
        await http.stop()


async def test_body_stalling_after_the_answer_closes_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """A handler that answers without reading the body (404, 401): the unread rest stalls; the
    connection is closed at the body bound, without an error logged for it."""
    http = await _echo_server(HttpLimits(header_timeout_s=30, body_timeout_s=1, keepalive_timeout_s=30))
    try:
        with caplog.at_level(logging.WARNING):
            reader, writer = await connect(http.port)
            writer.write(request_head("POST", "/no-such-route", {}, length=1000) + b"z" * 300)
            resp = await asyncio.wait_for(read_response(reader), 20)
            assert resp.status == 404
            assert await closed_within(reader, 30)
            writer.close()
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert await healthz(http.port) == 200
    finally:
        await http.stop()


async def test_slow_but_steady_body_within_the_bound_is_read() -> None:
    """The body bound is for the whole body, not each read: a body that keeps coming inside it is fine."""
    http = await _echo_server(HttpLimits(header_timeout_s=5, body_timeout_s=10, keepalive_timeout_s=5))
    try:
        body = b"y" * 3000
        head = request_head("POST", "/echo", {}, length=len(body))
        resp = await exchange(http.port, [head, *split(body, 1000, 2000)], pause=0.2)
        assert resp.json() == {"length": 3000}
    finally:
        await http.stop()


async def test_connections_over_the_limit_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    http = await _echo_server(
        HttpLimits(header_timeout_s=30, body_timeout_s=30, keepalive_timeout_s=30, max_connections=3)
    )
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(3):
            reader, writer = await connect(http.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
            held.append((reader, writer))
        with caplog.at_level(logging.WARNING, logger="gateway.infra.connlimit"):
            for _ in range(5):
                reader, writer = await connect(http.port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    resp = await asyncio.wait_for(read_response(reader), 10)
                    assert resp.status == 503
                except (asyncio.IncompleteReadError, ConnectionError):
                    pass
                assert await closed_within(reader, 10)
                writer.close()
        warnings = [r for r in caplog.records if r.name == "gateway.infra.connlimit" and r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # rate-limited, not one per connection
        # The connections already open still work.
        for reader, writer in held:
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            assert (await asyncio.wait_for(read_response(reader), 10)).json() == {"length": 2}
        # Once one closes, a new connection is served again.
        held.pop()[1].close()
        for _ in range(100):
            status = await _try_healthz(http.port)
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200
    finally:
        for _, writer in held:
            writer.close()
        await http.stop()


async def _try_healthz(port: int) -> int:
    try:
        return await healthz(port)
    except (asyncio.IncompleteReadError, ConnectionError):
        return 0


# -- the worker's stdlib listener ------------------------------------------------------------------


def _worker_http(limits: HttpLimits) -> WorkerHttp:
    # /healthz reads no state: no broker, runtime or worker needed to serve it.
    return WorkerHttp(None, None, None, HOST, 0, limits=limits)  # type: ignore[arg-type]


async def test_worker_listener_cuts_slowloris_and_idle() -> None:
    http = _worker_http(HttpLimits(header_timeout_s=1, body_timeout_s=1, keepalive_timeout_s=1))
    _, port = http.start()
    try:
        sent, total = await trickle(port, SLOW_HEADERS["request line"], every=0.5)
        assert sent < total
        reader, writer = await connect(port)
        assert await closed_within(reader, 20)  # never sends a byte
        writer.close()
        assert await healthz(port) == 200
    finally:
        await asyncio.to_thread(http.stop)


async def test_worker_listener_refuses_connections_over_the_limit() -> None:
    http = _worker_http(HttpLimits(header_timeout_s=30, body_timeout_s=30, keepalive_timeout_s=30, max_connections=2))
    _, port = http.start()
    held = []
    try:
        for _ in range(2):
            held.append(await connect(port))
            held[-1][1].write(b"GET /hea")  # unfinished: holds a handler thread
            await held[-1][1].drain()
        await asyncio.sleep(0.3)
        reader, writer = await connect(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            resp = await asyncio.wait_for(read_response(reader), 10)
            assert resp.status == 503
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        for reader, writer in held:
            writer.write(b"lthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
            writer.close()
        held.clear()
        for _ in range(100):
            status = await _try_healthz(port)
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200
    finally:
        for _, writer in held:
            writer.close()
        await asyncio.to_thread(http.stop)


# -- configuration -------------------------------------------------------------------------------


def _config_with(tmp_path: Path, http_lines: str) -> Path:
    """The default configuration with its `http:` block replaced by port 0 and `http_lines`."""
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    text, found = re.subn(r"(?m)^http:\n(?:[ #].*\n)*", "http:\n  host: 127.0.0.1\n  port: 0\n" + http_lines, text)
    assert found == 1
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_http_limits_defaults_and_overrides(tmp_path: Path) -> None:
    config = load_config()
    assert config.http_limits == HttpLimits(
        header_timeout_s=10, body_timeout_s=30, keepalive_timeout_s=15, max_connections=1024
    )
    assert config.http_internal_port is None
    config = load_config(
        _config_with(
            tmp_path,
            "  header_timeout_s: 2.5\n  body_timeout_s: 4\n"
            "  keepalive_timeout_s: 6\n  max_connections: 7\n"
            "  internal_host: 127.0.0.2\n  internal_port: 9100\n",
        )
    )
    assert config.http_limits == HttpLimits(2.5, 4, 6, 7)
    assert (config.http_internal_host, config.http_internal_port) == ("127.0.0.2", 9100)


@pytest.mark.parametrize(
    "line",
    [
        "  header_timeout_s: 0\n",
        "  body_timeout_s: -1\n",
        "  keepalive_timeout_s: x\n",
        "  max_connections: 0\n",
        "  max_connections: 1.5\n",
        "  internal_port: 70000\n",
        "  header_timeout: 10\n",
    ],
)
def test_bad_http_limits_are_config_errors(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError, match="http"):
        load_config(_config_with(tmp_path, line))


# -- 7. /health and /metrics on the internal listener ----------------------------------------------


async def _get(port: int, path: str) -> Response:
    return await exchange(port, [f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()])


@pytest.mark.parametrize("internal", [False, True])
async def test_health_and_metrics_listeners(
    env: dict[str, str], redis_url: str, tmp_path: Path, internal: bool
) -> None:
    config = load_config(_config_with(tmp_path, "  internal_port: 0\n" if internal else ""), environ=env)
    gateway = Gateway(
        config,
        _Sink(),
        environ=env,
        overrides=Overrides(redis_url=redis_url, rules_dir=RULES, queue_namespace="t-edge-int"),
    )
    public, private = gateway_listeners(config, gateway, shutdown_timeout=2)
    assert (private is not None) == internal
    await public.start()
    if private is not None:
        await private.start()
    try:
        assert (await _get(public.port, "/healthz")).status == 200
        headers, body = signed_sms("internal-mode", text="민원 문의드립니다")
        resp = await exchange(
            public.port, [request_head("POST", "/webhooks/sms/sandbox-sms", headers, length=len(body)), body]
        )
        assert resp.status == 200  # the webhooks stay on the public listener
        health, metrics = await _get(public.port, "/health"), await _get(public.port, "/metrics")
        if private is None:  # today's behaviour: everything on the one listener
            assert health.status in (200, 503) and "ready" in health.json()
            assert metrics.status == 200 and b"gateway_" in metrics.body
        else:
            assert (health.status, metrics.status) == (404, 404)
            assert b"pbx" not in health.body and b"5038" not in health.body
            assert (await _get(private.port, "/healthz")).status == 200
            health = await _get(private.port, "/health")
            assert health.status in (200, 503) and "ready" in health.json()
            metrics = await _get(private.port, "/metrics")
            assert metrics.status == 200 and b"gateway_" in metrics.body
            # The internal listener takes no citizens' traffic.
            resp = await exchange(
                private.port, [request_head("POST", "/webhooks/sms/sandbox-sms", headers, length=len(body)), body]
            )
            assert resp.status == 404
    finally:
        if private is not None:
            await private.stop()
        await public.stop()
        await gateway.stop(drain_timeout=2)


# Header values are bytes on the wire: aiohttp hands non-UTF-8 ones over as surrogate escapes,
# which a plain str.encode() refuses. Every secret a client presents is compared as the bytes it sent.
@pytest.mark.parametrize("value", [b"\xff\xfe", "가나".encode(), b"\xed\xa0\xbd", b"abc\x80"])
@pytest.mark.parametrize(
    ("method", "path", "header", "body"),
    [
        ("POST", "/webhooks/sms/sandbox-sms", "X-Signature", b'{"message_id": "m"}'),
        ("POST", "/webhooks/unsubscribe/nhn", "X-Toast-Webhook-Signature", b'{"event": "UNSUBSCRIBE"}'),
        ("POST", "/webhooks/report/sandbox-alimtalk", "X-Sandbox-Signature", b'{"reports": []}'),
        ("GET", "/api/inbox/duty", "Authorization", b""),
    ],
)
async def test_a_secret_header_that_is_not_utf8_is_refused_not_a_500(  # noqa: PLR0917 (pytest passes them)
    edge: Edge, caplog: pytest.LogCaptureFixture, method: str, path: str, header: str, body: bytes, value: bytes
) -> None:
    extra = f"X-Signature-Timestamp: {int(time.time())}\r\n".encode() if header == "X-Signature" else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + header.encode()
        + b": "
        + value
        + b"\r\n\r\n"
    )
    with caplog.at_level(logging.WARNING):
        resp = await exchange(edge.port, [head + body])
    assert resp.status == 401, (resp.status, resp.body)
    assert "error" in resp.json()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
