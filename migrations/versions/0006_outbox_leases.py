"""alert outbox leases: one dispatcher per receiver queue at a time

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_outbox_leases",
        sa.Column("receiver", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("expires_at", MOMENT, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("alert_outbox_leases")
