"""`gateway records ...` and `gateway report ...`: the SQL archive's commands.

`records migrate|status|purge` manage the store; `report answer-rate|inbox` read it. Every
command takes `--records URL` (default: the configuration's `records.url_env` / `records.url`).
Exit codes as the rest of the CLI: 0 ok, 1 the command failed, 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gateway.infra.config import GatewayConfig


def add_parsers(sub: Any) -> None:
    """The `records` and `report` sub-commands, on the CLI's sub-parsers."""
    rec = sub.add_parser("records", help="the SQL records store: schema, status, retention")
    rsub = rec.add_subparsers(dest="records_command", required=True)
    for name, text in (
        ("migrate", "bring the records database's schema to this release (creates it if empty)"),
        ("status", "the schema's revision, what is stored and what the retention would remove"),
        ("purge", "destroy what is past its retention period (SQL and Redis), recording each purge"),
    ):
        cmd = rsub.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path)
        cmd.add_argument("--records", metavar="URL", help="sqlite:///FILE or postgresql://... (default: config)")
        if name == "purge":
            cmd.add_argument("--dry-run", action="store_true", help="show what would go; delete nothing")
            cmd.add_argument("--now", metavar="ISO", help="purge as if it were this time (Asia/Seoul)")

    rep = sub.add_parser("report", help="answer rates and the duty/complaint inbox, from the records store")
    psub = rep.add_subparsers(dest="report_command", required=True)
    ar = psub.add_parser("answer-rate", help="outbound calls to mobiles answered, by lettering outcome")
    ib = psub.add_parser("inbox", help="citizens' texts per queue: received, answered, response times")
    for cmd in (ar, ib):
        cmd.add_argument("--config", type=Path)
        cmd.add_argument("--records", metavar="URL")
        cmd.add_argument("--since", required=True, metavar="YYYY-MM-DD", help="first day (Asia/Seoul)")
        cmd.add_argument("--until", required=True, metavar="YYYY-MM-DD", help="last day, included")
        cmd.add_argument("--out", type=Path, help="write here instead of standard output")
    ar.add_argument("--by", choices=["department", "day", "lettering"], default="department")
    ar.add_argument("--compare", metavar="D..D", help="a second period to compare with, e.g. 2026-01-01..2026-03-31")
    ar.add_argument("--department", action="append", default=[], help="only these departments (repeatable)")
    ar.add_argument("--format", choices=["table", "csv", "xlsx"], default="table")
    ib.add_argument("--by", choices=["queue", "rule", "tag", "day"], default="queue")
    ib.add_argument("--format", choices=["table", "csv", "xlsx", "pdf"], default="table")


def records_url(args: argparse.Namespace, config: GatewayConfig) -> str:
    """`--records`, else the configuration's records URL."""
    return str(args.records) if args.records else config.records_url(os.environ)


def dispatch(args: argparse.Namespace, config: GatewayConfig) -> int:
    url = records_url(args, config)
    if args.command == "records":
        if args.records_command == "purge":
            from gateway.records.retention import cmd_purge

            return cmd_purge(config, url, dry_run=args.dry_run, now=args.now, out=sys.stdout)
        from gateway.records.store import cmd_migrate, cmd_status

        if args.records_command == "migrate":
            return cmd_migrate(url, sys.stdout)
        return cmd_status(url, sys.stdout)
    from gateway.records.reportcli import cmd_answer_rate, cmd_inbox

    if args.report_command == "answer-rate":
        return cmd_answer_rate(args, url, sys.stdout)
    return cmd_inbox(args, url, sys.stdout)
