"""security: the audit log; on PostgreSQL the roles, privileges, row-level security and the
owner's checked functions that make the database the wall between users

The CLIs write to the database directly, so the database itself decides who may write what:
- group roles `orchestra_users`, `orchestra_admins` (members of users too) and
  `orchestra_scheduler`; login roles are made by `orchestra user add` (orchestra_add_user);
- users read everything `squeue` would show; they insert their own datasets, files and tasks
  (only the columns `task create` sets: never status, output_root, n_queued, times), and delete
  their own datasets; row-level security checks the owner against `session_user`;
- anything more privileged (kill, retry, delete of a task, a user's first row) goes through
  SECURITY DEFINER functions that check `session_user` before writing;
- only `orchestra_scheduler` may take the scheduler lease or change jobs, attempts, usage.
SQLite (the single-user mode) gets the audit table only.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 05:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

GROUPS = ("orchestra_users", "orchestra_admins", "orchestra_scheduler")
TABLES = ("users", "datasets", "dataset_files", "tasks", "jobs", "attempts", "scheduler_lease",
          "change_counter", "audit_log", "alembic_version")
RLS_TABLES = ("datasets", "dataset_files", "tasks", "audit_log")
FUNCTIONS = ("orchestra_is_admin()", "orchestra_uid()", "orchestra_owned_task(bigint, text)",
             "orchestra_ensure_user(text)", "orchestra_task_kill(bigint, text)",
             "orchestra_task_retry(bigint, text)", "orchestra_task_delete(bigint, boolean, text)",
             "orchestra_add_user(text, boolean, boolean, text)", "orchestra_remove_user(text)")
USER_FUNCTIONS = ("orchestra_is_admin()", "orchestra_uid()", "orchestra_ensure_user(text)",
                  "orchestra_task_kill(bigint, text)", "orchestra_task_retry(bigint, text)",
                  "orchestra_task_delete(bigint, boolean, text)")
ADMIN_FUNCTIONS = ("orchestra_add_user(text, boolean, boolean, text)", "orchestra_remove_user(text)")

NOW = "extract(epoch from clock_timestamp())::double precision"

ROLES = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'orchestra_users') THEN
    CREATE ROLE orchestra_users NOLOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'orchestra_admins') THEN
    CREATE ROLE orchestra_admins NOLOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'orchestra_scheduler') THEN
    CREATE ROLE orchestra_scheduler NOLOGIN; END IF;
  IF NOT pg_has_role('orchestra_admins', 'orchestra_users', 'MEMBER') THEN
    GRANT orchestra_users TO orchestra_admins; END IF;
END $$;
"""

GRANTS = """
REVOKE CREATE ON SCHEMA {s} FROM PUBLIC;
GRANT USAGE ON SCHEMA {s} TO orchestra_users, orchestra_scheduler;
GRANT SELECT ON users, datasets, dataset_files, tasks, jobs, attempts, scheduler_lease, change_counter,
  audit_log, alembic_version TO orchestra_users;
GRANT INSERT (name, owner_id, cluster, path, is_dir, n_files, total_size, created_at), DELETE
  ON datasets TO orchestra_users;
GRANT INSERT (dataset_id, position, path, size), DELETE ON dataset_files TO orchestra_users;
GRANT INSERT (name, owner_id, cluster, queue, image, command, config_dataset_id, data_dataset_id,
  priority, max_retries, max_time, bypass, n_jobs, n_scouts) ON tasks TO orchestra_users;
GRANT UPDATE (value) ON change_counter TO orchestra_users;
GRANT INSERT (at, actor, acted_for, action, target) ON audit_log TO orchestra_users;
GRANT UPDATE (share, max_running) ON users TO orchestra_admins;
GRANT SELECT, INSERT, UPDATE, DELETE ON users, datasets, dataset_files, tasks, jobs, attempts,
  scheduler_lease, change_counter, audit_log TO orchestra_scheduler;
GRANT SELECT ON alembic_version TO orchestra_scheduler;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO orchestra_scheduler;
"""

