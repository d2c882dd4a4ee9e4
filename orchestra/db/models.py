"""SQLAlchemy 2 typed models: users, datasets and their files, tasks, jobs and their attempts.

Times are float epoch seconds (UTC): identical on SQLite and PostgreSQL, cheap to compare, and
directly usable as numpy arrays by the fair-share policy.
"""
from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so Alembic migrations are the same on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT ids on PostgreSQL; SQLite only makes INTEGER PRIMARY KEY an alias of its rowid.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# PostgreSQL storage for tables whose rows the scheduler rewrites every cycle: room on each page
# for in-place (HOT) updates; see migration 0002.
HOT_ROOM = {"fillfactor": "50"}


class User(Base):
    """A person who owns datasets and tasks; also the unit of fair share."""

    __tablename__ = "users"
    __table_args__ = {"postgresql_with": HOT_ROOM}  # usage rewritten every cycle: migration 0002
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    share: Mapped[float] = mapped_column(Float, default=1.0)
    max_running: Mapped[int | None] = mapped_column(Integer)
    # Decayed usage in weighted slot-seconds as of `usage_at` (charged by the scheduler).
    usage: Mapped[float] = mapped_column(Float, default=0.0)
    usage_at: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[float] = mapped_column(Float)
    # Notifications (migration 0009): where the mails about this user's tasks go (None: nowhere),
    # and whether they want them (`maestro user notify off`). Written on PostgreSQL only through
    # `orchestra_set_contact`, which checks the caller is this user or an admin.
    email: Mapped[str | None] = mapped_column(String(254))
    notify: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class Dataset(Base):
    """A name that points to a file or a directory on a cluster's storage."""

    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    cluster: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    is_dir: Mapped[bool] = mapped_column(Boolean)
    n_files: Mapped[int] = mapped_column(Integer)
    total_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)
    # `orchestra_registry --from-task`: the task whose output root this dataset is (migration 0008).
    # Its files are recorded when a dependent task is expanded (n_files is 0 until then). No foreign
    # key: tasks already reference datasets, and a cycle of keys makes every schema tool guess an
    # order; task ids are never reused (AUTOINCREMENT), so an id without its task means "deleted".
    source_task_id: Mapped[int | None] = mapped_column(Id)


