"""Local backend: each attempt is a job on this machine, run as its owner, contained, supervised.

Like Slurm's slurmstepd, a small supervisor (a `/bin/sh` wrapper, started by the scheduler)
runs each attempt: it joins the attempt's cgroups (see containment.py), starts the command as
the task's owner (`setpriv`: uid, gid, supplementary groups; a clean environment; umask 027),
waits for it and for every process it left behind, then records the exit status.

Its state lives where jobs cannot reach: `<storage>/.orchestra/<installation>/<attempt>/`,
owned by the scheduler's account (a new database has a new installation id, so it never adopts
an old one's attempts):

- `lock`: flock'ed by the scheduler *before* the supervisor starts and inherited by it (its
  stdin), never by the job: held exactly as long as the supervisor lives.
- `exit`: the command's exit status, written after the attempt's last process is gone and before
  the lock is released. Lock free + exit = ended; lock free + no exit = the supervisor died.
- `pid`: the supervisor's pid; `log`: stdout and stderr, owned by the job's owner, mode 0600.

An attempt outlives the scheduler process that started it (`--once` exits at once, a restart is
not its parent): everything above is read back from the files and the cgroups.

Stopping is asynchronous, like Slurm's KillWait: `kill` sends SIGTERM to every process of the
attempt and returns; a later `survey` sends SIGKILL to what is left once the grace has passed.
The container image is recorded but not used: commands run directly on this machine.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import getpass
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from orchestra import logcap
from orchestra.backends.base import Launched, LaunchSpec, Observation, Phase, Survey, Tracked
from orchestra.backends.containment import Containment, detect, parse_quantity
from orchestra.config import ClusterConfig, Settings
from orchestra.errors import OrchestraError
from orchestra.paths import (UntrustedPath, make_subdir, open_dir, open_in, read_nofollow, state_root,
                             state_root_text)

log = logging.getLogger("orchestra.local")

# The supervisor. Its control variables (_ORC_*) are removed before the job starts; the job's
# stdin is /dev/null, so it never holds the lock (the supervisor's stdin). A TERM for the job
# must not end the supervisor before it records the status: it traps TERM/INT/HUP.
#
# Every process it starts is a spawn paid per job (issue 18: ~1 ms of CPU each on these machines),
# so it starts only what it must. Its `pid` and `exit` files are written in place (no `mv`): a
# reader looks at them only once the lock is free, i.e. once the supervisor is gone and its writes
# are done; a supervisor killed mid-write leaves an empty file, read as "no status" exactly like a
# missing one. A job run as the scheduler's own account runs in a subshell (a fork, no exec of a
# second shell), without the supervisor's variables; its output directory usually exists already
# (`LocalBackend._make_output_dir`), so `mkdir -p` runs only when it does not. A job run as its
# owner goes through `setpriv`, whose shell makes its directories as the owner. Either shell runs
# the command with `eval` rather than an exec of `/bin/sh -c` (each exec of a dynamically linked
# program costs ~0.5 ms of CPU here, its loader's CPU probing included): the same language, exit
# status and environment; one difference, in the subshell only, is that `$$` names the supervisor
# (as in any `( ... )`), not a process of the job's own.
#
# The supervisor joins the attempt's groups (one `echo $$` per hierarchy) and stays in them: it
# waits until it is the last process listed in the first one (the job's leftovers are gone), then
# exits, which empties the groups for `Containment.remove`. Moving a process between cgroups takes
# the kernel's global cgroup locks (every fork on the machine waits for them), so a job makes as
# few moves as it can: leaving the groups before the wait was one more move per hierarchy.
WRAPPER = r"""
st=$_ORC_STATE; join=$_ORC_JOIN; runas=$_ORC_RUNAS
unset _ORC_STATE _ORC_JOIN _ORC_RUNAS
trap : TERM INT HUP
for f in $join; do echo $$ > "$f" || exit 126; done
echo $$ > "$st/pid"
if [ -n "$runas" ]; then
$runas /bin/sh -c 'umask 027; mkdir -p "$ORCHESTRA_OUTPUT" && cd "$ORCHESTRA_OUTPUT" || exit 125
eval "$ORCHESTRA_COMMAND"' </dev/null
else
(unset st join runas f; umask 027
{ [ -d "$ORCHESTRA_OUTPUT" ] || mkdir -p "$ORCHESTRA_OUTPUT"; } && cd "$ORCHESTRA_OUTPUT" || exit 125
eval "$ORCHESTRA_COMMAND") </dev/null
fi
rc=$?
if [ -n "$join" ]; then
  set -- $join
  while :; do
    left=
    while read -r p; do [ "$p" = $$ ] || { left=1; break; }; done 2>/dev/null < "$1"
    [ -z "$left" ] && break
    sleep 0.05
  done
