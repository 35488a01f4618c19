"""HTTP load generator for the inbound SMS benchmark, run as its own process (one core for the
server, one for the client): ``python -m ops.bench.loadgen --url URL --steps 1,8,32 --seconds 5``.

For each concurrency step it keeps that many requests in flight for ``--seconds``, each over its
own keep-alive HTTP/1.1 connection (`_Http11`: a minimal asyncio protocol, so that the client
costs the shared cores as little as possible), each request a signed
``POST /webhooks/sms/{provider}`` exactly as a provider sends it (JSON body, UTF-8,
``X-Signature-Timestamp``, ``X-Signature`` = hex HMAC-SHA256(secret, ``timestamp.public_url.body``),
see gateway/inbox/webhooks.py). Every message has its own provider message id and its own citizen
number (many citizens text the city: no thread, no duplicate). The secret comes from the
environment variable named by ``--secret-env``.

Output: one JSON line per step on stdout (``{"event": "step", ...}``, after one
``{"event": "warmup", ...}`` with ``--warmup``): requests, responses by
status, answers by queue for 2xx ``accepted``, transport errors, requests/s and latency
percentiles in ms (nearest rank, from just before the request to the end of the response body).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from typing import Any, cast
from urllib.parse import urlsplit

from gateway.infra.crypto import sign

TEXTS = [
    "집 앞 가로등이 꺼졌어요",
    "층간 소음이 너무 심해요",
    "민원 문의드립니다",
    "쓰레기 무단투기 신고합니다",
    "12가3456 차량이 입구를 막고 있어요",
    "도로에 포트홀이 생겼어요 위험합니다",
    "담당자 연락 부탁드립니다",
    "재산세 고지서 관련 문의",
    "Hello, is the office open on Saturday?",
    "감사합니다",
]
CITY_NUMBERS = ["031-900-2000", "031-900-2100", "031-900-0119"]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class _Http11(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (as a provider's sender does).

    The client side is kept lean on purpose: on a 2-core machine the load generator shares the
    cores with the server it measures, so every microsecond it spends per request is one the
    server cannot use (aiohttp's client spent ~0.2 ms per request, more than the bare server).
    Responses are parsed by `Content-Length` only: both servers measured here answer that way;
    anything else is counted as an error, never guessed at.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
            length = next(int(line.partition(":")[2]) for line in lines[1:] if line[:15].lower() == "content-length:")
        except (IndexError, ValueError, StopIteration):
            self.waiter.set_exception(ValueError(f"unparsable response head {head[:80]!r}"))
            return
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        self.waiter.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


async def step(
    url: str, *, concurrency: int, seconds: float, secret: str, public_url: str, run: str, number_base: int
) -> dict[str, Any]:
    target = urlsplit(url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    head = f"POST {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\nContent-Type: application/json; charset=utf-8\r\n"
    loop = asyncio.get_running_loop()
    statuses: Counter[int] = Counter()
    queues: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    rng = random.Random(number_base)
    sent = 0
    deadline = 0.0

    async def connect() -> _Http11:
        _, conn = await loop.create_connection(_Http11, host, port)
        return conn

    async def worker(w: int) -> None:
        nonlocal sent
        seq = 0
        conn = await connect()
        while time.perf_counter() < deadline:
            n = number_base + w * 100_000 + seq  # a citizen of its own (steps 10**7 apart)
            seq += 1
            fields = {
                "message_id": f"{run}-{w}-{seq}",
                "from": f"010{n % 100_000_000:08d}",
                "to": CITY_NUMBERS[n % len(CITY_NUMBERS)],
                "text": TEXTS[rng.randrange(len(TEXTS))],
                "received_at": f"{time.time():.3f}",
            }
            body = json.dumps(fields, ensure_ascii=False).encode("utf-8")
            ts = str(int(time.time()))
            raw = (
                f"{head}X-Signature-Timestamp: {ts}\r\nX-Signature: {sign(secret, ts, public_url, body)}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            began = time.perf_counter()
            sent += 1
            try:
                if conn.closed:
                    conn = await connect()
                status, payload = await asyncio.wait_for(conn.request(raw), 30)
                latencies.append((time.perf_counter() - began) * 1000)
                statuses[status] += 1
                if 200 <= status < 300:
                    answer = json.loads(payload)
                    answers[str(answer.get("status"))] += 1
                    if answer.get("status") == "accepted":
                        queues[str(answer.get("queue"))] += 1
            except (OSError, TimeoutError, ValueError) as exc:
                errors[type(exc).__name__] += 1
                if conn.transport is not None:
                    conn.transport.close()
                conn.closed = True
        if conn.transport is not None:
            conn.transport.close()

    deadline = time.perf_counter() + seconds
    began = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - began
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "event": "step",
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "requests": sent,
        "responses": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "ok_per_s": round(ok / elapsed, 1),
        "requests_per_s": round(sum(statuses.values()) / elapsed, 1),
        "answers": dict(answers),
        "accepted_by_queue": dict(queues),
        "errors": dict(errors),
        "p50_ms": _r(percentile(latencies, 50)),
        "p95_ms": _r(percentile(latencies, 95)),
        "p99_ms": _r(percentile(latencies, 99)),
        "max_ms": _r(max(latencies) if latencies else None),
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def main_async(args: argparse.Namespace) -> int:
    secret = os.environ.get(args.secret_env, "")
    if args.warmup > 0:  # first requests pay imports, caches and connection set-up: not measured
        record = await step(
            args.url,
            concurrency=4,
            seconds=args.warmup,
            secret=secret,
            public_url=args.public_url,
            run=f"{args.run}-w",
            number_base=args.number_base + 9 * 10**7,
        )
        sys.stdout.write(json.dumps({**record, "event": "warmup"}) + "\n")
        sys.stdout.flush()
    for i, concurrency in enumerate(int(c) for c in args.steps.split(",") if c.strip()):
        record = await step(
            args.url,
            concurrency=concurrency,
            seconds=args.seconds,
            secret=secret,
            public_url=args.public_url,
            run=f"{args.run}-{i}",
            number_base=args.number_base + i * 10**7,
        )
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
        await asyncio.sleep(args.pause)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.bench.loadgen", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--public-url", required=True, help="the URL the signature covers (the gateway's configuration)")
    p.add_argument("--secret-env", default="BENCH_INBOUND_SECRET")
    p.add_argument("--steps", default="1,8,32,64", help="concurrency steps")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each step")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds of unmeasured requests first (4 in flight)")
    p.add_argument("--pause", type=float, default=0.3, help="pause between steps (the server settles)")
    p.add_argument("--run", default="bench", help="message id prefix (unique per run)")
    p.add_argument("--number-base", type=int, default=0)
    args = p.parse_args(argv)
    import uvloop

    return uvloop.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
