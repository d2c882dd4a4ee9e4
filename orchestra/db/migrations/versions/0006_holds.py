"""holds: `queue_holds`, the queues in which the scheduler starts nothing for now (a launch failed
for a reason that is not the job's: storage full or gone, fork refused), with the reason, since
when, and when the next probe launch is due. Written by the scheduler, read by every user.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 05:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_holds",
        sa.Column("cluster", sa.String(length=64), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("retry_at", sa.Float(), nullable=False),
        sa.Column("backoff", sa.Float(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("cluster", "queue", name=op.f("pk_queue_holds")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("GRANT SELECT ON queue_holds TO orchestra_users")
        op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON queue_holds TO orchestra_scheduler")


def downgrade() -> None:
    op.drop_table("queue_holds")
