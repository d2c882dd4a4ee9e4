"""Issue 18: the local backend's supervisor starts no more processes than it must, and still
leaves its pid and exit status where the scheduler reads them (no temporary files left behind)."""
from __future__ import annotations

import fcntl
import os
import stat
import subprocess
from pathlib import Path

from orchestra.backends.local import WRAPPER, _make_output_dir, job_environment


def run_wrapper(tmp_path: Path, command: str, output: Path) -> tuple[int, Path]:
    state = tmp_path / "state"
    state.mkdir()
    env = job_environment(os.environ, home=str(tmp_path), user="test")
    env.update(ORCHESTRA_OUTPUT=str(output), ORCHESTRA_COMMAND=command, _ORC_STATE=str(state), _ORC_JOIN="",
               _ORC_RUNAS="")
    lock = os.open(state / "lock", os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    log = os.open(state / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        child = subprocess.Popen(["/bin/sh", "-c", WRAPPER], stdin=lock, stdout=log, stderr=subprocess.STDOUT,
                                 env=env, start_new_session=True, close_fds=True)
        return child.wait(), state
    finally:
        os.close(log)
        os.close(lock)


def test_the_wrapper_records_pid_and_status_in_place(tmp_path: Path) -> None:
    output = tmp_path / "out" / "job_000000"
    job = 'read -r me _ < /proc/self/stat; echo "$me" > pid.job; echo "$$" > dollar.job; pwd; exit 3'
    code, state = run_wrapper(tmp_path, job, output)
    assert code == 3
    assert (state / "exit").read_text() == "3\n"
    pid = int((state / "pid").read_text())
    assert pid > 0 and pid != int((output / "pid.job").read_text())  # the job is a process of its own
    assert int((output / "dollar.job").read_text()) == pid  # a subshell's $$ is its parent's (documented)
    assert sorted(p.name for p in state.iterdir()) == ["exit", "lock", "log", "pid"]  # no *.tmp
    assert (state / "log").read_text().strip() == str(output)  # it ran in its output directory
    assert stat.S_IMODE(output.stat().st_mode) == 0o750 and stat.S_IMODE(output.parent.stat().st_mode) == 0o750


def test_the_job_sees_none_of_the_wrappers_variables(tmp_path: Path) -> None:
    code, state = run_wrapper(tmp_path, 'env | grep -c "^_ORC_" ; echo "[$st$join$runas$rc$f$p$left]"', tmp_path / "o")
    assert code == 0
    assert (state / "log").read_text().split() == ["0", "[]"]


def test_the_output_directory_made_ahead_is_the_wrappers(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        _make_output_dir(str(tmp_path / "a"))
        _make_output_dir(str(tmp_path / "missing" / "b"))  # parent missing: left to the wrapper's mkdir -p
        _make_output_dir(str(tmp_path / "a"))  # exists: unchanged, no error
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o750
    assert not (tmp_path / "missing").exists()