# Tasks created by users take these from the server, not from the client.
DEFAULTS = f"""
ALTER TABLE tasks ALTER COLUMN status SET DEFAULT 'registered';
ALTER TABLE tasks ALTER COLUMN n_queued SET DEFAULT 0;
ALTER TABLE tasks ALTER COLUMN output_root SET DEFAULT '';
ALTER TABLE tasks ALTER COLUMN created_at SET DEFAULT {NOW};
ALTER TABLE tasks ALTER COLUMN updated_at SET DEFAULT {NOW};
ALTER TABLE tasks ADD CONSTRAINT ck_tasks_priority_range CHECK (priority BETWEEN -100 AND 100);
ALTER TABLE tasks ADD CONSTRAINT ck_tasks_retries_range CHECK (max_retries BETWEEN 0 AND 100);
"""

HELPERS = """
CREATE FUNCTION orchestra_is_admin() RETURNS boolean LANGUAGE sql STABLE
SET search_path = {s}, pg_temp AS $$
  SELECT pg_has_role(session_user, 'orchestra_admins', 'MEMBER')
      OR session_user = (SELECT tableowner FROM pg_tables WHERE schemaname = '{s}' AND tablename = 'tasks')
$$;

CREATE FUNCTION orchestra_uid() RETURNS bigint LANGUAGE sql STABLE
SET search_path = {s}, pg_temp AS $$
  SELECT id FROM users WHERE name = session_user
$$;

-- The task, locked, if the caller may act on it as `p_by`; raises otherwise (never a silent no-op).
CREATE FUNCTION orchestra_owned_task(p_task bigint, p_by text) RETURNS tasks LANGUAGE plpgsql
SET search_path = {s}, pg_temp AS $$
DECLARE v_task tasks; v_owner text;
BEGIN
  SELECT * INTO v_task FROM tasks WHERE id = p_task FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'orchestra: task % does not exist', p_task USING ERRCODE = 'P0002';
  END IF;
  SELECT name INTO v_owner FROM users WHERE id = v_task.owner_id;
  IF NOT orchestra_is_admin() AND (v_owner IS DISTINCT FROM session_user OR p_by IS DISTINCT FROM session_user) THEN
    RAISE EXCEPTION 'orchestra: task % belongs to %, not to %', v_task.name, v_owner, session_user
      USING ERRCODE = '42501';
  END IF;
  RETURN v_task;
END $$;
"""

