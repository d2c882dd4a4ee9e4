"""Local backend: each attempt is a `/bin/sh -c <command>` process group on this machine.

An attempt outlives the scheduler process that started it (`--once` exits at once; a restart is
not its parent), so its state lives in files beside its log, in `<output_root>/.attempts/<name>/`:

- `lock`: flock'ed *by the scheduler before the process starts* and inherited by it, so the
  lock is held exactly as long as the attempt's process (or its children) lives. There is no
  window in which a live attempt looks dead, whoever asks and whenever.
- `exit`: the exit code, written by a tiny shell wrapper after the command ends and before the
  lock is released. Lock free + no exit file = the attempt died or never started: lost.
- `pid`: written by the wrapper; `log`: stdout and stderr.

The container image is recorded but not used: commands run directly on this machine.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from orchestra.backends.base import Launched, LaunchSpec, Observation, Phase, Survey, Tracked
from orchestra.paths import UntrustedPath, open_dir, open_in, read_nofollow

WRAPPER = (
    'echo $$ > "$ORCHESTRA_STATE/pid.tmp" && mv "$ORCHESTRA_STATE/pid.tmp" "$ORCHESTRA_STATE/pid"; '
    'mkdir -p "$ORCHESTRA_OUTPUT" && cd "$ORCHESTRA_OUTPUT" || exit 125; '
    '/bin/sh -c "$ORCHESTRA_COMMAND"; rc=$?; '
    'echo $rc > "$ORCHESTRA_STATE/exit.tmp" && mv "$ORCHESTRA_STATE/exit.tmp" "$ORCHESTRA_STATE/exit"; '
    "exit $rc"
)


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
        if exc.errno == errno.ELOOP:  # a link put there by a job: not our lock
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


def _mtime(path: Path) -> float:
    return os.stat(path, follow_symlinks=False).st_mtime


ADOPTED_POLL = 1.0  # seconds between looks at adopted processes (their end sends us no SIGCHLD)



# Never handed to a job: the scheduler's database URL, config and identity, and libpq's settings
# (PGPASSWORD, PGSERVICE...). A job that wants Orchestra uses its owner's own credentials.
SECRET_PREFIXES = ("ORCHESTRA_", "PG")


def job_environment(scheduler_env: Mapping[str, str]) -> dict[str, str]:
    """The scheduler's environment without what would let a job act as the scheduler."""
    return {k: v for k, v in scheduler_env.items() if not k.startswith(SECRET_PREFIXES)}

