"""retention: what the daily clean-up of finished tasks needs (notices sent before removal).

- `tasks.removal_notice_at`: when the owner was last told the task will be removed (epoch s; a
  notice older than the task's `finished_at` belongs to an earlier finish and counts for nothing);
- `ix_tasks_finished_at`: the clean-up reads the oldest finished tasks a batch at a time;
- the service remembers when its next run is due in the `change_counter` row `retention`.
On PostgreSQL the service (orchestra_scheduler) writes as it writes every task column; an admin's
`orchestra gc` removes tasks through the owner's checked function `orchestra_task_delete` and may
update this one column (a column privilege, and an UPDATE policy for orchestra_admins only).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 09:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

GRANTS = """
GRANT UPDATE (removal_notice_at) ON tasks TO orchestra_admins;
CREATE POLICY admins_note_removal ON tasks FOR UPDATE TO orchestra_admins USING (true) WITH CHECK (true);
"""


def upgrade() -> None:
    op.add_column("tasks", sa.Column("removal_notice_at", sa.Float(), nullable=True))
    op.create_index("ix_tasks_finished_at", "tasks", ["finished_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(GRANTS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP POLICY IF EXISTS admins_note_removal ON tasks")
        op.execute("REVOKE UPDATE (removal_notice_at) ON tasks FROM orchestra_admins")
    op.drop_index("ix_tasks_finished_at", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("removal_notice_at")
