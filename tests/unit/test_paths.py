"""orchestra.paths: the scheduler touches only paths inside its storage, never through a link."""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import pytest

from orchestra.paths import UntrustedPath, open_dir, open_nofollow, safe_rmtree, trusted_output_root
from tests.helpers import intact


# ---------------------------------------------------------------------------------- trusted_output_root
def test_trusted_root_is_recomputed_inside_the_storage(storage: Path) -> None:
    assert trusted_output_root(storage, "alice", "user.alice.t") == storage / "alice" / "user.alice.t"
    # The storage is normalised; a root that does not exist yet is fine.
    assert trusted_output_root(storage / "x" / "..", "alice", "user.alice.t") == storage / "alice" / "user.alice.t"


@pytest.mark.parametrize("owner, task", [
    ("..", "x"), ("alice", ".."), ("alice", "../../victim"), ("../..", "victim"), (".", "."),
    ("alice", "/etc"), ("/", "etc"), ("alice", "a/b"), ("", "x"), ("alice", ""), ("alice", "x\0y"), (None, "x"),
])
def test_root_outside_the_storage_or_not_a_name_is_refused(storage: Path, owner: str, task: str) -> None:
    with pytest.raises(UntrustedPath):
        trusted_output_root(storage, owner, task)


def test_symlinked_component_is_refused(storage: Path, victim: Path) -> None:
    (storage / "alice").symlink_to(victim)
    with pytest.raises(UntrustedPath, match="symbolic link"):
        trusted_output_root(storage, "alice", "inner")
    (storage / "bob").mkdir()
    (storage / "bob" / "user.bob.t").symlink_to(victim)
    with pytest.raises(UntrustedPath, match="symbolic link"):
        trusted_output_root(storage, "bob", "user.bob.t")


def test_the_storage_itself_may_be_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert trusted_output_root(tmp_path / "link", "alice", "t") == tmp_path / "link" / "alice" / "t"


# ---------------------------------------------------------------------------------- safe_rmtree
def make_tree(root: Path) -> None:
    (root / "job_000000" / "sub").mkdir(parents=True)
    (root / "job_000000" / "out.txt").write_text("x")
    (root / "job_000000" / "sub" / "y").write_text("y")
    (root / ".attempts" / "orc-1-0-1").mkdir(parents=True)
    (root / ".attempts" / "orc-1-0-1" / "log").write_text("log")


def test_safe_rmtree_removes_a_tree(storage: Path) -> None:
    root = storage / "alice" / "t"
    make_tree(root)
    safe_rmtree(root, storage)
    assert not root.exists() and (storage / "alice").is_dir()
    safe_rmtree(root, storage)  # missing: nothing to do
    safe_rmtree(storage / "nobody" / "t", storage)


def test_safe_rmtree_removes_a_deep_tree_without_recursion_limit(storage: Path) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # one descriptor per level is held
    if soft != resource.RLIM_INFINITY and soft < 2048:
        if hard != resource.RLIM_INFINITY and hard < 2048:
            pytest.skip(f"needs 2048 open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    root = storage / "alice" / "t"
    root.mkdir(parents=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1200):  # deeper than Python's recursion limit
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    os.close(fd)
    safe_rmtree(root, storage)
    assert not root.exists()


@pytest.mark.parametrize("where", ["outside", "storage", "parent-of-storage", "dotdot"])
def test_safe_rmtree_refuses_outside_the_storage(storage: Path, victim: Path, where: str) -> None:
    target = {"outside": victim, "storage": storage, "parent-of-storage": storage.parent,
              "dotdot": storage / "alice" / ".." / ".." / "victim"}[where]
    with pytest.raises(UntrustedPath):
        safe_rmtree(target, storage)
    assert intact(victim) and storage.is_dir()


def test_safe_rmtree_on_a_link_to_a_victim_leaves_the_victim(storage: Path, victim: Path) -> None:
    (storage / "alice").mkdir()
    (storage / "alice" / "t").symlink_to(victim)
    with pytest.raises(UntrustedPath, match="symbolic link"):
        safe_rmtree(storage / "alice" / "t", storage)
    assert intact(victim)
    # A link higher up the path is refused too (the path goes through it).
    (storage / "bob").symlink_to(victim)
    with pytest.raises(UntrustedPath, match="symbolic link"):
        safe_rmtree(storage / "bob" / "inner", storage)
    assert intact(victim)


def test_inner_links_are_removed_not_followed(storage: Path, victim: Path) -> None:
    root = storage / "alice" / "t"
    make_tree(root)
    (root / "job_000000" / "to_dir").symlink_to(victim)
    (root / "job_000000" / "to_file").symlink_to(victim / "precious.txt")
    (root / "job_000000" / "sub" / "to_inner").symlink_to(victim / "inner")
    safe_rmtree(root, storage)
    assert not root.exists() and not os.path.lexists(root)
    assert intact(victim)


def test_shutil_rmtree_also_refuses_a_top_link_and_keeps_inner_targets(tmp_path: Path, victim: Path) -> None:
    """The behaviour safe_rmtree relies on being at least as strict as (checked, not assumed)."""
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        shutil.rmtree(link)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "inner_link").symlink_to(victim)
    shutil.rmtree(tree)
    assert not tree.exists() and intact(victim)


# ---------------------------------------------------------------------------------- writes
def test_a_log_part_linked_to_a_victim_file_is_not_written_through(storage: Path, victim: Path) -> None:
    state = storage / "alice" / "t" / ".attempts" / "orc-1-0-1"
    state.mkdir(parents=True)
    (state / "log.part").symlink_to(victim / "precious.txt")
    for flags in (os.O_WRONLY | os.O_CREAT | os.O_TRUNC, os.O_WRONLY | os.O_CREAT | os.O_APPEND):
        with pytest.raises(UntrustedPath, match="symbolic link"):
            open_nofollow(state / "log.part", flags)
        with pytest.raises(UntrustedPath, match="symbolic link"):
            open_nofollow(state / "log.part", flags, storage=storage)
    assert intact(victim)


