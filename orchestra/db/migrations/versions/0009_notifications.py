"""notifications: users' e-mail addresses and opt-out, and the outbox of mails the service sends
after its cycles (never inside one).

- `users.email` (NULL: no mail) and `users.notify` (default true: `maestro user notify off`);
- `outbox`: one row per task event (completed, partial, broken, killed), written by the scheduler
  in the transaction that records the event, sent by the service's postman thread, retried with
  back-off and dropped after a day (orchestra/notify/).
On PostgreSQL:
- a user may read their own outbox rows only (row-level security) and write none: only
  `orchestra_scheduler` writes the outbox;
- nobody but the owner's function writes `users.email` / `users.notify`:
  `orchestra_set_contact(name, email, notify)` (SECURITY DEFINER) checks that `session_user` is
  `name` or an admin, and that the address looks like one (no header injection through it).
  NULL arguments leave a column as it is; an empty email clears it.
SQLite: the same columns and table; the check runs in Python (orchestra/notify/contact.py).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 09:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The same rule as orchestra/notify/contact.py EMAIL: one address, no spaces, commas or angle brackets.
EMAIL_RE = r"^[A-Za-z0-9.!#$%&''*+/=?^_`{|}~-]+@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$"
FUNCTION = "orchestra_set_contact(text, text, boolean)"

CONTACT = """
CREATE FUNCTION orchestra_set_contact(p_name text, p_email text, p_notify boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = __SCHEMA__, pg_temp AS $$
DECLARE v_id bigint;
BEGIN
  IF p_name IS DISTINCT FROM session_user AND NOT orchestra_is_admin() THEN
    RAISE EXCEPTION 'orchestra: % may not change the e-mail settings of %', session_user, p_name
      USING ERRCODE = '42501';
  END IF;
  IF p_email IS NOT NULL AND p_email <> '' AND (length(p_email) > 254 OR p_email !~ '__EMAIL_RE__') THEN
    RAISE EXCEPTION 'orchestra: % is not an e-mail address', p_email USING ERRCODE = '22023';
  END IF;
  v_id := orchestra_ensure_user(p_name);
  UPDATE users SET email = CASE WHEN p_email IS NULL THEN email WHEN p_email = '' THEN NULL ELSE p_email END,
    notify = COALESCE(p_notify, notify) WHERE id = v_id;
END $$;
"""

POLICIES = """
ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_mail ON outbox FOR SELECT TO orchestra_users
  USING (user_id = (SELECT orchestra_uid()) OR (SELECT orchestra_is_admin()));
CREATE POLICY scheduler_all ON outbox TO orchestra_scheduler USING (true) WITH CHECK (true);
"""


def upgrade() -> None:
    op.add_column("users", sa.Column("email", sa.String(length=254), nullable=True))
    op.add_column("users", sa.Column("notify", sa.Boolean(), server_default=sa.true(), nullable=False))
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try_at", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_outbox_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index("ix_outbox_due", "outbox", ["sent_at", "next_try_at"])
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar()
    op.execute("GRANT SELECT ON outbox TO orchestra_users")
    op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO orchestra_scheduler")
    op.execute("GRANT USAGE, SELECT ON SEQUENCE outbox_id_seq TO orchestra_scheduler")
    op.execute(POLICIES)
    op.execute(CONTACT.replace("__SCHEMA__", str(schema)).replace("__EMAIL_RE__", EMAIL_RE))
    op.execute(f"REVOKE ALL ON FUNCTION {FUNCTION} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO orchestra_users")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}")
    op.drop_index("ix_outbox_due", table_name="outbox")
    op.drop_table("outbox")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("notify")
        batch.drop_column("email")