class LocalBackend:
    """Runs attempts as process groups of this machine; safe across scheduler restarts."""

    name = "local"

    def __init__(self) -> None:
        self.host = socket.gethostname()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._adopted_running = 0  # running attempts, at the last survey, that are not our children

    @staticmethod
    def state_dir(log_path: str) -> Path:
        return Path(log_path).parent

    def launch(self, specs: Sequence[LaunchSpec]) -> list[Launched]:
        return [self._launch_one(spec) for spec in specs]

    def _launch_one(self, spec: LaunchSpec) -> Launched:
        """The state directory, lock and log are made inside the cluster's storage without
        following a link (a job may have replaced any of them with one): refused, not followed."""
        state = self.state_dir(spec.log_path)
        log_name = Path(spec.log_path).name
        folder = fd = log_fd = -1
        try:
            folder = open_dir(state, spec.cluster.storage, create=True)
            fd = open_in(folder, "lock", os.O_CREAT | os.O_RDWR, 0o644, shown=state / "lock")
        except UntrustedPath as exc:
            _close(folder)
            return Launched(spec.backend_name, error=f"cannot prepare {state}: {exc}")
        except OSError as exc:
            _close(folder)
            return Launched(spec.backend_name, error=f"cannot prepare {state}: {exc.strerror}")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._adopt(spec.backend_name, state)  # already running: adopt
            if os.path.lexists(state / "exit") or os.path.lexists(state / "pid"):
                return self._adopt(spec.backend_name, state)  # ran before: never run it twice
            env = job_environment(os.environ)
            env.update(
                ORCHESTRA_STATE=str(state), ORCHESTRA_OUTPUT=spec.output_dir, ORCHESTRA_COMMAND=spec.command,
                ORCHESTRA_TASK=spec.task_name, ORCHESTRA_JOB=str(spec.job_index), ORCHESTRA_ATTEMPT=str(spec.attempt),
            )
            try:
                log_fd = open_in(folder, log_name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644,
                                 shown=spec.log_path)
            except UntrustedPath as exc:
                return Launched(spec.backend_name, error=f"cannot open the log: {exc}")
            child = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER], stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, pass_fds=(fd,), close_fds=True,
            )
        except OSError as exc:
            return Launched(spec.backend_name, error=f"cannot start /bin/sh: {exc.strerror}")
        finally:
            _close(log_fd)
            _close(folder)
            os.close(fd)  # the child keeps the lock through its inherited descriptor
        self._children[spec.backend_name] = child
        return Launched(
            spec.backend_name, host=self.host, pid=child.pid, pid_start=process_start_time(child.pid),
            started_at=time.time(),
        )

    def _adopt(self, name: str, state: Path) -> Launched:
        self._adopted_running += 1  # not our child: no SIGCHLD will tell its end, poll until the next survey
        pid = _read_int(state / "pid")
        return Launched(name, host=self.host, pid=pid, pid_start=process_start_time(pid) if pid else None,
                        started_at=_mtime(state / "lock"))

    def reap(self) -> None:
        """Collect exited children of this process (they would linger as zombies)."""
        for name, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[name]

    def survey(self, tracked: Sequence[Tracked]) -> Survey:
        self.reap()
        survey = Survey()
        self._adopted_running = 0
        for item in tracked:
            if not item.log_path:
                survey.observations[item.backend_name] = Observation(item.backend_name, Phase.MISSING)
                continue
            seen = self._observe(item.backend_name, self.state_dir(item.log_path))
            survey.observations[item.backend_name] = seen
            if seen.phase == Phase.RUNNING and item.backend_name not in self._children:
                self._adopted_running += 1
        return survey

    def poll_after(self) -> float | None:
        """Our own children announce their end with SIGCHLD; processes adopted from an earlier
        scheduler cannot, so while any runs the loop looks every `ADOPTED_POLL` seconds."""
        return ADOPTED_POLL if self._adopted_running else None

    def _observe(self, name: str, state: Path) -> Observation:
        # Lock first: the exit file is written before the lock is released, never after.
        if _lock_held(state / "lock"):
            return Observation(name, Phase.RUNNING, host=self.host)
        code = _read_int(state / "exit")
        if code is None:
            return Observation(name, Phase.MISSING, reason="process gone without an exit status")
        ended = _mtime(state / "exit")
        phase = Phase.SUCCEEDED if code == 0 else Phase.FAILED
        reason = None if code == 0 else (f"killed by signal {code - 128}" if code > 128 else f"exit code {code}")
        return Observation(name, phase, exit_code=code, reason=reason, host=self.host, ended_at=ended)

    def _pid_of(self, item: Tracked) -> int | None:
        pid = item.pid or (_read_int(self.state_dir(item.log_path) / "pid") if item.log_path else None)
        if pid is None:
            return None
        started = process_start_time(pid)
        if started is None or (item.pid_start is not None and item.pid == pid and started != item.pid_start):
            return None  # gone, or the pid now belongs to another process
        return pid

    def kill(self, tracked: Sequence[Tracked], grace: float = 3.0) -> None:
        """SIGTERM each process group, then SIGKILL what is still there after `grace` seconds."""
        groups = [pid for pid in (self._pid_of(item) for item in tracked) if pid]
        for pid in groups:
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        locks = [self.state_dir(i.log_path) / "lock" for i in tracked if i.log_path]
        while time.monotonic() < deadline and any(_lock_held(lock) for lock in locks):
            self.reap()
            time.sleep(0.02)
        for pid in groups:
            _signal_group(pid, signal.SIGKILL)
        self.reap()

    def release(self, names: Sequence[str]) -> None:
        """Nothing to remove: the state directory stays beside the log."""

    def close(self) -> None:
        self.reap()


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise
