"""`gateway` command line (also `python -m gateway`).

Exit codes: 0 ok, 1 the check or run failed, 2 bad configuration, rules or arguments.

Each command imports what it runs inside its branch: for start-up cost (`gateway rules check`
loads neither aiohttp, Redis nor dramatiq), not to dodge an import circle.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.infra.config import GatewayConfig

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Civic telephony and messaging gateway")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway (AMI clients, lettering, health endpoints)")
    run.add_argument("--config", type=Path, help="gateway.yaml (default: the embedded demo configuration)")

    demo = sub.add_parser("demo", help="run everything on the embedded default with recorded PBX traffic")
    demo.add_argument("--config", type=Path)
    demo.add_argument("--rules", type=Path, help="rules directory (default: the project's rules/)")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--http-port", type=int, help="health endpoint port (default from config; 0 = any)")
    demo.add_argument("--speed", default="real", help="'real' or a multiplier such as 4")

    rp = sub.add_parser("replay", help="push recorded AMI through the real pipeline, print decisions")
    rp.add_argument("files", nargs="+", type=Path, metavar="FILE.ami")
    rp.add_argument("--rules", type=Path, help="rules directory (default: the project's rules/)")
    rp.add_argument("--config", type=Path)
    rp.add_argument("--json", action="store_true", help="one JSON object per line (the default output)")
    rp.add_argument(
        "--outcome",
        action="append",
        default=[],
        metavar="E164=RESULT",
        help="sandbox carrier answer for a number, e.g. +821012345678=unsupported_device",
    )
    rp.add_argument(
        "--messaging-outcome",
        action="append",
        default=[],
        metavar="E164=RESULT",
        help="sandbox Alimtalk/SMS answer for a number, e.g. +821012345678=not_kakao_user",
    )
    rp.add_argument(
        "--records",
        metavar="URL",
        help="write the replayed calls and sends into this records store (sqlite:///FILE or postgresql://...)",
    )

    wk = sub.add_parser("worker", help="run the queue workers (post-call content, Alimtalk, SMS)")
    wk.add_argument("--config", type=Path)
    wk.add_argument("--threads", type=int)
    wk.add_argument(
        "--http-port",
        type=int,
        help="/healthz, /health, /metrics on this port (overrides "
        "worker.http_port; one per instance, e.g. 910%%i in gateway-worker@.service)",
    )

    oo = sub.add_parser("optout", help="refuse, allow again or look up messages to a citizen")
    oo.add_argument("action", choices=["add", "remove", "status"])
    oo.add_argument("number")
    oo.add_argument("--config", type=Path)

    dl = sub.add_parser("deadletters", help="list or re-drive messages that exhausted their retries")
    dl.add_argument("action", choices=["list", "redrive"])
    dl.add_argument("--queue", choices=["call_notice", "postcall", "sms", "inbound"])
    dl.add_argument("--config", type=Path)

    rules = sub.add_parser("rules", help="check or generate the telecom team's rules")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    check = rsub.add_parser("check", help="validate rules/*.yaml; non-zero exit on any problem")
    check.add_argument("dir", nargs="?", type=Path, default=Path("rules"))
    test = rsub.add_parser("test", help="show where a citizen's SMS would be routed, and why")
    test.add_argument("--dir", type=Path, default=Path("rules"))
    test.add_argument("--to", required=True, help="the city number texted")
    test.add_argument("--from", dest="sender", required=True, help="the citizen's number")
    test.add_argument("--at", required=True, help="ISO time; without a zone: Asia/Seoul")
    test.add_argument("--thread", help="DEPT[@ISO]: the citizen replies to a message of this department")
    test.add_argument("text")
    gen = rsub.add_parser("generate-directory", help="print a realistic directory.yaml for N phones")
    gen.add_argument("--phones", type=int, default=4000)
    gen.add_argument("--seed", type=int, default=7)

    from gateway.app.recordscli import add_parsers

    add_parsers(sub)  # `gateway records ...` and `gateway report ...` (the SQL archive)
    from gateway.staff.cli import add_parsers as staff_parsers

    staff_parsers(sub)  # `gateway staff ...` and `gateway audit ...` (accounts, access records)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except GatewayError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from gateway.infra.config import load_config
    from gateway.infra.logs import setup_logging

    if args.command == "rules":
        if args.rules_command == "check":
            from gateway.rules.ruleset import cmd_rules_check

            return cmd_rules_check(args.dir, sys.stdout)
        if args.rules_command == "test":
            from gateway.rules.routing import cmd_rules_test

            return cmd_rules_test(
                args.dir, args.to, args.sender, args.at, args.text, sys.stdout, thread_department=args.thread
            )
        from gateway.sim.directory_gen import cmd_generate_directory

        return cmd_generate_directory(args.phones, sys.stdout, seed=args.seed)

    config = load_config(args.config)
    if args.command in ("records", "report"):
        from gateway.app.recordscli import dispatch

        setup_logging("WARNING", json_lines=False)
        return dispatch(args, config)
    if args.command in ("staff", "audit"):
        from gateway.staff.cli import dispatch as staff_dispatch

        setup_logging("WARNING", json_lines=False)
        return staff_dispatch(args, config)
    if args.command == "replay":
        from gateway.app.replay import replay
        from gateway.domain.models import LetteringResult, SendResult

        setup_logging("WARNING", json_lines=True)
        outcomes = {n: LetteringResult(r) for n, r in _pairs(args.outcome, LetteringResult)}
        messaging = {n: SendResult(r) for n, r in _pairs(args.messaging_outcome, SendResult)}
        return _run_async(
            replay(
                args.files,
                config,
                rules_dir=args.rules,
                out=sys.stdout,
                outcomes=outcomes,
                messaging_outcomes=messaging,
                records_url=args.records,
            )
        )
    if args.command == "worker":
        from gateway.app.worker import run_worker

        setup_logging(config.log_level, json_lines=config.log_json)
        if args.http_port is not None:
            config = replace(config, worker_http_port=args.http_port)
        return run_worker(config, threads=args.threads)
    if args.command == "deadletters":
        return _deadletters(config, args.action, args.queue)
    if args.command == "optout":
        return _run_async(_optout(config, args.action, args.number))
    if args.command == "demo":
        from gateway.app.demo import run_demo

        setup_logging("WARNING", json_lines=False)
        return _run_async(
            run_demo(config, duration_s=args.duration, http_port=args.http_port, speed=args.speed, rules_dir=args.rules)
        )
    from gateway.app.run import run_gateway

    setup_logging(config.log_level, json_lines=config.log_json)
    return _run_async(run_gateway(config))


def _pairs(items: list[str], kind: type[StrEnum]) -> list[tuple[str, str]]:
    """`E164=RESULT` options, checked against the result type."""
    out: list[tuple[str, str]] = []
    for item in items:
        number, _, result = item.partition("=")
        if result not in {k.value for k in kind}:
            raise SystemExit(f"gateway: bad {item!r}: results are {', '.join(k.value for k in kind)}")
        out.append((number, result))
    return out


async def _optout(config: GatewayConfig, action: str, number: str) -> int:
    from gateway.domain.numbers import NumberPlan, mask
    from gateway.inbox.intake import OptOutRegistry
    from gateway.outbox.store import connect

    e164 = NumberPlan().classify(number).e164
    if not e164.startswith("+"):
        print(f"gateway optout: {mask(number)} is not a phone number", file=sys.stderr)
        return 2
    url = config.resolved_redis_url(os.environ)
    if not url:
        print(f"gateway optout: set {config.redis_url_env}", file=sys.stderr)
        return 2
    client = connect(url, timeout_s=2.0)
    registry = OptOutRegistry(client, config.number_key(os.environ))
    try:
        if action == "status":
            state = await registry.status(e164)
            shown = f"opted out ({json.dumps(state, ensure_ascii=False)})" if state else "not opted out"
            print(f"{mask(e164)}: {shown}")
        else:
            await registry.set(e164, action == "add", channel="cli", via=os.environ.get("USER", "cli"))
            print(f"{mask(e164)}: {'opted out' if action == 'add' else 'opted in again'}")
    finally:
        await client.aclose()
    return 0


def _deadletters(config: GatewayConfig, action: str, queue: str | None) -> int:
    from gateway.messaging.jobs import dead_letters, make_broker, redrive

    url = config.resolved_redis_url(os.environ)
    if not url:
        raise SystemExit(f"gateway deadletters: set {config.redis_url_env}")
    broker = make_broker(url, namespace=config.queue_namespace)
    if action == "list":
        for item in dead_letters(broker, queue):
            print(json.dumps(item, ensure_ascii=False))
        return 0
    print(f"re-driven: {redrive(broker, queue)}")
    return 0


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop: the AMI reader must never stall (Asterisk drops slow consumers)."""
    import uvloop

    return uvloop.run(coro)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
