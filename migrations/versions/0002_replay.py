"""replay: per-sample replay results and worker claims

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "replay_results",
        sa.Column("id", Id, autoincrement=True, primary_key=True),
        sa.Column("sample_id", Id, sa.ForeignKey("samples.id", ondelete="CASCADE"), nullable=False),
        sa.Column("segment", sa.String(255), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("draft_version", sa.String(64), nullable=False),
        sa.Column("target_version", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("window", sa.Integer(), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=False),
        sa.Column("accepted", sa.Float(), nullable=False),
        sa.Column("rejected", sa.Float(), nullable=False),
        sa.Column("drafted", sa.Float(), nullable=False),
        sa.Column("steps", sa.Float(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("outcomes", sa.JSON(), nullable=False),
        sa.Column("target_agreement", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("truncated_tokens", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.String(255), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("speedup", sa.Float(), nullable=True),
        sa.Column("worker", sa.String(128), nullable=False),
        sa.UniqueConstraint("sample_id", "draft_version", "target_version", "mode", name="uq_replay_results_run"),
    )
    op.create_index("ix_replay_results_version_segment", "replay_results", ["draft_version", "segment", "occurred_at"])
    op.create_table(
        "replay_claims",
        sa.Column("sample_id", Id, sa.ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("draft_version", sa.String(64), primary_key=True),
        sa.Column("worker", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("replay_claims")
    op.drop_index("ix_replay_results_version_segment", table_name="replay_results")
    op.drop_table("replay_results")
