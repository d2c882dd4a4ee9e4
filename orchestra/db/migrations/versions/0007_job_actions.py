"""job actions: what a user may do to one job (kill, retry) through SECURITY DEFINER functions on
PostgreSQL, like the task-level ones of 0003/0005.

A user's role may not write jobs or attempts (0003), so `maestro job kill|retry` call these
functions, owned by the schema's owner. Each locks the job row first, then its task (through
`orchestra_owned_task`, which checks that `session_user` owns the task, or is an admin, and acts
as itself): the scheduler also writes a job before its task, so the two never wait on each other in
opposite orders. The same writes run in Python on SQLite (orchestra/security/privileged_jobs.py);
the service (orchestra/services/job_actions.py) gives the user's one-line refusals before either.

- `orchestra_job_kill(job, by)`: a held or queued job ends `killed` now (`killed`); a starting or
  running one gets its live attempt marked `stopping`, which the scheduler's next pass signals and,
  once the process is gone, records as killed (`stopping`), exactly as for a timeout.
- `orchestra_job_retry(job, by)`: a failed or killed job is queued again with a fresh retry budget
  (held while its task is scouting and it is not a scout); a task that had ended resumes where
  `states.retry_status` says (scouting if never released, else running). Returns the job's status.
SQLite: nothing (no roles).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

NOW = "extract(epoch from clock_timestamp())::double precision"
FUNCTIONS = ("orchestra_job_kill(bigint, text)", "orchestra_job_retry(bigint, text)")

JOB_FUNCTIONS = f"""
CREATE FUNCTION orchestra_job_kill(p_job bigint, p_by text) RETURNS text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {{s}}, pg_temp AS $$
DECLARE v_job jobs; v_task tasks; v_now double precision := {NOW}; v_n integer;
BEGIN
  SELECT * INTO v_job FROM jobs WHERE id = p_job FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'orchestra: job % does not exist', p_job USING ERRCODE = 'P0002';
  END IF;
  v_task := orchestra_owned_task(v_job.task_id, p_by);
  IF v_task.request IS NOT NULL THEN
    RAISE EXCEPTION 'orchestra: task % is being stopped (%)', v_task.name, v_task.request USING ERRCODE = '55000';
  END IF;
  IF v_job.status IN ('held', 'queued') THEN
    UPDATE jobs SET status = 'killed', reason = 'killed by ' || p_by, ended_at = v_now WHERE id = p_job;
    IF v_job.status = 'queued' THEN
      UPDATE tasks SET n_queued = n_queued - 1, updated_at = v_now WHERE id = v_task.id;
    END IF;
    RETURN 'killed';
  END IF;
  IF v_job.status IN ('starting', 'running') THEN
    UPDATE attempts SET stopping = 'killed by ' || p_by
      WHERE job_id = p_job AND status IN ('starting', 'running') AND stopping IS NULL;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n = 0 THEN
      RAISE EXCEPTION 'orchestra: job % is already being stopped', p_job USING ERRCODE = '55000';
    END IF;
    RETURN 'stopping';
  END IF;
  RAISE EXCEPTION 'orchestra: job % is already %; nothing to kill', p_job, v_job.status USING ERRCODE = '55000';
END $$;

CREATE FUNCTION orchestra_job_retry(p_job bigint, p_by text) RETURNS text LANGUAGE plpgsql SECURITY DEFINER
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
    status = v_status,
    reason = CASE WHEN v_status = v_task.status THEN reason ELSE NULL END,
    finished_at = CASE WHEN v_status = v_task.status THEN finished_at ELSE NULL END,
    updated_at = v_now WHERE id = v_task.id;
  RETURN v_job_status;
END $$;
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar()
    op.execute(JOB_FUNCTIONS.format(s=schema))
    for function in FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO orchestra_users")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