fi
[ -d "$st" ] || mkdir -p "$st"
echo $rc > "$st/exit"
exit $rc
"""

# Launcher threads: two per core (at most 32). A launch spends about half its time waiting in the
# kernel, not computing: for the vfork'ed child's exec, for file creation under the file system's
# journal, for the cgroup locks. With one thread per core (as the bench's parallel spawn limit)
# a 64-slot run left ~30 % of the CPU idle. Measured at 64 slots, SQLite, 2 cores, 4 alternated
# runs each: 2 threads 526 jobs/s (median), 3: 574, 4: 595-623, 6: 554, 8: 548 (more contend).
LAUNCHERS = min(32, 2 * max(1, os.cpu_count() or 1))
PARALLEL_MIN = 4  # launches in one call from which they go to the launcher threads
ADOPTED_POLL = 1.0  # seconds between looks at adopted processes (their end sends us no SIGCHLD)
# Launch failures that are the cluster's, not the job's (`Launched.infra`): the storage full, over
# quota, read-only or failing; the kernel out of processes or memory (fork refused). ENOENT and
# ENOTDIR count only when the storage itself is not there (not mounted).
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
SYSTEM_ERRNOS = frozenset({errno.EAGAIN, errno.ENOMEM})
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


def process_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat).

    Together with the pid it names a process uniquely: a recycled pid has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[19])


def _lock_held(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link: not our lock
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _read_int(path: Path) -> int | None:
    """The integer in a small state file; None when missing, a link, or not an integer."""
    try:
        return int(read_nofollow(path, 64).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _read_text(path: Path) -> str | None:
    try:
        return read_nofollow(path, 4096).decode("utf-8", "replace").strip() or None
    except OSError:
        return None


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path, follow_symlinks=False).st_mtime
    except OSError:
        return None


def run_jobs_as(settings: Settings) -> str:
    """'owner' or 'scheduler': the config's `[scheduler] run_jobs_as`; by default 'owner' when the
    scheduler runs as root on a shared (PostgreSQL) database, and 'scheduler' otherwise: SQLite is
    one person's database, whose jobs are theirs (even when that person is root)."""
    shared = not settings.database_url.startswith("sqlite")
    chosen = settings.scheduler.run_jobs_as or ("owner" if os.geteuid() == 0 and shared else "scheduler")
    if chosen == "owner" and os.geteuid() != 0:
        raise OrchestraError(
            "run_jobs_as = \"owner\" needs a scheduler running as root (it starts each job as its owner); "
            "run the service as root, or set [scheduler] run_jobs_as = \"scheduler\" (every job runs as "
            f"the scheduler's own account, uid {os.geteuid()})")
    return chosen


# Never handed to a job: anything not on this list (the database URL, the config path, libpq's
# PG* variables, the scheduler's own settings).
JOB_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")


def job_environment(scheduler_env: Mapping[str, str], *, home: str, user: str) -> dict[str, str]:
    """A clean environment for a job: PATH, HOME, USER, LOGNAME, LANG and the ORCHESTRA_* job
    variables the caller adds; never a variable that would let the job act as the scheduler."""
    env = {k: scheduler_env[k] for k in JOB_VARIABLES if k in scheduler_env}
    env.setdefault("PATH", SAFE_PATH)
    env.setdefault("LANG", "C.UTF-8")
    env.update(HOME=home, USER=user, LOGNAME=user)
    return env


@dataclass
class _Stopping:
    deadline: float  # monotonic: when what is left gets SIGKILL
    item: Tracked


