"""task edit and dependencies: a task's recorded history of edits (`task_events`), tasks that start
after others (`task_dependencies`, `task create --after`), and datasets that are a task's outputs
(`datasets.source_task_id`, `orchestra_registry --from-task`).

PostgreSQL: users read both tables; they insert dependencies only between tasks they own (row-level
security); a task's editable columns change only through `orchestra_task_edit`, a SECURITY DEFINER
function that checks the caller owns the task (or is an admin) and that it is not live, re-expands
the commands of its unfinished jobs, and records the change with `actor` = session_user. Its twin
for SQLite is orchestra/security/privileged_edit.py.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

NOW = "extract(epoch from clock_timestamp())::double precision"
EDIT_SIGNATURE = "orchestra_task_edit(bigint, text, jsonb, bigint[], text[])"

EDIT = f"""
CREATE FUNCTION orchestra_task_edit(p_task bigint, p_by text, p_changes jsonb, p_jobs bigint[], p_commands text[])
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = {{s}}, pg_temp AS $$
DECLARE v_task tasks; v_now double precision := {NOW}; v_old jsonb; v_details jsonb := '{{{{}}}}'::jsonb;
  v_key text; v_n integer := 0;
BEGIN
  v_task := orchestra_owned_task(p_task, p_by);
  IF v_task.request IS NOT NULL OR v_task.status NOT IN ('registered', 'broken', 'partial', 'killed')
     OR EXISTS (SELECT 1 FROM jobs WHERE task_id = p_task AND status IN ('starting', 'running')) THEN
    RAISE EXCEPTION 'orchestra: task % cannot be edited while it is % or has running jobs', v_task.name, v_task.status
      USING ERRCODE = '55000';
  END IF;
  IF EXISTS (SELECT 1 FROM jsonb_object_keys(p_changes) AS k(name)
             WHERE k.name NOT IN ('command', 'image', 'queue', 'priority', 'max_retries', 'max_time')) THEN
    RAISE EXCEPTION 'orchestra: only command, image, queue, priority, max_retries and max_time can be edited'
      USING ERRCODE = '22023';
  END IF;
  v_old := jsonb_build_object('command', v_task.command, 'image', v_task.image, 'queue', v_task.queue,
    'priority', v_task.priority, 'max_retries', v_task.max_retries, 'max_time', v_task.max_time);
  FOR v_key IN SELECT jsonb_object_keys(p_changes) LOOP
    IF (v_old -> v_key) IS DISTINCT FROM (p_changes -> v_key) THEN
      v_details := v_details || jsonb_build_object(v_key,
        jsonb_build_object('from', v_old -> v_key, 'to', p_changes -> v_key));
    END IF;
  END LOOP;
  IF v_details = '{{{{}}}}'::jsonb THEN
    RAISE EXCEPTION 'orchestra: nothing to change in task %', v_task.name USING ERRCODE = '22023';
  END IF;
  UPDATE tasks SET
    command = COALESCE(p_changes ->> 'command', command),
    image = COALESCE(p_changes ->> 'image', image),
    queue = COALESCE(p_changes ->> 'queue', queue),
    priority = CASE WHEN p_changes ? 'priority' THEN (p_changes ->> 'priority')::integer ELSE priority END,
    max_retries = CASE WHEN p_changes ? 'max_retries' THEN (p_changes ->> 'max_retries')::integer ELSE max_retries END,
    max_time = CASE WHEN p_changes ? 'max_time' THEN (p_changes ->> 'max_time')::double precision ELSE max_time END,
    updated_at = v_now
  WHERE id = p_task;
  IF p_jobs IS NOT NULL AND cardinality(p_jobs) > 0 THEN
    UPDATE jobs AS j SET command = u.c FROM unnest(p_jobs, p_commands) AS u(id, c)
      WHERE j.id = u.id AND j.task_id = p_task AND j.status <> 'succeeded';
    GET DIAGNOSTICS v_n = ROW_COUNT;
  END IF;
  INSERT INTO task_events (task_id, at, actor, what, details) VALUES (p_task, v_now, session_user, 'edit', v_details);
  RETURN v_n;
END $$;
"""

GRANTS = """
GRANT SELECT ON task_events, task_dependencies TO orchestra_users;
GRANT INSERT (task_id, depends_on_id, kind) ON task_dependencies TO orchestra_users;
GRANT INSERT (source_task_id) ON datasets TO orchestra_users;
GRANT SELECT, INSERT, UPDATE, DELETE ON task_events, task_dependencies TO orchestra_scheduler;
GRANT USAGE, SELECT ON SEQUENCE task_events_id_seq TO orchestra_scheduler;
ALTER TABLE task_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone_reads ON task_events FOR SELECT USING (true);
CREATE POLICY scheduler_all ON task_events TO orchestra_scheduler USING (true) WITH CHECK (true);
ALTER TABLE task_dependencies ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone_reads ON task_dependencies FOR SELECT USING (true);
CREATE POLICY owner_inserts ON task_dependencies FOR INSERT TO orchestra_users
  WITH CHECK ((SELECT orchestra_is_admin()) OR (
    EXISTS (SELECT 1 FROM tasks t WHERE t.id = task_id AND t.owner_id = (SELECT orchestra_uid()))
    AND EXISTS (SELECT 1 FROM tasks d WHERE d.id = depends_on_id AND d.owner_id = (SELECT orchestra_uid()))));
CREATE POLICY scheduler_all ON task_dependencies TO orchestra_scheduler USING (true) WITH CHECK (true);
"""

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("datasets", sa.Column("source_task_id", ID, nullable=True))
    op.create_table(
        "task_events",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("task_id", ID, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("what", sa.String(length=32), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_task_events_task_id_tasks"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_events")),
    )
    op.create_index("ix_task_events_task_id", "task_events", ["task_id"])
    op.create_table(
        "task_dependencies",
        sa.Column("task_id", ID, nullable=False),
        sa.Column("depends_on_id", ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_task_dependencies_task_id_tasks"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["depends_on_id"], ["tasks.id"],
                                name=op.f("fk_task_dependencies_depends_on_id_tasks"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id", "depends_on_id", name=op.f("pk_task_dependencies")),
    )
    op.create_index("ix_task_dependencies_depends_on_id", "task_dependencies", ["depends_on_id"])
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar()
    op.execute(GRANTS)
    op.execute(EDIT.format(s=schema))
    op.execute(f"REVOKE ALL ON FUNCTION {EDIT_SIGNATURE} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {EDIT_SIGNATURE} TO orchestra_users, orchestra_scheduler")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {EDIT_SIGNATURE}")
        op.execute("REVOKE INSERT (source_task_id) ON datasets FROM orchestra_users")
    op.drop_index("ix_task_dependencies_depends_on_id", table_name="task_dependencies")
    op.drop_table("task_dependencies")
    op.drop_index("ix_task_events_task_id", table_name="task_events")
    op.drop_table("task_events")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("source_task_id")
