"""`gateway staff ...` and `gateway audit ...`: accounts, tokens and the access records.

* `staff add USER --name NAME --role admin|telecom|staff --queues duty,complaint` prints a
  temporary password once (changed at the first sign-in), or takes one from standard input
  with `--password-stdin`;
* `staff disable|enable|reset|unlock USER`, `staff list` (never a password hash),
  `staff token USER [--label L]` (prints the token once), `staff revoke TOKEN_ID`;
* `audit verify` (exit 0 clean, 1 broken: each chain's count and first problem),
  `audit list [filters]`, `audit export --month YYYY-MM --reason "..." --out FILE.csv` (the
  reason is required and the export itself is recorded, with it, as AUDIT_EXPORT).

Every change is an access record on the ACCOUNTS chain, by "cli:<os user>". The records
database is `--records URL`, else the configuration's; the chains' key derives from the
number key (`gateway.domain.audit.audit_key`), as the gateway's does.
Exit codes: 0 ok, 1 failed (or a broken chain), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from gateway.domain.audit import ACTION_LABELS, AccessEntry, Action, audit_key
from gateway.domain.records import SEOUL
from gateway.domain.staff import ROLE_LABELS, LoginPolicy, Role
from gateway.errors import GatewayError, StoreUnavailable
from gateway.infra.config import GatewayConfig
from gateway.records.store import RecordsError, RecordsStore
from gateway.staff.accounts import AccountNotFound, AccountProblem, SqlStaffDirectory, queues_text
from gateway.staff.audit import SqlAccessLog, seoul_time


def add_parsers(sub: Any) -> None:
    """The `staff` and `audit` sub-commands, on the CLI's sub-parsers."""
    staff = sub.add_parser("staff", help="staff accounts and their personal staff-API tokens")
    ssub = staff.add_subparsers(dest="staff_command", required=True)
    add = ssub.add_parser("add", help="add an account (prints a temporary password once)")
    add.add_argument("username")
    add.add_argument("--name", required=True, help="the person's name as shown in the console")
    add.add_argument("--role", required=True, choices=[str(r) for r in Role])
    add.add_argument("--queues", default="", help='queues granted: "duty,complaint", "dept:*" or "*"')
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    for name, text in (
        ("disable", "disable an account (its sessions end, its tokens stop working)"),
        ("enable", "enable a disabled account again"),
        ("reset", "give an account a temporary password (prints it once; changed at the next sign-in)"),
        ("unlock", "unlock an account locked after failed sign-ins"),
    ):
        cmd = ssub.add_parser(name, help=text)
        cmd.add_argument("username")
    ssub.add_parser("list", help="every account: name, role, queues, state (no password hashes)")
    token = ssub.add_parser("token", help="issue a personal staff-API token (prints it once)")
    token.add_argument("username")
    token.add_argument("--label", default="", help="what the token is for (e.g. the client's name)")
    revoke = ssub.add_parser("revoke", help="revoke a staff-API token by its id (gwt_<id>)")
    revoke.add_argument("token_id")

    audit = sub.add_parser("audit", help="the access records (접속기록): verify, list, export")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    asub.add_parser("verify", help="check both hash chains; exit 1 when a record was altered or removed")
    lst = asub.add_parser("list", help="access records, newest first")
    lst.add_argument("--since", metavar="YYYY-MM-DD", help="first day (Asia/Seoul)")
    lst.add_argument("--until", metavar="YYYY-MM-DD", help="last day, included")
    lst.add_argument("--account", help="only this person's records")
    lst.add_argument("--subject", help="only records about this thread id or number hash")
    lst.add_argument("--action", choices=[str(a) for a in Action])
    lst.add_argument("--limit", type=int, default=100)
    exp = asub.add_parser("export", help="a month's access records as CSV (Excel), with the reason recorded")
    exp.add_argument("--month", required=True, metavar="YYYY-MM")
    exp.add_argument("--reason", required=True, help="why the records are exported (recorded with the export)")
    exp.add_argument("--out", required=True, type=Path, metavar="FILE.csv")

    for parser in (*ssub.choices.values(), *asub.choices.values()):
        parser.add_argument("--config", type=Path)
        parser.add_argument("--records", metavar="URL", help="sqlite:///FILE or postgresql://... (default: config)")


