"""Alembic environment: runs on the connection the store passes (never opens its own)."""

from __future__ import annotations

from alembic import context

from gateway.records.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the records migrations run through gateway.records (gateway records migrate)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=False)
with context.begin_transaction():
    context.run_migrations()
