"""retention: what the daily clean-up of finished tasks needs (notices sent before removal).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 09:00:00
"""
from alembic import op  # noqa: F401

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
