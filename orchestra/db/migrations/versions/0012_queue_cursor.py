"""queue cursor: a task's queue is read from a cursor and two partial indexes, not from an index
entry of every job that moves at each of its status changes (issue 18, orchestra/db/job_lookup.py).

- `tasks.queue_from` (0 for every task: a valid cursor, the first dispatch of each task reads it
  from its first job): no queued job that never ran has an index below it.
- `ix_jobs_task_status (task_id, status, id)` dropped; `ix_jobs_settled (task_id, status)` over
  held and ended jobs and `ix_jobs_retried (task_id, index)` over queued jobs that ran before
  created, both partial.
- PostgreSQL: `orchestra_task_retry` and `orchestra_job_retry` also move the cursor down to a
  re-queued job that never ran (killed before it started). Their checks are exactly those of 0005
  and 0007. SQLite: the same writes are Python (orchestra/security/privileged*.py).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 12:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

NOW = "extract(epoch from clock_timestamp())::double precision"
SETTLED_WHERE = "status IN ('held', 'succeeded', 'failed', 'killed')"
RETRIED_WHERE = "status = 'queued' AND attempts > 0"

# 0005's body, with the re-queued jobs' lowest fresh index taken to the task's cursor.
TASK_RETRY = f"""
CREATE OR REPLACE FUNCTION orchestra_task_retry(p_task bigint, p_by text) RETURNS integer LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {{s}}, pg_temp AS $$
DECLARE v_task tasks; v_now double precision := {NOW}; v_n integer; v_low integer; v_status text;
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
    WITH q AS (UPDATE jobs SET status = 'queued', failures = 0, reason = NULL, exit_code = NULL, queued_at = v_now
      WHERE task_id = p_task AND is_scout AND status IN ('failed', 'killed') RETURNING "index", attempts)
    SELECT count(*), min("index") FILTER (WHERE attempts = 0) INTO v_n, v_low FROM q;
    UPDATE jobs SET status = 'held', failures = 0, reason = NULL, exit_code = NULL, queued_at = v_now
      WHERE task_id = p_task AND NOT is_scout AND status IN ('failed', 'killed');
    v_status := 'scouting';
  ELSE
    WITH q AS (UPDATE jobs SET status = 'queued', failures = 0, reason = NULL, exit_code = NULL, queued_at = v_now
      WHERE task_id = p_task AND status IN ('failed', 'killed') RETURNING "index", attempts)
    SELECT count(*), min("index") FILTER (WHERE attempts = 0) INTO v_n, v_low FROM q;
    v_status := 'running';
  END IF;
  UPDATE tasks SET n_queued = n_queued + v_n, status = v_status, reason = NULL, finished_at = NULL,
    queue_from = LEAST(queue_from, COALESCE(v_low, queue_from)), updated_at = v_now WHERE id = p_task;
  RETURN v_n;
END $$;
"""

# 0007's body, with a re-queued job that never ran taken to the task's cursor.
JOB_RETRY = f"""
CREATE OR REPLACE FUNCTION orchestra_job_retry(p_job bigint, p_by text) RETURNS text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {{s}}, pg_temp AS $$
DECLARE v_job jobs; v_task tasks; v_now double precision := {NOW}; v_status text; v_job_status text;
BEGIN
  SELECT * INTO v_job FROM jobs WHERE id = p_job FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'orchestra: job % does not exist', p_job USING ERRCODE = 'P0002';
  END IF;
  v_task := orchestra_owned_task(v_job.task_id, p_by);
  IF v_task.request IS NOT NULL THEN
    RAISE EXCEPTION 'orchestra: task % cannot be retried now', v_task.name USING ERRCODE = '55000';
  END IF;
  IF v_job.status NOT IN ('failed', 'killed') THEN
    RAISE EXCEPTION 'orchestra: job % is %; only a failed or killed job can be retried', p_job, v_job.status
      USING ERRCODE = '55000';
  END IF;
  IF v_task.status IN ('scouting', 'running') THEN
    v_status := v_task.status;
  ELSIF v_task.status IN ('partial', 'broken', 'killed') THEN
    -- states.retry_status (the task has jobs): scouting again if it was never released
    v_status := CASE WHEN v_task.released_at IS NULL AND NOT v_task.bypass AND v_task.n_scouts > 0
                     THEN 'scouting' ELSE 'running' END;
  ELSE
    RAISE EXCEPTION 'orchestra: task % is %; its jobs cannot be retried', v_task.name, v_task.status
      USING ERRCODE = '55000';
  END IF;
  v_job_status := CASE WHEN v_status = 'scouting' AND NOT v_job.is_scout THEN 'held' ELSE 'queued' END;
  UPDATE jobs SET status = v_job_status, failures = 0, reason = NULL, exit_code = NULL, queued_at = v_now,
    started_at = NULL, ended_at = NULL WHERE id = p_job;
  UPDATE tasks SET n_queued = n_queued + CASE WHEN v_job_status = 'queued' THEN 1 ELSE 0 END,
    queue_from = CASE WHEN v_job_status = 'queued' AND v_job.attempts = 0
                      THEN LEAST(queue_from, v_job."index") ELSE queue_from END,
    status = v_status,
    reason = CASE WHEN v_status = v_task.status THEN reason ELSE NULL END,
    finished_at = CASE WHEN v_status = v_task.status THEN finished_at ELSE NULL END,
    updated_at = v_now WHERE id = v_task.id;
  RETURN v_job_status;
END $$;
"""


def _postgresql_schema() -> str | None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return None
    return bind.execute(sa.text("SELECT current_schema()")).scalar()


def upgrade() -> None:
    # Plain ALTER TABLE and CREATE/DROP INDEX, which SQLite has: a batch operation would copy the
    # table, and dropping the old one cascades to the attempts (foreign keys are on).
    op.add_column("tasks", sa.Column("queue_from", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.drop_index("ix_jobs_task_status", table_name="jobs")
    op.create_index("ix_jobs_settled", "jobs", ["task_id", "status"], unique=False,
                    sqlite_where=sa.text(SETTLED_WHERE), postgresql_where=sa.text(SETTLED_WHERE))
    op.create_index("ix_jobs_retried", "jobs", ["task_id", "index"], unique=False,
                    sqlite_where=sa.text(RETRIED_WHERE), postgresql_where=sa.text(RETRIED_WHERE))
    schema = _postgresql_schema()
    if schema is not None:
        op.execute(TASK_RETRY.format(s=schema))
        op.execute(JOB_RETRY.format(s=schema))


def _sibling(name: str):  # type: ignore[no-untyped-def]
    """Another migration's module (their file names start with digits: no import statement)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"_orchestra_migration_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    schema = _postgresql_schema()
    if schema is not None:  # the bodies of 0005 and 0007 (CREATE OR REPLACE keeps owner and grants)
        op.execute(_sibling("0005_transitions").RETRY.format(s=schema))
        job_functions = _sibling("0007_job_actions").JOB_FUNCTIONS
        retry = job_functions[job_functions.index("CREATE FUNCTION orchestra_job_retry"):]
        op.execute(retry.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1).format(s=schema))
    op.drop_index("ix_jobs_retried", table_name="jobs")
    op.drop_index("ix_jobs_settled", table_name="jobs")
    op.create_index("ix_jobs_task_status", "jobs", ["task_id", "status", "id"], unique=False)
    op.execute("ALTER TABLE tasks DROP COLUMN queue_from")  # SQLite 3.35+, without a copy of the table
