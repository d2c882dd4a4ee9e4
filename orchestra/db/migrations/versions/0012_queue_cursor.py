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

SETTLED_WHERE = "status IN ('held', 'succeeded', 'failed', 'killed')"
RETRIED_WHERE = "status = 'queued' AND attempts > 0"


def _sibling(name: str):  # type: ignore[no-untyped-def]
    """Another migration's module (their file names start with digits: no import statement)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"_orchestra_migration_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _edited(body: str, *changes: tuple[str, str, int]) -> str:
    """An earlier migration's function body with each (old, new, count) replaced, each old text
    found exactly `count` times (the earlier bodies are history: they do not change)."""
    for old, new, count in changes:
        assert body.count(old) == count, (old, body.count(old))
        body = body.replace(old, new)
    return body


def _task_retry() -> str:
    """0005's `orchestra_task_retry`, the re-queued jobs' lowest fresh index taken to the cursor."""
    return _edited(
        _sibling("0005_transitions").RETRY,
        ("v_n integer; v_status text;", "v_n integer; v_low integer; v_status text;", 1),
        ("    UPDATE jobs SET status = 'queued'", "    WITH q AS (UPDATE jobs SET status = 'queued'", 2),
        ("status IN ('failed', 'killed');\n    GET DIAGNOSTICS v_n = ROW_COUNT;",
         "status IN ('failed', 'killed') RETURNING \"index\", attempts)\n"
         "    SELECT count(*), min(\"index\") FILTER (WHERE attempts = 0) INTO v_n, v_low FROM q;", 2),
        ("finished_at = NULL,\n    updated_at = v_now WHERE id = p_task;\n  RETURN v_n;",
         "finished_at = NULL,\n    queue_from = LEAST(queue_from, COALESCE(v_low, queue_from)), updated_at = v_now "
         "WHERE id = p_task;\n  RETURN v_n;", 1))


def _job_retry(created: bool) -> str:
    """0007's `orchestra_job_retry` (as created there, or, `created` False, with the re-queued job
    that never ran taken to the cursor); CREATE OR REPLACE keeps its owner and grants."""
    functions = _sibling("0007_job_actions").JOB_FUNCTIONS
    body = functions[functions.index("CREATE FUNCTION orchestra_job_retry"):].replace(
        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    if created:
        return body
    return _edited(body, ("THEN 1 ELSE 0 END,\n", "THEN 1 ELSE 0 END,\n"
                          "    queue_from = CASE WHEN v_job_status = 'queued' AND v_job.attempts = 0\n"
                          "                      THEN LEAST(queue_from, v_job.\"index\") ELSE queue_from END,\n", 1))


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
        op.execute(_task_retry().format(s=schema))
        op.execute(_job_retry(created=False).format(s=schema))


def downgrade() -> None:
    schema = _postgresql_schema()
    if schema is not None:  # the bodies of 0005 and 0007 (CREATE OR REPLACE keeps owner and grants)
        op.execute(_sibling("0005_transitions").RETRY.format(s=schema))
        op.execute(_job_retry(created=True).format(s=schema))
    op.drop_index("ix_jobs_retried", table_name="jobs")
    op.drop_index("ix_jobs_settled", table_name="jobs")
    op.create_index("ix_jobs_task_status", "jobs", ["task_id", "status", "id"], unique=False)
    op.execute("ALTER TABLE tasks DROP COLUMN queue_from")  # SQLite 3.35+, without a copy of the table
