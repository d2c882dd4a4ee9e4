"""job actions: what a user may do to one job (kill, retry) through SECURITY DEFINER functions on
PostgreSQL, like the task-level ones of 0003/0005.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 08:00:00
"""
from alembic import op  # noqa: F401

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