PRIVILEGED = f"""
CREATE FUNCTION orchestra_ensure_user(p_name text) RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {{s}}, pg_temp AS $$
DECLARE v_id bigint;
BEGIN
  IF p_name IS DISTINCT FROM session_user AND NOT orchestra_is_admin() THEN
    RAISE EXCEPTION 'orchestra: % may not create user %', session_user, p_name USING ERRCODE = '42501';
  END IF;
  INSERT INTO users (name, share, usage, usage_at, created_at)
    VALUES (p_name, 1.0, 0.0, {NOW}, {NOW}) ON CONFLICT (name) DO NOTHING;
  SELECT id INTO v_id FROM users WHERE name = p_name;
  RETURN v_id;
END $$;

CREATE FUNCTION orchestra_task_kill(p_task bigint, p_by text) RETURNS text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {{s}}, pg_temp AS $$
DECLARE v_task tasks; v_now double precision := {NOW}; v_request text;
BEGIN
  v_task := orchestra_owned_task(p_task, p_by);
  IF v_task.status IN ('completed', 'partial', 'broken', 'killed') THEN
    RAISE EXCEPTION 'orchestra: task % is already %', v_task.name, v_task.status USING ERRCODE = '55000';
  END IF;
  UPDATE jobs SET status = 'killed', reason = 'killed by user', ended_at = v_now
    WHERE task_id = p_task AND status IN ('held', 'queued');
  v_request := v_task.request;
  IF EXISTS (SELECT 1 FROM jobs WHERE task_id = p_task AND status IN ('starting', 'running')) THEN
    v_request := 'kill';
  END IF;
  UPDATE tasks SET n_queued = 0, request = v_request, status = 'killed', reason = 'killed by ' || p_by,
    updated_at = v_now, finished_at = v_now WHERE id = p_task;
  RETURN v_request;
END $$;

CREATE FUNCTION orchestra_task_retry(p_task bigint, p_by text) RETURNS integer LANGUAGE plpgsql SECURITY DEFINER
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

-- true: the task is gone; false: it has live jobs, and the scheduler finishes the deletion.
CREATE FUNCTION orchestra_task_delete(p_task bigint, p_purge boolean, p_by text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {{s}}, pg_temp AS $$
DECLARE v_task tasks; v_now double precision := {NOW};
BEGIN
  v_task := orchestra_owned_task(p_task, p_by);
  IF EXISTS (SELECT 1 FROM jobs WHERE task_id = p_task AND status IN ('starting', 'running')) THEN
    UPDATE jobs SET status = 'killed', reason = 'killed by user', ended_at = v_now
      WHERE task_id = p_task AND status IN ('held', 'queued');
    UPDATE tasks SET n_queued = 0, request = CASE WHEN p_purge THEN 'purge' ELSE 'delete' END,
      status = 'killed', reason = 'being deleted by ' || p_by, updated_at = v_now WHERE id = p_task;
    RETURN false;
  END IF;
  DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE task_id = p_task);
  DELETE FROM jobs WHERE task_id = p_task;
  DELETE FROM tasks WHERE id = p_task;
  RETURN true;
END $$;

CREATE FUNCTION orchestra_add_user(p_name text, p_admin boolean, p_scheduler boolean, p_password text)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = {{s}}, pg_temp AS $$
BEGIN
  IF NOT orchestra_is_admin() THEN
    RAISE EXCEPTION 'orchestra: only admins may add users; % is not in orchestra_admins', session_user
      USING ERRCODE = '42501';
  END IF;
  IF p_name !~ '^[a-z_][a-z0-9_-]{{{{0,62}}}}$' OR p_name ~ '^(pg_|orchestra_)' THEN
    RAISE EXCEPTION 'orchestra: % is not a valid user name', p_name USING ERRCODE = '22023';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_name) THEN
    EXECUTE format('CREATE ROLE %I LOGIN', p_name);
  ELSIF NOT pg_has_role(p_name, 'orchestra_users', 'MEMBER')
        OR (SELECT rolsuper OR rolcreaterole OR rolbypassrls FROM pg_roles WHERE rolname = p_name) THEN
    RAISE EXCEPTION 'orchestra: role % exists and is not an Orchestra user; choose another name', p_name
      USING ERRCODE = '42710';
  END IF;
  EXECUTE format('GRANT orchestra_users TO %I', p_name);
  IF p_admin THEN EXECUTE format('GRANT orchestra_admins TO %I', p_name);
  ELSE EXECUTE format('REVOKE orchestra_admins FROM %I', p_name); END IF;
  IF p_scheduler THEN EXECUTE format('GRANT orchestra_scheduler TO %I', p_name);
  ELSE EXECUTE format('REVOKE orchestra_scheduler FROM %I', p_name); END IF;
  IF p_password IS NOT NULL THEN EXECUTE format('ALTER ROLE %I PASSWORD %L', p_name, p_password); END IF;
  RETURN orchestra_ensure_user(p_name);
END $$;

CREATE FUNCTION orchestra_remove_user(p_name text) RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {{s}}, pg_temp AS $$
BEGIN
  IF NOT orchestra_is_admin() THEN
    RAISE EXCEPTION 'orchestra: only admins may remove users; % is not in orchestra_admins', session_user
      USING ERRCODE = '42501';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_name) THEN RETURN false; END IF;
  IF NOT pg_has_role(p_name, 'orchestra_users', 'MEMBER') OR p_name = session_user THEN
    RAISE EXCEPTION 'orchestra: role % is not an Orchestra user another admin may remove', p_name
      USING ERRCODE = '42501';
  END IF;
  EXECUTE format('DROP ROLE %I', p_name);
  RETURN true;
END $$;
"""

