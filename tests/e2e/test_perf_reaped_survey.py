"""Issue 18, the local backend's per-job file system work: the survey tells an own child that
exited 0 as succeeded from its exit status (reaped by that survey), without reading its state
files, while every other end still comes from the files, with its reason; launches make their
state directory in a state root opened once (reached again if it is removed under them), and
output directories are 0750 whatever the scheduler's umask. Real subprocesses, a real LocalBackend."""
from __future__ import annotations

import os
import shutil
import stat
import sys
import time
import uuid
from pathlib import Path

import pytest

from orchestra.backends.base import LaunchSpec, Phase, Tracked
from orchestra.backends.local import LocalBackend, process_start_time
from orchestra.config import ClusterConfig, QueueConfig, load_settings
from orchestra.paths import state_root
from tests.helpers import write_config


INST = "inst"  # this test's installation (see `_own_installation`)


@pytest.fixture(autouse=True)
def _own_installation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own installation, hence its own cgroups: two tests run at once (xdist
    workers) with the same attempt names shared `inst/orc-1-0-1`, and each supervisor waited
    for the other's to leave the group, for ever."""
    monkeypatch.setattr(sys.modules[__name__], "INST", f"inst-{uuid.uuid4().hex[:12]}")


def _backend(storage: Path, tmp_path: Path) -> tuple[LocalBackend, ClusterConfig, QueueConfig]:
    queue = QueueConfig(name="cpu", slots=4, cpu=1.0, memory="1Gi", gpu=0)
    cluster = ClusterConfig("LPS", "local", storage, {"cpu": queue}, "cpu", False)
    settings = load_settings({"ORCHESTRA_CONFIG": str(write_config(tmp_path / "o.toml", storage)),
                              "ORCHESTRA_HOME": str(tmp_path)})
    return LocalBackend(cluster, settings, INST), cluster, queue


def _spec(storage: Path, cluster: ClusterConfig, queue: QueueConfig, index: int, command: str) -> LaunchSpec:
    name = f"orc-1-{index}-1"
    return LaunchSpec(name, 1, "t", index, index, 1, "alice", queue, "img", command,
                      str(storage / "alice" / "t" / f"job_{index:06d}"),
                      str(state_root(storage, INST) / name / "log"), None, cluster)


def _ended(backend: LocalBackend, names: list[str]) -> None:
    """Until every supervisor has exited (not reaped: `survey` reaps them)."""
    deadline = time.monotonic() + 60
    for name in names:
        child = backend._children[name]
        while True:
            try:
                if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break
            except ChildProcessError:
                break
            assert time.monotonic() < deadline, f"{name} did not end"
            time.sleep(0.01)


def test_an_own_child_that_exited_0_succeeds_without_its_files_and_a_failure_keeps_its_reason(
        storage: Path, tmp_path: Path) -> None:
    backend, cluster, queue = _backend(storage, tmp_path)
    try:
        ok, failed = (_spec(storage, cluster, queue, 0, "true"), _spec(storage, cluster, queue, 1, "exit 3"))
        launched = backend.launch([ok, failed])
        assert all(one.pid for one in launched)
        _ended(backend, [ok.backend_name, failed.backend_name])
        state = state_root(storage, INST)
        assert (state / ok.backend_name / "exit").read_text().strip() == "0"
        (state / ok.backend_name / "exit").unlink()  # gone: the exit status alone must tell
        before = time.time()
        survey = backend.survey([Tracked(s.backend_name, s.log_path) for s in (ok, failed)])
        seen_ok, seen_failed = (survey.observations[s.backend_name] for s in (ok, failed))
        assert seen_ok.phase == Phase.SUCCEEDED and seen_ok.exit_code == 0 and seen_ok.ended_at >= before - 1
        assert seen_failed.phase == Phase.FAILED and seen_failed.exit_code == 3
        assert seen_failed.reason == "exit code 3"
        # Reaped once: the next survey reads the files, as for an adopted process (no exit file:
        # no status; the lock is free and no supervisor runs, so it is gone without one).
        again = backend.survey([Tracked(ok.backend_name, ok.log_path)]).observations[ok.backend_name]
        assert again.phase == Phase.MISSING
    finally:
        backend.close()