def test_the_kubernetes_backend_refuses_to_save_a_log_through_a_link(storage: Path, victim: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """`_save_log` as the scheduler runs it when a pod ends (no API needed: a never-started pod)."""
    from orchestra.backends.base import Observation, Phase
    from orchestra.backends.kubernetes import KubernetesBackend
    from orchestra.config import ClusterConfig

    backend = KubernetesBackend.__new__(KubernetesBackend)
    backend.cluster = ClusterConfig("LPS", "kubernetes", storage, {}, "cpu", True)
    state = storage / "alice" / "t" / ".attempts" / "orc-1-0-1"
    never = Observation("orc-1-0-1", Phase.FAILED, reason="ImagePullBackOff: no such image")
    backend._save_log("orc-1-0-1", str(state / "log"), never)  # the normal case writes the note
    assert "never started" in (state / "log").read_text()
    (state / "log.part").symlink_to(victim / "precious.txt")
    with caplog.at_level(logging.WARNING):
        backend._save_log("orc-1-0-1", str(state / "log"), never)
    assert "refusing to save the log of pod orc-1-0-1" in caplog.text and "symbolic link" in caplog.text
    assert intact(victim)
    # The attempt's directory itself replaced by a link: refused as well.
    os.unlink(state / "log.part")
    shutil.rmtree(state)
    state.symlink_to(victim)
    backend._save_log("orc-1-0-1", str(state / "log"), never)
    assert intact(victim) and not (victim / "log").exists() and not (victim / "log.part").exists()
    # A log path outside the storage (a row changed by hand): refused.
    backend._save_log("orc-1-0-1", str(victim / "log"), never)
    assert not (victim / "log").exists()


def test_open_nofollow_refuses_a_linked_parent_and_links_on_the_way(storage: Path, victim: Path) -> None:
    (storage / "alice").mkdir()
    (storage / "alice" / "t").symlink_to(victim)
    with pytest.raises(UntrustedPath, match="symbolic link"):
        open_nofollow(storage / "alice" / "t" / "new.txt", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(UntrustedPath, match="symbolic link"):
        open_nofollow(storage / "alice" / "t" / "inner" / "new.txt", os.O_WRONLY | os.O_CREAT, storage=storage,
                      makedirs=True)
    assert sorted(p.name for p in victim.iterdir()) == ["inner", "precious.txt"]


def test_open_nofollow_refuses_fifos_and_hard_links(storage: Path, victim: Path) -> None:
    os.mkfifo(storage / "fifo")
    with pytest.raises(UntrustedPath, match="not a regular file"):
        open_nofollow(storage / "fifo", os.O_WRONLY | os.O_CREAT)  # would block without O_NONBLOCK
    os.link(victim / "precious.txt", storage / "hard")
    with pytest.raises(UntrustedPath, match="hard links"):
        open_nofollow(storage / "hard", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert intact(victim)


def test_open_nofollow_writes_and_makes_directories(storage: Path) -> None:
    target = storage / "alice" / "t" / ".attempts" / "a" / "log"
    fd = open_nofollow(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, storage=storage, makedirs=True)
    os.write(fd, b"hello")
    os.close(fd)
    fd = open_nofollow(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, storage=storage)
    os.write(fd, b"hi")
    os.close(fd)
    assert target.read_text() == "hi"
    with pytest.raises(UntrustedPath, match="outside"):
        open_nofollow(storage.parent / "elsewhere", os.O_WRONLY | os.O_CREAT, storage=storage)
    with pytest.raises(FileNotFoundError):
        os.close(open_dir(storage / "missing" / "dir", storage))


def test_local_backend_refuses_a_linked_state_dir(storage: Path, victim: Path, tmp_path: Path) -> None:
    """The attempt state lives in the scheduler's own directory; should a link be there anyway
    (an admin's mistake, a job in the personal mode), the launch is refused, nothing written."""
    from orchestra.backends.base import LaunchSpec
    from orchestra.backends.local import LocalBackend
    from orchestra.config import ClusterConfig, QueueConfig, load_settings
    from orchestra.paths import state_root
    from tests.helpers import write_config

    queue = QueueConfig(name="cpu", slots=1, cpu=1.0, memory="1Gi", gpu=0)
    cluster = ClusterConfig("LPS", "local", storage, {"cpu": queue}, "cpu", False)
    settings = load_settings({"ORCHESTRA_CONFIG": str(write_config(tmp_path / "o.toml", storage)),
                              "ORCHESTRA_HOME": str(tmp_path)})
    installation = f"inst-{uuid.uuid4().hex[:12]}"  # its own cgroups, whatever runs beside it
    state = state_root(storage, installation)
    state.mkdir(parents=True)
    (state / "orc-1-0-1").symlink_to(victim)
    root = storage / "alice" / "t"
    spec = LaunchSpec("orc-1-0-1", 1, "t", 1, 0, 1, "alice", queue, "img", "echo hi", str(root / "job_000000"),
                      str(state / "orc-1-0-1" / "log"), None, cluster)
    backend = LocalBackend(cluster, settings, installation)
    [launched] = backend.launch([spec])
    assert launched.error and "symbolic link" in launched.error and launched.pid is None
    assert sorted(p.name for p in victim.iterdir()) == ["inner", "precious.txt"]
    backend.close()
