"""datasets.list_files: the job order of a dataset is the sorted order of its files' whole paths,
whatever the directory layout, with each size beside its path."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from orchestra.services.datasets import list_files, walk_files


def make(root: Path, files: dict[str, int]) -> None:
    for name, size in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)


def test_one_directory_sorted_with_sizes(tmp_path: Path) -> None:
    make(tmp_path, {f"f{i:03d}": i for i in (5, 1, 42, 0, 7)})
    paths, sizes = list_files(tmp_path)
    assert paths == [str(tmp_path / f"f{i:03d}") for i in (0, 1, 5, 7, 42)]
    assert sizes == [0, 1, 5, 7, 42]


def test_nested_directories_sort_by_whole_path_not_by_directory(tmp_path: Path) -> None:
    # As strings "a-b" < "a.c" < "a/sub/z" < "a/x" < "a0" ('-' 0x2d, '.' 0x2e, '/' 0x2f, '0' 0x30),
    # while sorting each directory's entries would put the directory "a" first: the job order is
    # the plain sort of the whole paths.
    files = {"a/y": 3, "a/x": 2, "a-b": 1, "a.c": 4, "a0": 5, "a/sub/z": 6, "b": 7}
    make(tmp_path, files)
    paths, sizes = list_files(tmp_path)
    expected = sorted(str(tmp_path / name) for name in files)
    assert paths == expected
    assert sizes == [files[os.path.relpath(p, tmp_path)] for p in expected]
    assert list(walk_files(tmp_path)) == list(zip(paths, sizes))


def test_links_are_followed_and_a_loop_is_named(tmp_path: Path) -> None:
    make(tmp_path / "data", {"one": 1})
    (tmp_path / "data" / "two").symlink_to(tmp_path / "elsewhere")
    make(tmp_path / "elsewhere", {"x": 2})
    paths, sizes = list_files(tmp_path / "data")
    assert paths == [str(tmp_path / "data" / "one"), str(tmp_path / "data" / "two" / "x")] and sizes == [1, 2]
    (tmp_path / "data" / "loop").symlink_to(tmp_path / "data")
    with pytest.raises(OSError) as caught:
        list_files(tmp_path / "data")
    assert caught.value.errno == errno.ELOOP and caught.value.filename == str(tmp_path / "data" / "loop")


def test_empty_directory_lists_nothing(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert list_files(tmp_path) == ([], [])


def test_a_large_directory_is_statted_by_two_processes_with_the_same_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestra.services import datasets

    make(tmp_path / "data", {f"f{i:03d}": i for i in range(40)})
    make(tmp_path / "data" / "sub", {"inner": 3})
    (tmp_path / "data" / "zz-broken").symlink_to(tmp_path / "nowhere")  # in the child's half: skipped
    (tmp_path / "data" / "zz-link").symlink_to(tmp_path / "data" / "f001")
    serial = list_files(tmp_path / "data")
    real_fork, forks = os.fork, []
    real_serial, here = datasets._stat_serial, []
    monkeypatch.setattr(datasets, "PARALLEL_STAT_MIN", 8)
    monkeypatch.setattr(datasets, "may_fork", lambda: True)
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or real_fork())
    monkeypatch.setattr(datasets, "_stat_serial", lambda *a: here.append(len(a[1])) or real_serial(*a))
    assert list_files(tmp_path / "data") == serial
    assert len(forks) == 1  # the top directory (43 entries) only; "sub" has one
    assert here == [21, 1]  # this process stats its half of the top and "sub": the child's half came back
    assert serial[0][-3:] == [str(tmp_path / "data" / n) for n in ("f039", "sub/inner", "zz-link")]
    assert serial[1][-3:] == [39, 3, 1]


def test_an_error_in_the_childs_half_is_raised_naming_the_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestra.services import datasets

    make(tmp_path, {f"f{i:03d}": 1 for i in range(20)})
    (tmp_path / "zz-loop").symlink_to(tmp_path / "zz-loop")  # stat: ELOOP, in the child's half
    monkeypatch.setattr(datasets, "PARALLEL_STAT_MIN", 8)
    monkeypatch.setattr(datasets, "may_fork", lambda: True)
    with pytest.raises(OSError) as caught:
        list_files(tmp_path)
    assert caught.value.errno == errno.ELOOP and caught.value.filename == str(tmp_path / "zz-loop")


def test_no_child_is_forked_while_another_thread_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from orchestra.services import datasets

    make(tmp_path, {f"f{i:03d}": i for i in range(20)})
    monkeypatch.setattr(datasets, "PARALLEL_STAT_MIN", 8)
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked beside another thread"))
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert not datasets.may_fork()
        assert list_files(tmp_path)[1] == list(range(20))
    finally:
        release.set()
        other.join()


def test_an_error_in_this_process_half_still_waits_for_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestra.services import datasets

    make(tmp_path, {f"f{i:03d}": 1 for i in range(20)})
    (tmp_path / "a-loop").symlink_to(tmp_path / "a-loop")  # stat: ELOOP, in this process's half
    real_fork, children = os.fork, []

    def fork() -> int:
        pid = real_fork()
        if pid:
            children.append(pid)
        return pid

    monkeypatch.setattr(datasets, "PARALLEL_STAT_MIN", 8)
    monkeypatch.setattr(datasets, "may_fork", lambda: True)
    monkeypatch.setattr(os, "fork", fork)
    with pytest.raises(OSError) as caught:
        list_files(tmp_path)
    assert caught.value.errno == errno.ELOOP and caught.value.filename == str(tmp_path / "a-loop")
    [child] = children
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # already waited for: no zombie left behind
