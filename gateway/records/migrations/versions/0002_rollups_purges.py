"""Daily answer-rate roll-ups and the purge log; the roll-ups backfilled from stored calls.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# The writer's rules (gateway.records.store), in SQL: outbound calls to Korean mobiles; the
# reason only for skipped lettering; ring seconds truncated and capped at 180 (RING_CAP_S,
# repeated here: a migration keeps the value it was written with).
_COUNTED = "direction = 'outbound' AND party_kind = 'mobile'"
_REASON = "CASE WHEN lettering = 'skipped' THEN lettering_reason ELSE '' END"
_RING_CAP_S = 180


def upgrade() -> None:
    op.create_table(
        "answer_daily",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("department", sa.String(64), primary_key=True),
        sa.Column("lettering", sa.String(24), primary_key=True),
        sa.Column("reason", sa.String(64), primary_key=True),
        sa.Column("calls", sa.Integer, nullable=False),
        sa.Column("answered", sa.Integer, nullable=False),
    )
    op.create_table(
        "ring_daily",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("department", sa.String(64), primary_key=True),
        sa.Column("lettering", sa.String(24), primary_key=True),
        sa.Column("ring_s", sa.Integer, primary_key=True),
        sa.Column("answered", sa.Integer, nullable=False),
    )
    op.create_table(
        "purges",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("store", sa.String(16), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("cutoff", sa.Float, nullable=False),
        sa.Column("detail", sa.String(200), nullable=False),
    )

    # Backfill: the calls a previous release stored count in the roll-ups as if the writer
    # had kept them all along.
    op.execute(
        sa.text(
            "INSERT INTO answer_daily (day, department, lettering, reason, calls, answered) "
            f"SELECT day, department, lettering, {_REASON}, COUNT(*), "
            "SUM(CASE WHEN disposition = 'answered' THEN 1 ELSE 0 END) "
            f"FROM calls WHERE {_COUNTED} "
            f"GROUP BY day, department, lettering, {_REASON}"
        )
    )
    # Whole seconds, truncated like Python's int(): SQLite's CAST truncates, PostgreSQL's rounds.
    seconds = "FLOOR(ring_seconds)" if op.get_bind().dialect.name == "postgresql" else "ring_seconds"
    ring = (
        f"CASE WHEN ring_seconds < 0 THEN 0 WHEN ring_seconds >= {_RING_CAP_S} THEN {_RING_CAP_S} "
        f"ELSE CAST({seconds} AS INTEGER) END"
    )
    op.execute(
        sa.text(
            "INSERT INTO ring_daily (day, department, lettering, ring_s, answered) "
            f"SELECT day, department, lettering, {ring}, COUNT(*) "
            f"FROM calls WHERE {_COUNTED} AND disposition = 'answered' "
            f"GROUP BY day, department, lettering, {ring}"
        )
    )


def downgrade() -> None:
    for table in ("purges", "ring_daily", "answer_daily"):
        op.drop_table(table)
