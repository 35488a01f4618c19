"""Staff accounts, per-person API tokens and the hash-chained access records (issue #16).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "staff_accounts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(32), nullable=False, unique=True),
        sa.Column("display_name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("queues", sa.String(1000), nullable=False, server_default=""),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("must_change_password", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_until", sa.Float, nullable=True),
        sa.Column("last_login_at", sa.Float, nullable=True),
        sa.Column("password_changed_at", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "staff_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_used_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_index("ix_staff_tokens_account", "staff_tokens", ["account_id"])
    op.create_table(
        "audit_log",
        sa.Column("chain", sa.String(16), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("account", sa.String(32), nullable=False, server_default=""),
        sa.Column("ip", sa.String(64), nullable=False, server_default=""),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False, server_default=""),
        sa.Column("target", sa.String(200), nullable=False, server_default=""),
        sa.Column("result", sa.String(16), nullable=False, server_default="ok"),
        sa.Column("detail", sa.String(400), nullable=False, server_default=""),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["chain", "at"])
    op.create_index("ix_audit_log_subject", "audit_log", ["subject"])
    op.create_index("ix_audit_log_account", "audit_log", ["account", "at"])
    heads = op.create_table(
        "audit_heads",
        sa.Column("chain", sa.String(16), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("anchor_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("anchor_hash", sa.String(64), nullable=False),
    )
    # Both chains exist from the start: an append only ever updates its head row (which is
    # also what serialises appends on PostgreSQL: the row lock).
    op.bulk_insert(
        heads,
        [
            {"chain": chain, "seq": 0, "hash": GENESIS, "anchor_seq": 0, "anchor_hash": GENESIS}
            for chain in ("access", "accounts")
        ],
    )


def downgrade() -> None:
    op.drop_table("audit_heads")
    op.drop_index("ix_audit_log_account", "audit_log")
    op.drop_index("ix_audit_log_subject", "audit_log")
    op.drop_index("ix_audit_log_at", "audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_staff_tokens_account", "staff_tokens")
    op.drop_table("staff_tokens")
    op.drop_table("staff_accounts")
