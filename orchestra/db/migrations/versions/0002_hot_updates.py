"""tasks and users leave room on each page for HOT updates (PostgreSQL)

Every cycle rewrites a counter on each task that dispatched or requeued jobs (n_queued) and the
usage of each user; none of the changed columns is indexed, so PostgreSQL can update in place
(HOT: no new index entries, a seventh of the WAL) -- if the row's page has room for the new
version. At the default fillfactor (100) pages are packed full and every update also writes all
four index entries of the row. Both tables have a row per task / user, so halving the density
costs next to nothing. SQLite has no such setting.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 13:30:00
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("tasks", "users")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
