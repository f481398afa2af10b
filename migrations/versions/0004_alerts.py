"""alerts: alert lifecycle, notification log, outbox and silences

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", ID, autoincrement=True, primary_key=True),
        sa.Column("fingerprint", sa.String(32), nullable=False, unique=True),
        sa.Column("alertname", sa.String(128), nullable=False),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("annotations", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("starts_at", MOMENT, nullable=False),
        sa.Column("last_active_at", MOMENT, nullable=False),
        sa.Column("clear_since", MOMENT, nullable=True),
        sa.Column("ends_at", MOMENT, nullable=True),
    )
    op.create_table(
        "notification_log",
        sa.Column("receiver", sa.String(128), primary_key=True),
        sa.Column("group_key", sa.String(512), primary_key=True),
        sa.Column("incident", sa.Integer(), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("firing", sa.JSON(), nullable=False),
        sa.Column("resolved", sa.JSON(), nullable=False),
        sa.Column("notified_at", MOMENT, nullable=False),
    )
    op.create_table(
        "alert_outbox",
        sa.Column("id", ID, autoincrement=True, primary_key=True),
        sa.Column("receiver", sa.String(128), nullable=False),
        sa.Column("group_key", sa.String(512), nullable=False),
        sa.Column("incident", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempted_at", MOMENT, nullable=True),
        sa.Column("next_attempt_at", MOMENT, nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("sent_at", MOMENT, nullable=True),
        sa.Column("receipt", sa.JSON(), nullable=True),
    )
    op.create_index("ix_alert_outbox_pending", "alert_outbox", ["receiver", "sent_at", "id"])
    op.create_table(
        "silences",
        sa.Column("id", ID, autoincrement=True, primary_key=True),
        sa.Column("matchers", sa.JSON(), nullable=False),
        sa.Column("starts_at", MOMENT, nullable=False),
        sa.Column("ends_at", MOMENT, nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("silences")
    op.drop_index("ix_alert_outbox_pending", table_name="alert_outbox")
    op.drop_table("alert_outbox")
    op.drop_table("notification_log")
    op.drop_table("alerts")