class DatasetFile(Base):
    """One file of a dataset, in a stable (sorted) order: its position is the job index."""

    __tablename__ = "dataset_files"
    __table_args__ = (UniqueConstraint("dataset_id", "position", name="uq_dataset_files_dataset_position"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)


class Task(Base):
    """A user's request: image, command template, datasets, queue, limits; expanded into jobs."""

    __tablename__ = "tasks"
    # AUTOINCREMENT on SQLite: ids are never reused, because backend object names derive from them.
    __table_args__ = (
        Index("ix_tasks_status", "status"),
        Index("ix_tasks_owner_id", "owner_id"),
        Index("ix_tasks_finished_at", "finished_at"),  # retention reads the oldest finished first
        {"sqlite_autoincrement": True, "postgresql_with": HOT_ROOM},  # n_queued rewritten every cycle
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    cluster: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(Text)
    command: Mapped[str] = mapped_column(Text)
    # Kept for display; a finished task keeps working after its datasets are deleted (its jobs
    # hold their expanded paths), hence SET NULL rather than a blocking reference.
    config_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    data_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer)
    max_time: Mapped[float | None] = mapped_column(Float)
    bypass: Mapped[bool] = mapped_column(Boolean, default=False)
    n_jobs: Mapped[int] = mapped_column(Integer, default=0)
    n_scouts: Mapped[int] = mapped_column(Integer, default=0)
    # Queued jobs, kept by every transition in and out of QUEUED: the scheduler reads this instead
    # of counting rows, so a cycle's cost does not grow with the depth of the queue.
    n_queued: Mapped[int] = mapped_column(Integer)
    # The task's queue cursor (migration 0012, orchestra/db/job_lookup.py): no queued job that never
    # ran has an index below it. The dispatch moves it past the jobs it starts; a move of a job that
    # never ran back to QUEUED moves it down.
    queue_from: Mapped[int] = mapped_column(Integer, server_default=text("0"))  # a user may not write it
    output_root: Mapped[str] = mapped_column(Text)
    # A request recorded by the CLI for the scheduler: "kill", "delete" or "purge".
    request: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    released_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    # Retention (migration 0010): when the owner was last told the task will be removed; a notice
    # from before `finished_at` belongs to an earlier finish (the task was retried since).
    removal_notice_at: Mapped[float | None] = mapped_column(Float)


# The partial indexes' predicates, exactly as a query must repeat them for SQLite to use the index
# (SQLite matches a partial index's WHERE term by term; orchestra/db/job_lookup.py builds them).
SETTLED_STATES = ("held", "succeeded", "failed", "killed")
SETTLED_WHERE = f"status IN ({', '.join(repr(s) for s in SETTLED_STATES)})"
RETRIED_WHERE = "status = 'queued' AND attempts > 0"


class Job(Base):
    """One expansion of a task (one config file). Each run of it is an Attempt."""

    __tablename__ = "jobs"
    __table_args__ = (
        # A task's jobs in order: the fresh part of its queue, from the task's `queue_from` on.
        UniqueConstraint("task_id", "index", name="uq_jobs_task_index"),
        # Two partial indexes, so that no entry moves when a job starts, runs or ends but the
        # settled one it ends in (migration 0012, orchestra/db/job_lookup.py): the jobs waiting
        # outside the queue or ended (per-state counts), and the queued jobs that ran before (retries).
        Index("ix_jobs_settled", "task_id", "status", sqlite_where=text(SETTLED_WHERE),
              postgresql_where=text(SETTLED_WHERE)),
        Index("ix_jobs_retried", "task_id", "index", sqlite_where=text(RETRIED_WHERE),
              postgresql_where=text(RETRIED_WHERE)),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    config_path: Mapped[str] = mapped_column(Text)
    output_dir: Mapped[str] = mapped_column(Text)
    command: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    is_scout: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)


class Attempt(Base):
    """One run of a job on a backend. Its backend name comes from (job, attempt number) and is
    recorded before the backend is asked to create it: a retried create adopts, never duplicates."""

    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("job_id", "number", name="uq_attempts_job_number"),
        Index("ix_attempts_status", "status"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    backend_name: Mapped[str] = mapped_column(String(63), unique=True)
    cluster: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    pid_start: Mapped[int | None] = mapped_column(BigInteger)
    log_path: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    charged_until: Mapped[float | None] = mapped_column(Float)
    # Why the scheduler is stopping it ("timeout", "killed by user"): the attempt stays live, and
    # its slot taken, until its last process is gone; then it ends with this reason.
    stopping: Mapped[str | None] = mapped_column(Text)


class SchedulerLease(Base):
    """One row per lease: only its holder may change job states; expiry makes a crash harmless."""

    __tablename__ = "scheduler_lease"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(255))
    expires_at: Mapped[float] = mapped_column(Float, default=0.0)


class ChangeCounter(Base):
    """Bumped by every CLI write the scheduler should react to; polled cheaply on SQLite."""

    __tablename__ = "change_counter"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class AuditEntry(Base):
    """Who did what, and for whom: an admin acting for a user is recorded as both.

    On PostgreSQL `actor` must equal the connected role (row-level security checks it), so an
    entry cannot be forged; on SQLite (personal mode) it is the OS login.
    """

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(64))
    acted_for: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(Text)


class Installation(Base):
    """One row: this database's id, made by its first migration. Attempt state on disk is kept
    under it, so a new database over an old storage never adopts the old one's attempts."""

    __tablename__ = "installation"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)


class QueueHold(Base):
    """A queue of a cluster in which the scheduler starts nothing for now, and why (migration 0006).

    The scheduler holds a queue when the cluster could not start a job in it for a reason that is
    not the job's (storage full or gone, fork refused): the job went back to the queue uncharged.
    After `retry_at` one launch probes the queue; a success clears the hold, a failure doubles the
    backoff. Written only by the scheduler; every user reads it (`maestro queue`, `orchestra status`).
    """

    __tablename__ = "queue_holds"
    cluster: Mapped[str] = mapped_column(String(64), primary_key=True)
    queue: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    since: Mapped[float] = mapped_column(Float)
    retry_at: Mapped[float] = mapped_column(Float)  # no launch there before this (epoch s); then one probe
    backoff: Mapped[float] = mapped_column(Float)  # seconds until the next probe after a failed one
    tries: Mapped[int] = mapped_column(Integer, default=1)  # failed launches (the first one and the probes)


