"""usage history: a compact per-cycle, per-user record for the web dashboard's charts (placeholder).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 10:15:00
"""

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