POLICIES = """
CREATE POLICY everyone_reads ON datasets FOR SELECT USING (true);
CREATE POLICY owner_inserts ON datasets FOR INSERT TO orchestra_users
  WITH CHECK (owner_id = (SELECT orchestra_uid()) OR (SELECT orchestra_is_admin()));
CREATE POLICY owner_deletes ON datasets FOR DELETE TO orchestra_users
  USING (owner_id = (SELECT orchestra_uid()) OR (SELECT orchestra_is_admin()));
CREATE POLICY scheduler_all ON datasets TO orchestra_scheduler USING (true) WITH CHECK (true);

CREATE POLICY everyone_reads ON dataset_files FOR SELECT USING (true);
CREATE POLICY owner_inserts ON dataset_files FOR INSERT TO orchestra_users
  WITH CHECK ((SELECT orchestra_is_admin()) OR EXISTS (
    SELECT 1 FROM datasets d WHERE d.id = dataset_id AND d.owner_id = (SELECT orchestra_uid())));
CREATE POLICY owner_deletes ON dataset_files FOR DELETE TO orchestra_users
  USING ((SELECT orchestra_is_admin()) OR EXISTS (
    SELECT 1 FROM datasets d WHERE d.id = dataset_id AND d.owner_id = (SELECT orchestra_uid())));
CREATE POLICY scheduler_all ON dataset_files TO orchestra_scheduler USING (true) WITH CHECK (true);

CREATE POLICY everyone_reads ON tasks FOR SELECT USING (true);
CREATE POLICY owner_inserts ON tasks FOR INSERT TO orchestra_users
  WITH CHECK (owner_id = (SELECT orchestra_uid()) OR (SELECT orchestra_is_admin()));
CREATE POLICY scheduler_all ON tasks TO orchestra_scheduler USING (true) WITH CHECK (true);

CREATE POLICY own_entries ON audit_log FOR SELECT TO orchestra_users
  USING (actor = session_user OR acted_for = session_user OR (SELECT orchestra_is_admin()));
CREATE POLICY actor_is_caller ON audit_log FOR INSERT TO orchestra_users
  WITH CHECK (actor = session_user AND (acted_for = session_user OR (SELECT orchestra_is_admin())));
CREATE POLICY scheduler_all ON audit_log TO orchestra_scheduler USING (true) WITH CHECK (true);
"""


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("acted_for", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar()
    # Roles are global to the server: create them once, under a lock so concurrent migrations of
    # two databases on one server do not race.
    op.execute("SELECT pg_advisory_xact_lock(727274)")
    op.execute(ROLES)
    for block in (GRANTS, DEFAULTS, HELPERS, PRIVILEGED):
        op.execute(block.format(s=schema))
    for function in FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    for function in USER_FUNCTIONS:
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO orchestra_users, orchestra_scheduler")
    for function in ADMIN_FUNCTIONS:
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO orchestra_admins")
    for table in ("datasets", "dataset_files", "tasks", "audit_log"):
        op.execute(f"GRANT USAGE ON SEQUENCE {table}_id_seq TO orchestra_users")
    for table in RLS_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(POLICIES)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in RLS_TABLES:
            if table != "audit_log":
                op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
                for policy in ("everyone_reads", "owner_inserts", "owner_deletes", "scheduler_all"):
                    op.execute(f"DROP POLICY IF EXISTS {policy} ON {table}")
        for function in reversed(FUNCTIONS):
            op.execute(f"DROP FUNCTION IF EXISTS {function}")
        op.execute("ALTER TABLE tasks DROP CONSTRAINT IF EXISTS ck_tasks_priority_range")
        op.execute("ALTER TABLE tasks DROP CONSTRAINT IF EXISTS ck_tasks_retries_range")
        for table in TABLES:
            if table != "audit_log":
                for group in GROUPS:
                    op.execute(f"REVOKE ALL ON {table} FROM {group}")
    op.drop_table("audit_log")
