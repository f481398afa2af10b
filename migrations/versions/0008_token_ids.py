"""samples: the engine's token ids; replay results: where their tokens came from

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("prompt_token_ids", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("completion_token_ids", sa.JSON(), nullable=True))
    with op.batch_alter_table("replay_results") as batch:
        batch.add_column(sa.Column("token_source", sa.String(16), nullable=True))
        batch.add_column(sa.Column("retokenized_equal", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replay_results") as batch:
        batch.drop_column("retokenized_equal")
        batch.drop_column("token_source")
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("completion_token_ids")
        batch.drop_column("prompt_token_ids")
