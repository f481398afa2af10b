"""intake: samples, quarantine, file cursors, sampling buckets, counters

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def Moment() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "samples",
        sa.Column("id", Id, autoincrement=True, primary_key=True),
        sa.Column("sample_key", sa.String(64), nullable=False, unique=True),
        sa.Column("received_at", Moment(), nullable=False, index=True),
        sa.Column("occurred_at", Moment(), nullable=False, index=True),
        sa.Column("segment", sa.String(255), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("completion", sa.Text(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("redactions", sa.JSON(), nullable=False),
        sa.Column("prompt_chars", sa.Integer(), nullable=False),
        sa.Column("completion_chars", sa.Integer(), nullable=False),
    )
    op.create_index("ix_samples_segment_occurred", "samples", ["segment", "occurred_at"])
    op.create_table(
        "quarantine",
        sa.Column("id", Id, autoincrement=True, primary_key=True),
        sa.Column("received_at", Moment(), nullable=False, index=True),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("position", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("record_bytes", sa.Integer(), nullable=False),
        sa.Column("record_sha256", sa.String(64), nullable=False),
        sa.Column("excerpt", sa.Text(), nullable=False),
    )
    op.create_table(
        "intake_cursors",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("line", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", Moment(), nullable=False),
    )
    op.create_table(
        "sampling_buckets",
        sa.Column("segment", sa.String(255), primary_key=True),
        sa.Column("hour", Moment(), primary_key=True),
        sa.Column("kept", sa.Integer(), nullable=False),
    )
    op.create_table(
        "intake_counters",
        sa.Column("source", sa.String(1024), primary_key=True),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("stored", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("sampled_out", sa.BigInteger(), nullable=False),
        sa.Column("quarantined", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", Moment(), nullable=False),
    )


def downgrade() -> None:
    for table in ("intake_counters", "sampling_buckets", "intake_cursors", "quarantine"):
        op.drop_table(table)
    op.drop_index("ix_samples_segment_occurred", table_name="samples")
    op.drop_table("samples")