def test_a_launch_leaves_the_start_time_for_later_and_only_an_own_unreaped_child_has_one(
        storage: Path, tmp_path: Path) -> None:
    """The answer carries the supervisor's pid, not its start time (read just after the spawn it
    waited for the exec under way); `start_time_of` reads it later, while the supervisor is still
    this backend's child (a zombie included), and never for a pid it no longer owns."""
    backend, cluster, queue = _backend(storage, tmp_path)
    try:
        spec = _spec(storage, cluster, queue, 0, "true")
        [launched] = backend.launch([spec])
        assert launched.pid and launched.pid_start is None and launched.error is None
        _ended(backend, [spec.backend_name])  # exited, not reaped: a zombie, its stat still there
        start = backend.start_time_of(spec.backend_name, launched.pid)
        assert start is not None and start == process_start_time(launched.pid)
        assert backend.start_time_of(spec.backend_name, launched.pid + 1) is None  # not the pid it launched
        assert backend.start_time_of("orc-9-9-9", launched.pid) is None  # not a name it launched
        backend.survey([Tracked(spec.backend_name, spec.log_path)])  # reaps it: the pid may be reused now
        assert backend.start_time_of(spec.backend_name, launched.pid) is None
    finally:
        backend.close()


def test_a_state_root_removed_under_the_backend_is_made_again(storage: Path, tmp_path: Path) -> None:
    backend, cluster, queue = _backend(storage, tmp_path)
    try:
        first = _spec(storage, cluster, queue, 0, "true")
        [launched] = backend.launch([first])
        assert launched.pid and launched.error is None
        _ended(backend, [first.backend_name])
        backend.survey([Tracked(first.backend_name, first.log_path)])
        shutil.rmtree(state_root(storage, INST))  # an admin's cleanup while the scheduler runs
        second = _spec(storage, cluster, queue, 1, "true")
        [launched] = backend.launch([second])
        assert launched.pid and launched.error is None
        _ended(backend, [second.backend_name])
        assert (state_root(storage, INST) / second.backend_name / "exit").read_text().strip() == "0"
    finally:
        backend.close()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_output_directories_are_0750_whatever_the_umask(storage: Path, tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        backend, cluster, queue = _backend(storage, tmp_path)
        try:
            spec = _spec(storage, cluster, queue, 0, "true")
            Path(spec.output_dir).parent.mkdir(parents=True)
            [launched] = backend.launch([spec])
            assert launched.pid
            _ended(backend, [spec.backend_name])
            assert stat.S_IMODE(os.stat(spec.output_dir).st_mode) == 0o750
        finally:
            backend.close()
    finally:
        os.umask(old)


def test_the_launch_probe_is_written_into_the_lock_file_not_a_file_of_its_own(storage: Path, tmp_path: Path) -> None:
    """The bytes that test the storage before a job runs (a full disk refuses them) go into the
    attempt's lock, already open: one file creation less per attempt. An interrupted earlier
    launch's lock (its directory made, the job never started) gets its old bytes cut off."""
    backend, cluster, queue = _backend(storage, tmp_path)
    try:
        first, again = (_spec(storage, cluster, queue, i, "true") for i in (0, 1))
        state = state_root(storage, INST)
        (state / again.backend_name).mkdir(parents=True)
        (state / again.backend_name / "lock").write_text("x" * 4096 + "\n")  # no pid, no exit: never ran
        before = time.time()
        launched = backend.launch([first, again])
        assert all(one.pid and one.error is None for one in launched)
        _ended(backend, [first.backend_name, again.backend_name])
        for spec in (first, again):
            folder = state / spec.backend_name
            assert sorted(os.listdir(folder)) == ["exit", "lock", "log", "pid"]
            host, pid, when = (folder / "lock").read_text().split()
            assert (host, int(pid)) == (backend.host, os.getpid()) and before - 1 <= float(when) <= time.time()
        backend.survey([Tracked(s.backend_name, s.log_path) for s in (first, again)])
    finally:
        backend.close()
