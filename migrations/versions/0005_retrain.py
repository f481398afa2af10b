"""retrain: jobs, the one-at-a-time lock, and head events (deploys, refusals, rollbacks)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "retrain_jobs",
        sa.Column("id", ID, autoincrement=True, primary_key=True),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("started_at", MOMENT, nullable=True),
        sa.Column("finished_at", MOMENT, nullable=True),
        sa.Column("heartbeat_at", MOMENT, nullable=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("work_dir", sa.String(1024), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("corpus_hash", sa.String(64), nullable=True),
        sa.Column("candidate_version", sa.String(64), nullable=True),
        sa.Column("decision", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
    )
    op.create_table(
        "retrain_lock",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("job_id", ID, nullable=True),
        sa.Column("heartbeat_at", MOMENT, nullable=True),
    )
    op.bulk_insert(
        sa.table("retrain_lock", sa.column("name", sa.String)),
        [{"name": "retrain"}],
    )
    op.create_table(
        "head_events",
        sa.Column("id", ID, autoincrement=True, primary_key=True),
        sa.Column("at", MOMENT, nullable=False, index=True),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("previous_version", sa.String(64), nullable=True),
        sa.Column("job_id", ID, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("head_events")
    op.drop_table("retrain_lock")
    op.drop_table("retrain_jobs")