class LocalBackend:
    """Runs attempts on this machine; safe across scheduler restarts."""

    name = "local"

    def __init__(self, cluster: ClusterConfig, settings: Settings, installation: str,
                 containment: Containment | None = None) -> None:
        self.cluster = cluster
        self.settings = settings
        self.installation = installation
        self.host = socket.gethostname()
        self.run_as = run_jobs_as(settings)
        self.containment = containment or detect(installation=installation)
        self.grace = settings.scheduler.kill_grace_seconds
        if Path(cluster.storage).is_relative_to(settings.home):
            # The personal default (`$ORCHESTRA_HOME/storage`) is made on first use; a storage the
            # admin configured elsewhere and that is missing (not mounted) holds the queue instead.
            Path(cluster.storage).mkdir(parents=True, exist_ok=True)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._reaped: dict[str, tuple[int, float]] = {}  # children reaped by this survey: (exit status, when)
        self._stopping: dict[str, _Stopping] = {}
        self._leftover_groups: set[str] = set()  # ended attempts whose cgroups are not removed yet
        self._adopted_running = 0  # running attempts, at the last survey, that are not our children
        self._launchers: ThreadPoolExecutor | None = None  # made at the first launch of several jobs
        self._adopt_lock = threading.Lock()  # launches run in several threads
        # The scheduler's own user name, for jobs run as its account: looked up once (getuser reads
        # the account database when USER and LOGNAME are unset, ~0.2 ms a launch here, issue 18).
        self._own_name = _own_user_name() if self.run_as == "scheduler" else ""
        self._state_root = state_root(self.cluster.storage, self.installation)
        # The same as text: a launch names its state directory in strings, not Paths (issue 18:
        # the Path arithmetic of a launch and its dispatch took ~18 µs a job, ~2 % of the
        # scheduler's CPU a job at 64 slots; an f-string 0.2 µs).
        self._state_root_text = state_root_text(self.cluster.storage, self.installation)
        self._base_env: dict[tuple[str, str], dict[str, str]] = {}  # job_environment by (home, user)
        # The state root, opened once (checked as `open_dir` checks any path) and kept: each launch
        # then makes and opens only its own directory in it (issue 18: the walk from the storage
        # down cost ~0.1 ms a launch). Replaced if it is removed under us; the old descriptors are
        # closed at `close` (another launcher thread may still be using one).
        self._state_fd: int | None = None
        self._old_state_fds: list[int] = []
        self._state_lock = threading.Lock()
        # Output directories are made 0750; a umask that takes none of those bits needs no chmod.
        self._umask_keeps_0750 = not (_current_umask() & 0o750)

    def describe(self) -> str:
        """The start-up line: how jobs run and how they are contained."""
        who = "as their owners" if self.run_as == "owner" else f"as the scheduler's own account (uid {os.geteuid()})"
        strength = "" if self.containment.strong else " (weaker: a process that leaves its session escapes)"
        return f"local jobs run {who}, contained by {self.containment.kind}{strength}"

    def state_dir(self, name: str) -> Path:
        return self._state_root / name

    def launch(self, specs: Sequence[LaunchSpec]) -> list[Launched]:
        """Start the attempts, several at once (issue 18): a launch mostly waits on the kernel
        (the exec of the supervisor, which a vfork'ed parent waits for; cgroup and state directory
        calls), with the GIL released, so one launcher thread per core starts about as many jobs
        per second as the machine can spawn (the bench's parallel spawn limit), where launching
        one after another reached at most the serial one. The answers keep the order of `specs`.
        Each launch touches only its own attempt's files and cgroups. Batches under PARALLEL_MIN
        stay in this thread (a short pass at low turnover launches one or two).

        The answers carry no `pid_start`: read just after the spawn, /proc/<pid>/stat waits for
        the exec under way (the kernel's exec lock), ~0.4 ms a launch here, which held the pass
        (or a launcher thread) up. The scheduler asks `start_time_of` when it writes the
        launch's record, by then long after the exec."""
        if len(specs) < PARALLEL_MIN:
            return [self._launch_one(spec) for spec in specs]
        if self._launchers is None:
            self._launchers = ThreadPoolExecutor(max_workers=LAUNCHERS, thread_name_prefix="orchestra-launch")
        return list(self._launchers.map(self._launch_one, specs))

    def start_time_of(self, name: str, pid: int) -> int | None:
        """The start time of the supervisor this backend launched as `name` (see `launch`); None
        once it is no longer our unreaped child: after `reap` its pid may name another process.
        A supervisor that exited and is not reaped yet is a zombie, whose stat is still there."""
        child = self._children.get(name)
        if child is None or child.pid != pid:
            return None
        return process_start_time(pid)

    def _account(self, spec: LaunchSpec) -> tuple[str, str, str, tuple[int, int] | None]:
        """(setpriv prefix, HOME, user name, the owner's (uid, gid) or None) for the job: its
        owner's account, or the scheduler's own (None: nothing to switch to or chown for)."""
        if self.run_as == "scheduler":
            return "", os.environ.get("HOME", "/"), self._own_name, None
        from orchestra.security.accounts import owner_account

        owner = owner_account(self.settings, spec.user)
        groups = ",".join(str(g) for g in owner.groups) if owner.groups else ""
        prefix = (f"setpriv --reuid={owner.uid} --regid={owner.gid} "
                  f"{'--groups=' + groups if groups else '--clear-groups'} --")
        return prefix, owner.home, owner.name, (owner.uid, owner.gid)

    def _launch_one(self, spec: LaunchSpec) -> Launched:
        """State directory, lock and log are made in the scheduler's own directory without
        following a link; the supervisor then starts with the lock as its stdin. Its start time is
        left for later (see `launch`)."""
        shown = f"{self._state_root_text}/{spec.backend_name}"  # in messages; files are reached through `folder`
        try:
            runas, home, user, owner_ids = self._account(spec)
        except OrchestraError as exc:  # no account to run it as: no attempt of this task can run
            return Launched(spec.backend_name, error=str(exc), final=True)
        folder = fd = log_fd = -1
        try:
            folder, fresh = self._open_state(spec.backend_name)
            fd = open_in(folder, "lock", os.O_CREAT | os.O_RDWR, 0o644, shown=f"{shown}/lock")
        except UntrustedPath as exc:
            _close(folder)
            return Launched(spec.backend_name, error=f"cannot prepare {shown}: {exc}")
        except OSError as exc:
            _close(folder)
            return self._refused(spec.backend_name, exc, f"cannot prepare {shown}")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._adopt(spec.backend_name, self.state_dir(spec.backend_name))  # already running: adopt
            if not fresh and (_exists_in(folder, "exit") or _exists_in(folder, "pid")):
                return self._adopt(spec.backend_name, self.state_dir(spec.backend_name))  # ran before: never run it twice
            try:
                self._probe_storage(fd, fresh)
            except OSError as exc:
                return self._refused(spec.backend_name, exc, f"cannot prepare {shown}")
            try:
                join = self.containment.prepare(
                    spec.backend_name, pids_max=self.settings.scheduler.max_job_pids or None,
                    memory_max=_memory_bytes(spec.queue.memory) if spec.queue.memory else None)
            except OSError as exc:
                return self._refused(spec.backend_name, exc, "cannot contain the job", storage_io=False)
            self._prepare_owner_dir(spec, owner_ids)
            base = self._base_env.get((home, user))
            if base is None:  # the scheduler's environment does not change while it runs
                base = self._base_env[(home, user)] = job_environment(os.environ, home=home, user=user)
            env = dict(base)
            env.update(
                ORCHESTRA_OUTPUT=spec.output_dir, ORCHESTRA_COMMAND=spec.command, ORCHESTRA_TASK=spec.task_name,
                ORCHESTRA_JOB=str(spec.job_index), ORCHESTRA_ATTEMPT=str(spec.attempt), ORCHESTRA_USER=spec.user,
                _ORC_STATE=shown, _ORC_JOIN=" ".join(join), _ORC_RUNAS=runas,
            )
            try:
                log_fd = open_in(folder, "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600, shown=f"{shown}/log")
                if owner_ids is not None:
                    os.fchown(log_fd, *owner_ids)  # the owner reads it; nobody else
            except UntrustedPath as exc:
                return Launched(spec.backend_name, error=f"cannot open the log: {exc}")
            if owner_ids is None and not runas:
                _make_output_dir(spec.output_dir, chmod=not self._umask_keeps_0750)
            child = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER], stdin=fd, stdout=log_fd, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            return self._refused(spec.backend_name, exc, "cannot start /bin/sh")
        finally:
            _close(log_fd)
            _close(folder)
            os.close(fd)  # the supervisor keeps the lock through its stdin
        self._children[spec.backend_name] = child
        track = getattr(self.containment, "track", None)  # the process-group fallback follows the session
        if track is not None:
            track(spec.backend_name, child.pid)
        return Launched(spec.backend_name, host=self.host, pid=child.pid, started_at=time.time())

    def _open_state(self, name: str) -> tuple[int, bool]:
        """The attempt's state directory as a descriptor (made if missing, never through a link),
        and whether this call made it: a new one holds no trace of an earlier run to adopt."""
        for last in (False, True):
            with self._state_lock:
                root = self._state_fd
            if root is None:
                root = open_dir(self._state_root, self.cluster.storage, create=True)
                with self._state_lock:
                    if self._state_fd is None:
                        self._state_fd = root
                    else:  # another launcher thread opened it meanwhile
                        os.close(root)
                        root = self._state_fd
            try:
                return make_subdir(root, name, f"{self._state_root_text}/{name}")
            except FileNotFoundError:
                if last:
                    raise
                with self._state_lock:  # the state root was removed under us: reach it again
                    if self._state_fd == root:
                        self._old_state_fds.append(root)
                        self._state_fd = None
        raise AssertionError("unreachable")

    def _refused(self, name: str, exc: OSError, what: str, *, storage_io: bool = True) -> Launched:
        """A launch refused by an OSError: the cluster's failure (`infra`: the job goes back to the
        queue uncharged, its queue is held) when the storage or the system refused, else the attempt's.
        `storage_io`: the failed call may have touched the storage (not so for the cgroups)."""
        why = exc.strerror or str(exc)
        storage = self.cluster.storage
        if storage_io and exc.errno in STORAGE_ERRNOS:
            return Launched(name, error=f"cannot start jobs: {why} on the storage {storage}", infra=True)
        if storage_io and exc.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.isdir(storage):
            return Launched(name, error=f"cannot start jobs: the storage {storage} is missing, not mounted?",
                            infra=True)
        if exc.errno in SYSTEM_ERRNOS or exc.errno in STORAGE_ERRNOS:
            return Launched(name, error=f"cannot start jobs: {what}: {why}", infra=True)
        return Launched(name, error=f"{what}: {why}")

    def _probe_storage(self, lock: int, fresh: bool) -> None:
        """Write a few bytes (who launched the attempt, when) into its lock file: a full, over quota
        or read-only storage refuses them here, before the job runs, and not later, when its
        supervisor could not record its pid and exit status (the job would run, then be lost).
        The lock is open already: a probe file of its own cost one more file creation on the
        storage per attempt (issue 18). A network storage may report a full disk only when a
        descriptor of the file is closed: closing a duplicate asks it now, the lock stays held."""
        data = f"{self.host} {os.getpid()} {time.time():.3f}\n".encode()
        if os.pwrite(lock, data, 0) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if not fresh:
            os.ftruncate(lock, len(data))  # an interrupted earlier launch's bytes
        os.close(os.dup(lock))

    def _prepare_owner_dir(self, spec: LaunchSpec, owner_ids: tuple[int, int] | None) -> None:
        """`<storage>/<owner>` made for the owner (0750) when it does not exist, so the job (as
        its owner) can create its task's directories; an existing one is left as it is."""
        if owner_ids is None:
            return
        try:
            fd = open_dir(self.cluster.storage, self.cluster.storage)
        except OSError:
            return
        try:
            os.mkdir(spec.user, 0o750, dir_fd=fd)
            os.chown(spec.user, *owner_ids, dir_fd=fd, follow_symlinks=False)
        except FileExistsError:
            pass
        finally:
            os.close(fd)

    def _adopt(self, name: str, state: Path) -> Launched:
        with self._adopt_lock:
            self._adopted_running += 1  # not our child: no SIGCHLD will tell its end, poll until the next survey
        pid = _read_int(state / "pid")
        return Launched(name, host=self.host, pid=pid, pid_start=process_start_time(pid) if pid else None,
                        started_at=_mtime(state / "lock"))

    def reap(self) -> None:
        """Collect exited children of this process (they would linger as zombies); their exit
        status is kept for the survey that reaped them (`_observe`)."""
        now = time.time()
        for name, child in list(self._children.items()):
            code = child.poll()
            if code is not None:
                del self._children[name]
                self._reaped[name] = (code, now)

    def survey(self, tracked: Sequence[Tracked]) -> Survey:
        self.reap()
        self._escalate()
        survey = Survey()
        self._adopted_running = 0
        for item in tracked:
            seen = self._observe(item)
            survey.observations[item.backend_name] = seen
            self._cap_log(item.backend_name)
            if seen.phase == Phase.RUNNING and item.backend_name not in self._children:
                self._adopted_running += 1
            elif seen.phase != Phase.RUNNING:
                # Its groups go at `release`, once its end is recorded (the scheduler releases
                # every ended attempt it surveyed): removed here too, they were looked for twice.
                self._stopping.pop(item.backend_name, None)
        self._reaped.clear()  # any not asked about (not tracked): their files tell, as for any process
        for name in list(self._leftover_groups):
            self._remove_group(name)
        return survey

    def _remove_group(self, name: str) -> None:
        """Remove an ended attempt's cgroups; one whose last processes are still exiting (EBUSY)
        is retried at the next survey, never an error of the cycle."""
        try:
            self.containment.remove(name)
            self._leftover_groups.discard(name)
        except OSError:
            self._leftover_groups.add(name)

    def _cap_log(self, name: str) -> None:
        """Keep the attempt's log under its cap (its tail kept; a note says how much was cut): one
        lstat while it is under, every pass, for every attempt the survey looks at."""
        log_file = self.state_dir(name) / "log"
        try:
            logcap.enforce(log_file, self.settings.scheduler.max_log_bytes, logcap.note_path(log_file),
                           storage=self.cluster.storage)
        except (OrchestraError, OSError) as exc:
            log.warning("cannot cap the log of %s: %s", name, exc)

    def poll_after(self) -> float | None:
        """Our own children announce their end with SIGCHLD; processes adopted from an earlier
        scheduler cannot, so while any runs the loop looks every `ADOPTED_POLL` seconds; an
        attempt being stopped wakes the loop when its grace ends."""
        waits = [ADOPTED_POLL] if self._adopted_running else []
        if self._stopping:
            waits.append(max(0.0, min(s.deadline for s in self._stopping.values()) - time.monotonic()) + 0.01)
        return min(waits) if waits else None

    def _supervisor_alive(self, item: Tracked, state: Path) -> bool:
        pid = item.pid or _read_int(state / "pid")
        if pid is None:
            return False
        started = process_start_time(pid)
        return started is not None and (item.pid_start is None or item.pid != pid or started == item.pid_start)

    def _observe(self, item: Tracked) -> Observation:
        name = item.backend_name
        if name in self._children:
            # Our own child, not reaped by the survey's `reap` just before: its supervisor is alive,
            # so it holds the lock (its stdin, for its whole life). Running, without the lock test's
            # three system calls (issue 18: every live attempt is surveyed at every short pass).
            return Observation(name, Phase.RUNNING, host=self.host)
        if self._reaped.get(name, (None,))[0] == 0:
            # Our own child, reaped by this survey, exited 0: its supervisor exits with the job's
            # status, after writing it to `exit`, so the job succeeded. Told without the four reads
            # of its state files (lock, exit, its time, why) that a status needs otherwise (issue 18:
            # at turnover most ends are these). Any other status is read from the files, with its
            # reason (a verdict, an OOM kill); an adopted process's end always is.
            return Observation(name, Phase.SUCCEEDED, exit_code=0, host=self.host, ended_at=self._reaped[name][1])
        state = self.state_dir(name)
        # Lock first: the exit file is written before the lock is released, never after.
        if _lock_held(state / "lock"):
            return Observation(name, Phase.RUNNING, host=self.host)
        code = _read_int(state / "exit")
        if code is not None:
            ended = _mtime(state / "exit")
            phase = Phase.SUCCEEDED if code == 0 else Phase.FAILED
            reason = None if code == 0 else (f"killed by signal {code - 128}" if code > 128 else f"exit code {code}")
            why = _read_text(state / "why")
            if why:
                reason = why
            elif code != 0 and self.containment.oom_killed(name):
                reason = "OOMKilled: the job used more than its queue's memory"
            return Observation(name, phase, exit_code=code, reason=reason, host=self.host, ended_at=ended)
        if self._supervisor_alive(item, state):
            # Its state was removed under it: keep tracking it; it writes its status back at the end.
            return Observation(name, Phase.RUNNING, host=self.host)
        if self.containment.alive(name):
            # The supervisor was killed while the job ran: end the job too, never run it twice. The
            # verdict is written first, so a scheduler that restarts before recording it sees the same.
            self._record_verdict(state, 137, "its supervisor was killed; the job was stopped")
            self.containment.kill(name)
            return self._observe(item)
        return Observation(name, Phase.MISSING, reason="process gone without an exit status")

    def _record_verdict(self, state: Path, code: int, why: str) -> None:
        """The scheduler writes an attempt's end itself (its supervisor is gone): `why`, then `exit`."""
        try:
            folder = open_dir(state, self.cluster.storage, create=True)
        except (OSError, UntrustedPath) as exc:
            log.warning("cannot record the end of %s: %s", state.name, exc)
            return
        try:
            for name, text in (("why", why), ("exit", str(code))):
                fd = open_in(folder, name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                with os.fdopen(fd, "w") as out:
                    out.write(text + "\n")
                os.replace(name + ".tmp", name, src_dir_fd=folder, dst_dir_fd=folder)
        except (OSError, UntrustedPath) as exc:
            log.warning("cannot record the end of %s: %s", state.name, exc)
        finally:
            os.close(folder)

    def kill(self, tracked: Sequence[Tracked]) -> None:
        """SIGTERM every process of each attempt and return at once; `survey` sends SIGKILL to what
        is left after the grace. Asking again for an attempt already being stopped changes nothing."""
        deadline = time.monotonic() + self.grace
        for item in tracked:
            if item.backend_name in self._stopping:
                continue
            self._stopping[item.backend_name] = _Stopping(deadline, item)
            self._signal(item, signal.SIGTERM)

    def _escalate(self) -> None:
        now = time.monotonic()
        for name, stopping in list(self._stopping.items()):
            if stopping.deadline <= now:
                self._signal(stopping.item, signal.SIGKILL)

    def _signal(self, item: Tracked, sig: int) -> None:
        if self.containment.strong:
            if sig == signal.SIGKILL:
                self.containment.kill(item.backend_name)
            else:
                self.containment.signal(item.backend_name, sig)
            return
        state = self.state_dir(item.backend_name)
        if self._supervisor_alive(item, state):
            _signal_group(item.pid or _read_int(state / "pid") or 0, sig)
        self.containment.signal(item.backend_name, sig)

    def release(self, names: Sequence[str]) -> None:
        """The state directory stays (it holds the log); the cgroups go."""
        for name in names:
            self._stopping.pop(name, None)
            self._remove_group(name)

    def close(self) -> None:
        if self._launchers is not None:
            self._launchers.shutdown(wait=True)
            self._launchers = None
        with self._state_lock:
            for fd in self._old_state_fds + ([self._state_fd] if self._state_fd is not None else []):
                _close(fd)
            self._old_state_fds, self._state_fd = [], None
        self.reap()
        drain = getattr(self.containment, "drain", None)  # spare groups kept for reuse (cgroup v1)
        if drain is not None:
            drain()
        for base in getattr(self.containment, "bases", {}).values():  # this installation's parent groups
            try:
                os.rmdir(base)  # only when empty: attempts still running keep theirs
            except OSError:
                pass


def _current_umask() -> int:
    """The process's umask, read from /proc (os.umask would change it for every thread a moment);
    unknown: 0o777, so the output directory is chmod'ed as before."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def _make_output_dir(path: str, chmod: bool = True) -> None:
    """A job run as the scheduler's own account: its output directory made here, as its wrapper
    would (`umask 027; mkdir -p`: mode 0750), which saves the wrapper a `mkdir` process per job.
    Only the last component: when its parent is missing, or on any error, the wrapper's own
    `mkdir -p` makes it (or fails the attempt with 125, as before)."""
    try:
        os.mkdir(path, 0o750)
    except OSError:
        return
    if not chmod:
        return
    try:
        os.chmod(path, 0o750)  # the scheduler's umask may take more than the wrapper's 027
    except OSError:
        pass


@functools.lru_cache(maxsize=64)
def _memory_bytes(quantity: str) -> int:
    """A queue's memory in bytes, parsed once per distinct string (every launch asks)."""
    return parse_quantity(quantity)


def _exists_in(folder: int, name: str) -> bool:
    """lexists of `name` in the directory `folder` (no path walk, no link followed)."""
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _own_user_name() -> str:
    """USER / LOGNAME, else the account database's name for our uid, else the uid itself (a
    container may run us under a uid without an account)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.geteuid())


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def _signal_group(pid: int, sig: int) -> None:
    if pid <= 0:
        return
    try:
        os.killpg(pid, sig)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise
