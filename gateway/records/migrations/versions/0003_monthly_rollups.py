"""Monthly answer-rate roll-ups, backfilled from the daily ones.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.records.rollups import backfill_monthly

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "answer_monthly",
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("department", sa.String(64), primary_key=True),
        sa.Column("lettering", sa.String(24), primary_key=True),
        sa.Column("reason", sa.String(64), primary_key=True),
        sa.Column("calls", sa.Integer, nullable=False),
        sa.Column("answered", sa.Integer, nullable=False),
    )
    op.create_table(
        "ring_monthly",
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("department", sa.String(64), primary_key=True),
        sa.Column("lettering", sa.String(24), primary_key=True),
        sa.Column("ring_s", sa.Integer, primary_key=True),
        sa.Column("answered", sa.Integer, nullable=False),
    )
    # The months already rolled up by day count as if the writer had kept them all along.
    # (The shared backfill: its SQL changing later would change what this migration did, so
    # it is plain INSERT ... SELECT ... GROUP BY on the daily tables, nothing more.)
    backfill_monthly(op.get_bind())


def downgrade() -> None:
    for table in ("ring_monthly", "answer_monthly"):
        op.drop_table(table)