class TaskEvent(Base):
    """A task's history: who changed what, from what to what (`maestro task edit`; migration 0008).

    `details` maps each changed field to {"from": old, "to": new}. On PostgreSQL rows are written
    only by the owner's checked function (`orchestra_task_edit`), with `actor` = session_user.
    """

    __tablename__ = "task_events"
    __table_args__ = (Index("ix_task_events_task_id", "task_id"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(64))
    what: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict] = mapped_column(JSON)


class TaskDependency(Base):
    """`task create --after` / `--after-any`: the task is not expanded until its dependency is
    completed (`after`) or in any final state (`after_any`). Recorded once, at creation."""

    __tablename__ = "task_dependencies"
    __table_args__ = (Index("ix_task_dependencies_depends_on_id", "depends_on_id"),)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    depends_on_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "after" or "after_any"


class Outbox(Base):
    """A mail to send: one per task event, written by the scheduler in the transaction that records
    the event, sent after the cycle by the service's postman (orchestra/notify/; migration 0009).

    Due when `sent_at` is NULL and `next_try_at` has passed; each failed try pushes `next_try_at`
    back (doubling), and a row not sent within a day is dropped with a log line. On PostgreSQL a
    user reads only their own rows and writes none."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "sent_at", "next_try_at"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"))
    task_id: Mapped[int | None] = mapped_column(Id)  # no key: the mail outlives a deleted task
    event: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[float | None] = mapped_column(Float)


class UsageHistory(Base):
    """What each user had running and queued at one full cycle, and what started since the record
    before (migration 0011): the dashboard's usage charts read it (orchestra/services/history.py).

    Compact by construction: one row per user with something running, queued or started at that
    cycle, never one per job, plus one row with `user_id` NULL holding the totals of all users,
    written at every record even when idle (so a chart knows how many records a period holds).
    Written by the scheduler only, which adds each record to `usage_rollup` (what the charts read)
    and prunes the raw records after two days; everyone reads it.
    """

    __tablename__ = "usage_history"
    __table_args__ = (Index("ix_usage_history_at", "at"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)  # when recorded (epoch s)
    # NULL: the row of totals over all users at `at`.
    user_id: Mapped[int | None] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"))
    running: Mapped[float] = mapped_column(Float)  # slots in use (live attempts), weighted as fair share charges them
    queued: Mapped[int] = mapped_column(Integer)  # jobs waiting for a slot (the per-task counters)
    started: Mapped[int] = mapped_column(Integer)  # jobs the backend accepted since the previous record
    wait_seconds_sum: Mapped[float] = mapped_column(Float)  # their queue waits summed (mean = sum / started)
    max_wait_seconds: Mapped[float] = mapped_column(Float)  # the longest of those waits (0 when none started)


class UsageRollup(Base):
    """The usage history summed per user over fixed time buckets at a few widths (`level_seconds`:
    5 minutes to 6 hours; migration 0011), kept up to date by the recorder at each record, so a
    chart of 6 hours or 30 days reads one row per bucket and active user instead of every record
    (orchestra/services/history.py).

    `user_id` NULL: the totals of all users, whose `samples` is the number of records in the
    bucket (the divisor of a mean). A bucket starts at a multiple of its level since the epoch.
    """

    __tablename__ = "usage_rollup"
    __table_args__ = (
        # The users' rows (and the reads and deletes of a level's time range); NULLs are distinct
        # here, so the totals rows have a unique index of their own.
        Index("ix_usage_rollup_level_bucket_user", "level_seconds", "bucket_at", "user_id", unique=True),
        Index("ix_usage_rollup_totals", "level_seconds", "bucket_at", unique=True,
              sqlite_where=text("user_id IS NULL"), postgresql_where=text("user_id IS NULL")),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    level_seconds: Mapped[int] = mapped_column(Integer)  # the bucket width
    bucket_at: Mapped[float] = mapped_column(Float)  # the bucket's start (epoch s, a multiple of the level)
    user_id: Mapped[int | None] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"))
    samples: Mapped[int] = mapped_column(Integer)  # records summed here
    running_sum: Mapped[float] = mapped_column(Float)  # running slots summed over them (mean = / the totals' samples)
    running_max: Mapped[float] = mapped_column(Float)
    queued_max: Mapped[int] = mapped_column(Integer)
    started: Mapped[int] = mapped_column(Integer)
    wait_sum: Mapped[float] = mapped_column(Float)  # queue waits of those started, summed
    wait_max: Mapped[float] = mapped_column(Float)
