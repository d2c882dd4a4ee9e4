"""task edit and dependencies: a task's recorded history of edits, and tasks that start after
others (`task create --after`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 08:00:00
"""
from alembic import op  # noqa: F401

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
