"""The first records schema: calls, messages, thread events, sends.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("pbx", sa.String(64), nullable=False),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("extension", sa.String(32), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("party_hash", sa.String(64), nullable=False),
        sa.Column("party_kind", sa.String(16), nullable=False),
        sa.Column("disposition", sa.String(16), nullable=False),
        sa.Column("cause", sa.String(64), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("answered_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("ring_seconds", sa.Float, nullable=False),
        sa.Column("talk_seconds", sa.Float, nullable=False),
        sa.Column("lettering", sa.String(24), nullable=False),
        sa.Column("lettering_reason", sa.String(64), nullable=False),
        sa.Column("call_notice", sa.String(32), nullable=False),
        sa.Column("postcall", sa.String(32), nullable=False),
        sa.Column("transfers", sa.Integer, nullable=False),
        sa.Column("recovered", sa.Boolean, nullable=False),
    )
    op.create_index("ix_calls_day_department", "calls", ["day", "department"])
    op.create_index("ix_calls_ended_at", "calls", ["ended_at"])

    op.create_table(
        "messages",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("thread", sa.String(32), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("tags", sa.String(400), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("day_type", sa.String(16), nullable=False),
        sa.Column("after_hours", sa.Boolean, nullable=False),
        sa.Column("party_hash", sa.String(64), nullable=False),
        sa.Column("sealed_text", sa.Text, nullable=False),
        sa.Column("auto_replied_at", sa.Float, nullable=True),
        sa.Column("auto_reply", sa.String(32), nullable=False),
        sa.Column("first_response_at", sa.Float, nullable=True),
        sa.Column("closed_at", sa.Float, nullable=True),
    )
    op.create_index("ix_messages_day_queue", "messages", ["day", "queue"])
    op.create_index("ix_messages_thread", "messages", ["thread", "received_at"])
    op.create_index("ix_messages_received_at", "messages", ["received_at"])

    op.create_table(
        "thread_events",
        sa.Column("id", sa.String(300), primary_key=True),
        sa.Column("thread", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("staff", sa.String(64), nullable=False),
        sa.Column("detail", sa.String(64), nullable=False),
        sa.Column("sealed_text", sa.Text, nullable=False),
    )
    op.create_index("ix_thread_events_thread", "thread_events", ["thread", "at"])
    op.create_index("ix_thread_events_at", "thread_events", ["at"])

    op.create_table(
        "sends",
        sa.Column("id", sa.String(300), primary_key=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("first_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("party_hash", sa.String(64), nullable=False),
        sa.Column("reference", sa.String(128), nullable=False),
        sa.Column("detail", sa.String(128), nullable=False),
        sa.Column("fallback_used", sa.Boolean, nullable=False),
    )
    op.create_index("ix_sends_day", "sends", ["day"])
    op.create_index("ix_sends_updated_at", "sends", ["updated_at"])


def downgrade() -> None:
    for table in ("sends", "thread_events", "messages", "calls"):
        op.drop_table(table)
