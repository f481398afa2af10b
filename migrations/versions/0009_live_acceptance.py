"""live acceptance: the engines' per-request spec-decode stats and their scraped Prometheus counters

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "live_results",
        sa.Column("id", Id, autoincrement=True, primary_key=True),
        sa.Column("sample_key", sa.String(64), nullable=False, unique=True),
        sa.Column("sample_id", Id, sa.ForeignKey("samples.id", ondelete="SET NULL"), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("segment", sa.String(255), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("engine", sa.String(16), nullable=False),
        sa.Column("method", sa.String(32), nullable=True),
        sa.Column("num_spec_tokens", sa.Integer(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("drafted", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=True),
        sa.Column("rejected_basis", sa.String(16), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
    )
    op.create_index("ix_live_results_segment_time", "live_results", ["segment", "occurred_at"])
    op.create_index("ix_live_results_occurred_at", "live_results", ["occurred_at"])
    op.create_index("ix_live_results_sample_id", "live_results", ["sample_id"])
    op.create_table(
        "engine_scrapes",
        sa.Column("id", Id, autoincrement=True, primary_key=True),
        sa.Column("endpoint", sa.String(128), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("engine_label", sa.String(64), nullable=False),
        sa.Column("scraped_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("totals", sa.JSON(), nullable=False),
        sa.Column("drafts", sa.Float(), nullable=False),
        sa.Column("draft_tokens", sa.Float(), nullable=False),
        sa.Column("accepted", sa.Float(), nullable=False),
        sa.Column("accepted_per_position", sa.JSON(), nullable=False),
        sa.Column("reset", sa.Boolean(), nullable=False),
        sa.Column("previous_id", Id, nullable=True, unique=True),
    )
    op.create_index(
        "ix_engine_scrapes_series", "engine_scrapes", ["endpoint", "model_name", "engine_label", "scraped_at"]
    )
    op.create_index("ix_engine_scrapes_scraped_at", "engine_scrapes", ["scraped_at"])
    with op.batch_alter_table("intake_counters") as batch:
        batch.add_column(sa.Column("live", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("live_refused", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("intake_counters") as batch:
        batch.drop_column("live_refused")
        batch.drop_column("live")
    op.drop_table("engine_scrapes")
    op.drop_table("live_results")
