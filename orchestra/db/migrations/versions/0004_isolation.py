"""isolation: an installation id (attempt state on disk is kept under it) and `attempts.stopping`
(a stopped attempt stays live until its last process is gone)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 05:00:00
"""
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "installation",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installation")),
    )
    op.execute(sa.text("INSERT INTO installation (id) VALUES (:id)").bindparams(id=uuid.uuid4().hex[:12]))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("stopping", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("GRANT SELECT ON installation TO orchestra_users, orchestra_scheduler")


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("stopping")
    op.drop_table("installation")
