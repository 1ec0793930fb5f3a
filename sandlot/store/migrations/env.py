"""Alembic's entry point for sandlot's store. Run through ``Database.migrate()``, which passes
an open connection inside a transaction that holds the migration lock; there is no
alembic.ini and no offline (``--sql``) mode."""

from __future__ import annotations

from alembic import context

from sandlot.store.database import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("sandlot's migrations run through sandlot.store.database.Database.migrate()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
