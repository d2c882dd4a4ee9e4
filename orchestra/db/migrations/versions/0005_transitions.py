"""transitions: a retry of a task that never got its jobs (killed or broken before its expansion)
puts it back to `registered`, so the scheduler expands it again (was: `scouting` with no job,
forever; with --bypass, refused). PostgreSQL: `orchestra_task_retry` replaced, its security
checks exactly as in 0003 (the owned-task check, the refusals); SQLite: nothing (the same write
is Python, orchestra/security/privileged.py). Mirrors `orchestra.states.retry_status`.

Also (PostgreSQL): users may bump only the CLI's wake-up counter (`change_counter` row `cli`), not
the scheduler's heartbeat rows beside it, which `orchestra status` and the liveness warnings read.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 06:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

NOW = "extract(epoch from clock_timestamp())::double precision"

# CREATE OR REPLACE keeps the function's owner and its grants (0003: orchestra_users, orchestra_scheduler).
RETRY = f"""
CREATE OR REPLACE FUNCTION orchestra_task_retry(p_task bigint, p_by text) RETURNS integer LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {{s}}, pg_temp AS $$
DECLARE v_task tasks; v_now double precision := {NOW}; v_n integer; v_status text;
BEGIN
  v_task := orchestra_owned_task(p_task, p_by);
  IF v_task.request IS NOT NULL OR v_task.status = 'registered' THEN
    RAISE EXCEPTION 'orchestra: task % cannot be retried now', v_task.name USING ERRCODE = '55000';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM jobs WHERE task_id = p_task) THEN
    -- never expanded (killed or broken before it): the scheduler expands it again
    UPDATE tasks SET n_queued = 0, status = 'registered', reason = NULL, released_at = NULL, finished_at = NULL,
      updated_at = v_now WHERE id = p_task;
    RETURN 0;
  END IF;
  IF v_task.released_at IS NULL AND NOT v_task.bypass AND v_task.n_scouts > 0 THEN
    UPDATE jobs SET status = 'queued', failures = 0, reason = NULL, exit_code = NULL, queued_at = v_now
      WHERE task_id = p_task AND is_scout AND status IN ('failed', 'killed');
    GET DIAGNOSTICS v_n = ROW_COUNT;
    UPDATE jobs SET status = 'held', failures = 0, reason = NULL, exit_code = NULL, queued_at = v_now
      WHERE task_id = p_task AND NOT is_scout AND status IN ('failed', 'killed');
    v_status := 'scouting';
  ELSE
    UPDATE jobs SET status = 'queued', failures = 0, reason = NULL, exit_code = NULL, queued_at = v_now
      WHERE task_id = p_task AND status IN ('failed', 'killed');
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_status := 'running';
  END IF;
  UPDATE tasks SET n_queued = n_queued + v_n, status = v_status, reason = NULL, finished_at = NULL,
    updated_at = v_now WHERE id = p_task;
  RETURN v_n;
END $$;
"""

# The body of migration 0003, restored by the downgrade.
RETRY_0003 = f"""
CREATE OR REPLACE FUNCTION orchestra_task_retry(p_task bigint, p_by text) RETURNS integer LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {{s}}, pg_temp AS $$
DECLARE v_task tasks; v_now double precision := {NOW}; v_n integer; v_status text;
BEGIN
  v_task := orchestra_owned_task(p_task, p_by);
  IF v_task.request IS NOT NULL OR v_task.status = 'registered' THEN
    RAISE EXCEPTION 'orchestra: task % cannot be retried now', v_task.name USING ERRCODE = '55000';
  END IF;
  IF v_task.released_at IS NULL AND NOT v_task.bypass AND v_task.n_scouts > 0 THEN
    UPDATE jobs SET status = 'queued', failures = 0, reason = NULL, exit_code = NULL, queued_at = v_now
      WHERE task_id = p_task AND is_scout AND status IN ('failed', 'killed');
    GET DIAGNOSTICS v_n = ROW_COUNT;
    UPDATE jobs SET status = 'held', failures = 0, reason = NULL, exit_code = NULL, queued_at = v_now
      WHERE task_id = p_task AND NOT is_scout AND status IN ('failed', 'killed');
    v_status := 'scouting';
  ELSE
    UPDATE jobs SET status = 'queued', failures = 0, reason = NULL, exit_code = NULL, queued_at = v_now
      WHERE task_id = p_task AND status IN ('failed', 'killed');
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_status := 'running';
  END IF;
  UPDATE tasks SET n_queued = n_queued + v_n, status = v_status, reason = NULL, finished_at = NULL,
    updated_at = v_now WHERE id = p_task;
  RETURN v_n;
END $$;
"""


def _replace(body: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar()
    op.execute(body.format(s=schema))


COUNTER_POLICIES = """
ALTER TABLE change_counter ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone_reads ON change_counter FOR SELECT USING (true);
CREATE POLICY users_wake_up ON change_counter FOR UPDATE TO orchestra_users
  USING (name = 'cli') WITH CHECK (name = 'cli');
CREATE POLICY scheduler_all ON change_counter TO orchestra_scheduler USING (true) WITH CHECK (true);
"""


def upgrade() -> None:
    _replace(RETRY)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(COUNTER_POLICIES)


def downgrade() -> None:
    _replace(RETRY_0003)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE change_counter DISABLE ROW LEVEL SECURITY")
        for policy in ("everyone_reads", "users_wake_up", "scheduler_all"):
            op.execute(f"DROP POLICY IF EXISTS {policy} ON change_counter")
