"""findings seen: one row per episode of a finding, with first and last seen, times seen and when it resolved

An existing row was one evaluation's snapshot: it reads as seen once (last_seen_at = created_at,
times_seen = 1). Per key (detector, segment, window, draft_version) the newest row stays open, so a
condition that still holds goes on in it; the older ones are closed at their own time. The partial
unique index keeps one open row per key, and is what the store's upsert lands on.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

OPEN = "resolved_at IS NULL"
KEY = ["detector", "segment", "window", "draft_version"]


def upgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        batch.add_column(sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("times_seen", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE findings SET last_seen_at = created_at")
    newest = 'SELECT max(id) FROM findings GROUP BY detector, segment, "window", draft_version'
    op.execute(f"UPDATE findings SET resolved_at = created_at WHERE id NOT IN ({newest})")
    with op.batch_alter_table("findings") as batch:
        batch.alter_column("last_seen_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    op.create_index("ix_findings_last_seen_at", "findings", ["last_seen_at"])
    op.create_index(
        "uq_findings_open",
        "findings",
        KEY,
        unique=True,
        sqlite_where=sa.text(OPEN),
        postgresql_where=sa.text(OPEN),
    )


def downgrade() -> None:
    op.drop_index("uq_findings_open", table_name="findings")
    op.drop_index("ix_findings_last_seen_at", table_name="findings")
    with op.batch_alter_table("findings") as batch:
        batch.drop_column("resolved_at")
        batch.drop_column("times_seen")
        batch.drop_column("last_seen_at")
