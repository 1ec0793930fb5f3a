"""Durable sessions: workspace location, lifetimes, the run lock, and leases.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SESSION_COLUMNS: list[tuple[str, Any, dict[str, Any]]] = [
    ("workspace", sa.Text(), {}),
    ("idle_timeout", sa.Double(), {}),
    ("checkpoint_every", sa.Double(), {}),
    ("delete_after", sa.Double(), {}),
    ("last_active_at", sa.Double(), {}),
    ("checkpoint", sa.Integer(), {}),
    ("checkpointed_at", sa.Double(), {}),
    ("lock_holder", sa.Text(), {}),
    ("lock_since", sa.Double(), {}),
    ("lock_execution", sa.Text(), {}),
    ("lock_sandbox", sa.Text(), {}),
    ("lock_pid", sa.Integer(), {}),
]


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for name, kind, options in _SESSION_COLUMNS:
            batch.add_column(sa.Column(name, kind, **options))
    op.create_table(
        "leases",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("sandbox_id", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("spec_key", sa.Text(), nullable=False),
        sa.Column("ttl", sa.Double(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("released_at", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name="fk_leases_session_id_sessions"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_leases"),
    )
    op.create_index("ix_leases_session_id", "leases", ["session_id"])
    op.create_index("ix_leases_expires_at", "leases", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_leases_expires_at", table_name="leases")
    op.drop_index("ix_leases_session_id", table_name="leases")
    op.drop_table("leases")
    with op.batch_alter_table("sessions") as batch:
        for name, _, _ in reversed(_SESSION_COLUMNS):
            batch.drop_column(name)