def cli_actor() -> str:
    """Who acts from the command line: "cli:<os user>"."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"cli:{user}"[:32]


def _day(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag}: not a day YYYY-MM-DD: {text!r}") from None


def _midnight(day: date) -> float:
    return datetime.combine(day, datetime.min.time(), SEOUL).timestamp()


def month_range(text: str) -> tuple[float, float]:
    """(start, end) epoch seconds of a Seoul month "YYYY-MM"; ValueError when malformed."""
    try:
        first = datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise ValueError(f"--month: not a month YYYY-MM: {text!r}") from None
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return _midnight(first), _midnight(following)


def dispatch(args: argparse.Namespace, config: GatewayConfig, out: TextIO = sys.stdout) -> int:
    url = str(args.records) if args.records else config.records_url(os.environ)
    key = audit_key(config.number_key(os.environ))
    console = config.console
    policy = (
        LoginPolicy(max_failures=console.lockout_failures, lock_s=console.lockout_minutes * 60.0)
        if console is not None
        else LoginPolicy()
    )
    try:
        command = _staff_command(args, out) if args.command == "staff" else _audit_command(args, out)
    except ValueError as exc:
        print(f"gateway {args.command}: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        store = RecordsStore(url)
        try:
            await store.ready()
            access = SqlAccessLog(store, key)
            directory = SqlStaffDirectory(store, access, policy)
            return await command(directory, access)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except AccountProblem as exc:
        print(f"gateway {args.command}: {exc}", file=sys.stderr)
        return 2
    except (AccountNotFound, StoreUnavailable, RecordsError) as exc:
        print(f"gateway {args.command}: {exc}", file=sys.stderr)
        return 1
    except GatewayError:
        raise


Command = Callable[[SqlStaffDirectory, SqlAccessLog], Awaitable[int]]


def _staff_command(args: argparse.Namespace, out: TextIO) -> Command:
    """The `staff` sub-command as a coroutine function (arguments checked first: ValueError)."""
    actor = cli_actor()
    password: str | None = None
    if args.staff_command == "add" and args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ValueError("--password-stdin: no password on standard input")

    async def run(directory: SqlStaffDirectory, _: SqlAccessLog) -> int:
        cmd = args.staff_command
        if cmd == "add":
            account, secret = await directory.add(
                actor, args.username, args.name, args.role, queues=args.queues, password=password
            )
            print(f"added {account.username} ({account.display_name}), role {account.role}", file=out)
            if password is None:
                print(f"temporary password (shown once; changed at the first sign-in): {secret}", file=out)
            return 0
        if cmd in ("disable", "enable"):
            changed = await getattr(directory, cmd)(actor, args.username)
            print(f"{args.username}: {cmd}d" if changed else f"{args.username}: already {cmd}d", file=out)
            return 0
        if cmd == "reset":
            secret = await directory.reset_password(actor, args.username)
            print(f"{args.username}: temporary password (shown once; changed at the next sign-in): {secret}", file=out)
            return 0
        if cmd == "unlock":
            await directory.unlock(actor, args.username)
            print(f"{args.username}: unlocked", file=out)
            return 0
        if cmd == "token":
            token = await directory.issue_token(actor, args.username, args.label)
            print(f"staff-API token for {args.username} (shown once; keep it secret):", file=out)
            print(token, file=out)
            return 0
        if cmd == "revoke":
            revoked = await directory.revoke_token(actor, args.token_id)
            print(f"token {args.token_id}: {'revoked' if revoked else 'already revoked'}", file=out)
            return 0
        return await _list(directory, out)

    return run


async def _list(directory: SqlStaffDirectory, out: TextIO) -> int:
    now = time.time()
    infos = await directory.infos()
    print(f"{'user':<20} {'role':<8} {'state':<9} {'last sign-in':<19} {'queues':<24} name", file=out)
    for info in infos:
        a = info.account
        state = "disabled" if a.disabled else "locked" if info.locked(now) else "active"
        last = seoul_time(info.last_login_at) if info.last_login_at else "-"
        queues = queues_text(a.queues) or "-"
        print(f"{a.username:<20} {a.role!s:<8} {state:<9} {last:<19} {queues:<24} {a.display_name}", file=out)
    tokens = [t for t in await directory.tokens() if t.revoked_at is None]
    if tokens:
        print("", file=out)
        print(f"{'token id':<20} {'user':<20} {'last used':<19} label", file=out)
        for t in tokens:
            used = seoul_time(t.last_used_at) if t.last_used_at else "-"
            print(f"gwt_{t.id:<16} {t.username:<20} {used:<19} {t.label}", file=out)
    print(f"{len(infos)} account(s); roles: " + ", ".join(f"{r}={ROLE_LABELS[r]}" for r in Role), file=out)
    return 0


def _audit_command(args: argparse.Namespace, out: TextIO) -> Command:
    """The `audit` sub-command as a coroutine function (arguments checked first: ValueError)."""
    actor = cli_actor()
    cmd = args.audit_command
    if cmd == "export":
        since, until = month_range(args.month)
        reason = " ".join(args.reason.split())
        if not reason:
            raise ValueError("--reason: say why the records are exported (it is recorded with the export)")

        async def export(_: SqlStaffDirectory, access: SqlAccessLog) -> int:
            # Recorded first: an export that cannot be recorded is not made.
            await access.record(
                AccessEntry(
                    at=time.time(),
                    account=actor,
                    ip="",
                    action=Action.AUDIT_EXPORT,
                    target=args.month,
                    detail=reason,
                )
            )
            body = await access.export_csv(since=since, until=until)
            args.out.write_bytes(body)
            rows = body.decode("utf-8-sig").count("\r\n") - 1
            print(f"wrote {rows} access record(s) of {args.month} to {args.out}", file=out)
            return 0

        return export
    if cmd == "list":
        since_f = _midnight(_day(args.since, "--since")) if args.since else None
        until_f = _midnight(_day(args.until, "--until") + timedelta(days=1)) if args.until else None
        if args.limit < 1:
            raise ValueError("--limit: at least 1")

        async def listing(_: SqlStaffDirectory, access: SqlAccessLog) -> int:
            await access.record(
                AccessEntry(at=time.time(), account=actor, ip="", action=Action.AUDIT_VIEW, detail="gateway audit list")
            )
            records = await access.list(
                since=since_f,
                until=until_f,
                account=args.account,
                subject=args.subject,
                action=args.action,
                limit=args.limit,
            )
            print(
                f"{'time (Seoul)':<19} {'account':<16} {'ip':<15} {'action':<16} {'result':<7} subject / target",
                file=out,
            )
            for r in records:
                e = r.entry
                what = " ".join(x for x in (e.subject, e.target, e.detail) if x)
                label = ACTION_LABELS.get(e.action, e.action)
                print(f"{seoul_time(e.at):<19} {e.account:<16} {e.ip:<15} {label:<16} {e.result:<7} {what}", file=out)
            print(f"{len(records)} record(s)", file=out)
            return 0

        return listing

    async def verify(_: SqlStaffDirectory, access: SqlAccessLog) -> int:
        results = await access.verify()
        for result in results:
            if result.ok:
                print(f"{result.chain}: {result.checked} record(s), chain intact", file=out)
            else:
                print(
                    f"{result.chain}: BROKEN at record {result.first_bad_seq}: {result.problem} "
                    f"({result.checked} record(s) checked before it)",
                    file=out,
                )
        return 0 if all(r.ok for r in results) else 1

    return verify
