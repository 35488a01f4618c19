"""The records store's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Times are epoch seconds (float): what the rest of the gateway speaks, compared and
subtracted without time-zone arithmetic in SQL; `day` is the Seoul calendar day as
'YYYY-MM-DD' text, the unit of every report and roll-up (`gateway.domain.records.seoul_day`).
The schema is changed only by a migration under `gateway/records/migrations/versions`.

No table holds a phone number: citizens are the number's keyed hash, texts are sealed.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# One row per ended call (CallFact). Idempotent by `id` = "<pbx>:<call id>".
calls = Table(
    "calls",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("pbx", String(64), nullable=False),
    Column("call_id", String(128), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("extension", String(32), nullable=False, default=""),
    Column("department", String(64), nullable=False, default=""),
    Column("party_hash", String(64), nullable=False, default=""),
    Column("party_kind", String(16), nullable=False),
    Column("disposition", String(16), nullable=False),
    Column("cause", String(64), nullable=False, default=""),
    Column("started_at", Float, nullable=False),
    Column("answered_at", Float, nullable=True),
    Column("ended_at", Float, nullable=False),
    Column("day", String(10), nullable=False),
    Column("ring_seconds", Float, nullable=False),
    Column("talk_seconds", Float, nullable=False),
    Column("lettering", String(24), nullable=False),
    Column("lettering_reason", String(64), nullable=False, default=""),
    Column("call_notice", String(32), nullable=False, default=""),
    Column("postcall", String(32), nullable=False, default=""),
    Column("transfers", Integer, nullable=False, default=0),
    Column("recovered", Boolean, nullable=False, default=False),
    Index("ix_calls_day_department", "day", "department"),
    Index("ix_calls_ended_at", "ended_at"),
)

# One row per citizen's message received (ThreadFact RECEIVED), updated by later steps:
# the report's unit. Idempotent by `id` = the message's key.
messages = Table(
    "messages",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("thread", String(32), nullable=False),
    Column("queue", String(64), nullable=False),
    Column("rule", String(128), nullable=False, default=""),
    Column("tags", String(400), nullable=False, default=""),  # comma-separated
    Column("received_at", Float, nullable=False),
    Column("day", String(10), nullable=False),
    Column("day_type", String(16), nullable=False, default=""),
    Column("after_hours", Boolean, nullable=False, default=False),
    Column("party_hash", String(64), nullable=False, default=""),
    Column("sealed_text", Text, nullable=False, default=""),
    Column("auto_replied_at", Float, nullable=True),
    Column("auto_reply", String(32), nullable=False, default=""),  # the auto-reply's verdict
    Column("first_response_at", Float, nullable=True),  # a staff answer after it
    Column("closed_at", Float, nullable=True),
    Index("ix_messages_day_queue", "day", "queue"),
    Index("ix_messages_thread", "thread", "received_at"),
    Index("ix_messages_received_at", "received_at"),
)

# Every step of every thread (ThreadFact), the lifecycle's history. Idempotent by `id`.
thread_events = Table(
    "thread_events",
    metadata,
    Column("id", String(300), primary_key=True),
    Column("thread", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("day", String(10), nullable=False),
    Column("queue", String(64), nullable=False, default=""),
    Column("staff", String(64), nullable=False, default=""),
    Column("detail", String(64), nullable=False, default=""),
    Column("sealed_text", Text, nullable=False, default=""),
    Index("ix_thread_events_thread", "thread", "at"),
    Index("ix_thread_events_at", "at"),
)

# One row per citizen-bound send (SendFact), the latest state. Keyed by the idempotency key.
sends = Table(
    "sends",
    metadata,
    Column("id", String(300), primary_key=True),
    Column("purpose", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("provider", String(64), nullable=False, default=""),
    Column("state", String(24), nullable=False),
    Column("first_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("day", String(10), nullable=False),
    Column("party_hash", String(64), nullable=False, default=""),
    Column("reference", String(128), nullable=False, default=""),
    Column("detail", String(128), nullable=False, default=""),
    Column("fallback_used", Boolean, nullable=False, default=False),
    Index("ix_sends_day", "day"),
    Index("ix_sends_updated_at", "updated_at"),
)

# Daily answer-rate roll-ups: outbound calls to Korean mobiles per (day, department, lettering
# outcome, reason), kept incrementally by the writer (only newly inserted calls count), so a
# year's report reads 365 x departments x outcomes rows, never the raw calls. No personal data:
# kept when the raw calls are purged.
answer_daily = Table(
    "answer_daily",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("department", String(64), primary_key=True),
    Column("lettering", String(24), primary_key=True),
    Column("reason", String(64), primary_key=True),
    Column("calls", Integer, nullable=False, default=0),
    Column("answered", Integer, nullable=False, default=0),
)

# Ring time before answer, per whole second (capped at RING_CAP_S), for the median: a
# histogram adds up across days where medians do not.
ring_daily = Table(
    "ring_daily",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("department", String(64), primary_key=True),
    Column("lettering", String(24), primary_key=True),
    Column("ring_s", Integer, primary_key=True),
    Column("answered", Integer, nullable=False, default=0),
)

RING_CAP_S = 180

# The daily roll-ups summed per Seoul month ('YYYY-MM'), kept by the writer in the same
# transaction: a year's report reads 12 months of these (and the partial months' days from the
# daily tables) instead of 365 days (`gateway.records.rollups`). No personal data: kept.
answer_monthly = Table(
    "answer_monthly",
    metadata,
    Column("month", String(7), primary_key=True),
    Column("department", String(64), primary_key=True),
    Column("lettering", String(24), primary_key=True),
    Column("reason", String(64), primary_key=True),
    Column("calls", Integer, nullable=False, default=0),
    Column("answered", Integer, nullable=False, default=0),
)

ring_monthly = Table(
    "ring_monthly",
    metadata,
    Column("month", String(7), primary_key=True),
    Column("department", String(64), primary_key=True),
    Column("lettering", String(24), primary_key=True),
    Column("ring_s", Integer, primary_key=True),
    Column("answered", Integer, nullable=False, default=0),
)

# Every destruction (파기) the purge did: what kind, from which store, how many, up to when.
purges = Table(
    "purges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("store", String(16), nullable=False),  # "sql" or "redis"
    Column("count", Integer, nullable=False),
    Column("cutoff", Float, nullable=False),
    Column("detail", String(200), nullable=False, default=""),
)

# ------------------------------------------------------------------ staff (issue #16)
# One row per person (never shared: the safety measures' §5). The password is an Argon2id hash;
# `queues` the grants, comma-separated ("duty,complaint", "dept:*", "*").
staff_accounts = Table(
    "staff_accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(32), nullable=False, unique=True),
    Column("display_name", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("queues", String(1000), nullable=False, default=""),
    Column("password_hash", String(200), nullable=False),
    Column("must_change_password", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", Float, nullable=True),
    Column("last_login_at", Float, nullable=True),
    Column("password_changed_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Per-person API tokens for the staff API: `id` is the token's public part, `secret_hash` the
# SHA-256 of its secret part (a token is 256 random bits: no slow hash needed). Revocable.
staff_tokens = Table(
    "staff_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", Integer, nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("label", String(64), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Index("ix_staff_tokens_account", "account_id"),
)

# Access records (접속기록) and account changes, each chain hash-linked (`gateway.domain.audit`).
audit_log = Table(
    "audit_log",
    metadata,
    Column("chain", String(16), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", Float, nullable=False),
    Column("account", String(32), nullable=False, default=""),
    Column("ip", String(64), nullable=False, default=""),
    Column("action", String(32), nullable=False),
    Column("subject", String(64), nullable=False, default=""),
    Column("target", String(200), nullable=False, default=""),
    Column("result", String(16), nullable=False, default="ok"),
    Column("detail", String(400), nullable=False, default=""),
    Column("prev", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_at", "chain", "at"),
    Index("ix_audit_log_subject", "subject"),
    Index("ix_audit_log_account", "account", "at"),
)

# Each chain's newest record (seq, hash), updated in the same transaction as every append: the
# newest rows deleted are detected against it. `anchor_*`: the last record the purge removed.
audit_heads = Table(
    "audit_heads",
    metadata,
    Column("chain", String(16), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("anchor_seq", Integer, nullable=False, default=0),
    Column("anchor_hash", String(64), nullable=False),
)
