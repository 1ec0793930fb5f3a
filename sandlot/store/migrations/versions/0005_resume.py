"""Where a session's running commands stand in their agents' output logs, for a restart.

``sessions.resume`` (JSON: execution id -> place) is written with each batch of a command's
output, by the same UPDATE of the session's row that numbers the batch: the agent byte offset
up to which its output is in the log, and what the recorder needs to carry on from there (see
:mod:`sandlot.transcript.recorder`). A server restarted after a crash re-attaches to the
command from that offset. A column is only added.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("resume", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("resume")
