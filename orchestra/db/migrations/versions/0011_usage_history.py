"""usage history: a compact per-cycle, per-user record for the web dashboard's charts, and the
read-only group role the dashboard connects through.

- `usage_history`: at each full cycle the scheduler writes one row per user with something running,
  queued or started since the record before, and one row of totals (`user_id` NULL); the daily
  retention run removes them after two days (orchestra/services/history.py).
- `usage_rollup`: the same summed per user over buckets of 5 minutes, 15 minutes, 2 hours and 6
  hours, updated by the recorder at each record (an upsert per row), so the dashboard's charts read
  one row per bucket and active user; each width is kept as long as a chart reads it, the coarsest
  `[retention] keep_history_days`.
On PostgreSQL:
- `orchestra_scheduler` inserts and deletes history rows (and updates rollups); `orchestra_users` read them (as they read
  the queue: no row-level security, like `queue_holds`);
- `orchestra_readers` (NOLOGIN group, created if missing, dropped on downgrade only if this
  migration created it): USAGE on the schema and SELECT on exactly the tables `orchestra_users` may
  SELECT, plus `usage_history` and `usage_rollup`; no write privilege and no EXECUTE on the owner's functions. The
  dashboard's login role is a member: `CREATE ROLE orchestra_web LOGIN ...; GRANT orchestra_readers
  TO orchestra_web`. Row-level security still applies to it: policies written `TO orchestra_users`
  (a user's own audit entries, their own outbox) give it no rows there. A later migration that adds
  a table users may read grants SELECT on it to orchestra_readers too.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 10:15:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

READERS = "orchestra_readers"
# A comment on the role says which database's migration created it: the downgrade of that database
# drops it, another database's downgrade (roles are global to the server) leaves it.
MARK = "created by orchestra migration 0011 in database "

CREATE_READERS = f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READERS}') THEN
    CREATE ROLE {READERS} NOLOGIN;
    EXECUTE format('COMMENT ON ROLE {READERS} IS %L', '{MARK}' || current_database());
  END IF;
END $$;
"""

# The tables orchestra_users may read (table-level SELECT, in this schema), asked of the catalog
# rather than listed here, so the two groups cannot drift apart at this revision.
USER_READABLE = """
SELECT table_name FROM information_schema.role_table_grants
WHERE grantee = 'orchestra_users' AND privilege_type = 'SELECT' AND table_schema = current_schema()
ORDER BY table_name
"""


def upgrade() -> None:
    op.create_table(
        "usage_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("running", sa.Float(), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.Column("started", sa.Integer(), nullable=False),
        sa.Column("wait_seconds_sum", sa.Float(), nullable=False),
        sa.Column("max_wait_seconds", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_usage_history_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_history")),
    )
    op.create_index("ix_usage_history_at", "usage_history", ["at"])
    op.create_table(
        "usage_rollup",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("level_seconds", sa.Integer(), nullable=False),
        sa.Column("bucket_at", sa.Float(), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("running_sum", sa.Float(), nullable=False),
        sa.Column("running_max", sa.Float(), nullable=False),
        sa.Column("queued_max", sa.Integer(), nullable=False),
        sa.Column("started", sa.Integer(), nullable=False),
        sa.Column("wait_sum", sa.Float(), nullable=False),
        sa.Column("wait_max", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_usage_rollup_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_rollup")),
    )
    op.create_index("ix_usage_rollup_level_bucket_user", "usage_rollup", ["level_seconds", "bucket_at", "user_id"],
                    unique=True)
    op.create_index("ix_usage_rollup_totals", "usage_rollup", ["level_seconds", "bucket_at"], unique=True,
                    sqlite_where=sa.text("user_id IS NULL"), postgresql_where=sa.text("user_id IS NULL"))
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar()
    op.execute("GRANT SELECT ON usage_history TO orchestra_users")
    op.execute("GRANT SELECT, INSERT, DELETE ON usage_history TO orchestra_scheduler")
    op.execute("GRANT USAGE, SELECT ON SEQUENCE usage_history_id_seq TO orchestra_scheduler")
    op.execute("GRANT SELECT ON usage_rollup TO orchestra_users")
    op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON usage_rollup TO orchestra_scheduler")
    op.execute("GRANT USAGE, SELECT ON SEQUENCE usage_rollup_id_seq TO orchestra_scheduler")
    op.execute("SELECT pg_advisory_xact_lock(727274)")  # roles are global: one creator at a time
    op.execute(CREATE_READERS)
    op.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {READERS}')
    for table in bind.execute(sa.text(USER_READABLE)).scalars():
        op.execute(f'GRANT SELECT ON "{table}" TO {READERS}')
    # Users' e-mail addresses (and whether they want mail) are nobody's business on a dashboard:
    # the readers get every other column of `users`.
    op.execute(f'REVOKE SELECT ON "users" FROM {READERS}')
    columns = bind.execute(sa.text(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = 'users' AND column_name NOT IN ('email', 'notify') ORDER BY ordinal_position")).scalars()
    op.execute(f'GRANT SELECT ({", ".join(chr(34) + c + chr(34) for c in columns)}) ON "users" TO {READERS}')


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        schema = bind.execute(sa.text("SELECT current_schema()")).scalar()
        op.execute("SELECT pg_advisory_xact_lock(727274)")
        exists = bind.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": READERS}).scalar()
        if exists:
            op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA \"{schema}\" FROM {READERS}")
            op.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM {READERS}')
            mine = bind.execute(sa.text(
                "SELECT shobj_description(oid, 'pg_authid') = :mark FROM pg_roles WHERE rolname = :r"),
                {"mark": MARK + str(bind.execute(sa.text("SELECT current_database()")).scalar()),
                 "r": READERS}).scalar()
            if mine:
                op.execute(f"DROP ROLE {READERS}")
    op.drop_index("ix_usage_rollup_totals", table_name="usage_rollup")
    op.drop_index("ix_usage_rollup_level_bucket_user", table_name="usage_rollup")
    op.drop_table("usage_rollup")
    op.drop_index("ix_usage_history_at", table_name="usage_history")
    op.drop_table("usage_history")
