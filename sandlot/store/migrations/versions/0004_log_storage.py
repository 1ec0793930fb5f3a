"""Log storage: compressed events, each session's stored log bytes and its retention cut.

Columns are only added (SQLite: ``ALTER TABLE ADD COLUMN``, no copy of the events table), so
the upgrade of a big database costs one pass over the events to total each session's bytes.
Existing events keep encoding 0 (stored as they are). A session whose first events an
older sandlot pruned gets the cut recorded: ``pruned_seq`` is one before its first event
left (all of ``last_seq`` if none is), its reason ``retention``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled here, not imported: a revision keeps creating what it always created.
DROPPABLE = sa.text("status = 'ended' AND last_seq > pruned_seq")


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("encoding", sa.SmallInteger(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("log_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("pruned_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("pruned_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("pruned_why", sa.Text(), nullable=True))
    for name, columns in (
        ("ix_sessions_droppable_updated_at", ["updated_at"]),
        ("ix_sessions_droppable_tenant_id_updated_at", ["tenant_id", "updated_at"]),
    ):
        op.create_index(
            name, "sessions", columns, sqlite_where=DROPPABLE, postgresql_where=DROPPABLE
        )
    op.execute(
        "UPDATE sessions SET log_bytes = COALESCE("
        "(SELECT SUM(LENGTH(data)) FROM events WHERE events.session_id = sessions.id), 0)"
    )
    op.execute(
        "UPDATE sessions SET pruned_seq = COALESCE("
        "(SELECT MIN(seq) FROM events WHERE events.session_id = sessions.id) - 1, last_seq)"
    )
    op.execute("UPDATE sessions SET pruned_why = 'retention' WHERE pruned_seq > 0")


def downgrade() -> None:
    _decompress_all()  # an older sandlot reads data as it is stored
    op.drop_index("ix_sessions_droppable_tenant_id_updated_at", table_name="sessions")
    op.drop_index("ix_sessions_droppable_updated_at", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        for name in ("pruned_why", "pruned_at", "pruned_seq", "log_bytes"):
            batch.drop_column(name)
    with op.batch_alter_table("events") as batch:
        batch.drop_column("encoding")


def _decompress_all() -> None:
    import zlib

    conn = op.get_bind()
    events = sa.table(
        "events",
        sa.column("session_id", sa.Text()),
        sa.column("seq", sa.BigInteger()),
        sa.column("data", sa.LargeBinary()),
        sa.column("encoding", sa.SmallInteger()),
    )
    while True:
        rows = conn.execute(
            sa.select(events.c.session_id, events.c.seq, events.c.data)
            .where(events.c.encoding == 1)
            .limit(500)
        ).all()
        if not rows:
            return
        for session_id, seq, data in rows:
            conn.execute(
                sa.update(events)
                .where(events.c.session_id == session_id, events.c.seq == seq)
                .values(data=zlib.decompress(data), encoding=0)
            )
