"""SQLite is the personal mode: one OS user, database file 0600, anyone else refused in one line."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestra.db.engine import connect, make_engine
from orchestra.errors import OrchestraError

ROOT = Path(__file__).resolve().parents[2]
SITE = sysconfig.get_paths()["purelib"]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def use(url: str) -> None:
    """What every command does: connect (schema brought up to date) and write."""
    engine = connect(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        wal = Path(engine.url.database + "-wal")
        assert wal.exists()  # WAL mode: it lives while a connection is open
        assert mode(wal) == 0o600
    finally:
        engine.dispose()


def test_a_new_database_file_is_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db = tmp_path / "sub" / "orchestra.db"
        use(f"sqlite:///{db}")
    finally:
        os.umask(old)
    assert mode(db) == 0o600 and mode(db.parent) & 0o700 == 0o700


def test_a_loose_database_file_of_ours_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "orchestra.db"
    use(f"sqlite:///{db}")
    for path in (db, tmp_path / "orchestra.db-wal", tmp_path / "orchestra.db-shm"):
        path.touch()
        os.chmod(path, 0o644)
    make_engine(f"sqlite:///{db}").dispose()
    assert mode(db) == mode(tmp_path / "orchestra.db-wal") == mode(tmp_path / "orchestra.db-shm") == 0o600
    use(f"sqlite:///{db}")  # still a working database
    assert mode(db) == 0o600


def test_memory_database_is_untouched() -> None:
    make_engine("sqlite://").dispose()
    make_engine("sqlite:///:memory:").dispose()


# ------------------------------------------------------------------------------ another OS user
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: changing a file's owner and running "
                                                           "a command as another OS user")


@needs_root
def test_a_file_of_another_uid_is_refused_before_connecting(tmp_path: Path) -> None:
    db = tmp_path / "orchestra.db"
    use(f"sqlite:///{db}")
    os.chown(db, 54321, 54321)  # no such user: named by its uid
    with pytest.raises(OrchestraError) as refused:
        make_engine(f"sqlite:///{db}")
    message = str(refused.value)
    assert "\n" not in message and "single-user" in message and "uid 54321" in message
    assert "postgresql://" in message and "ORCHESTRA_DATABASE_URL" in message


@pytest.fixture
def other_user() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creating an OS user (useradd) and running the CLI as it (runuser)")
    if not (shutil.which("useradd") and shutil.which("userdel") and shutil.which("runuser")):
        pytest.skip("needs useradd, userdel and runuser")
    name = f"orchestra-t-{uuid.uuid4().hex[:8]}"
    made = subprocess.run([shutil.which("useradd") or "useradd", "--no-create-home", "--shell", "/bin/sh", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run([shutil.which("userdel") or "userdel", name], capture_output=True)


def runuser() -> str:
    return shutil.which("runuser") or "runuser"


PROGRAM = ("import site, sys; site.addsitedir({site!r}); sys.path.insert(0, {root!r}); "
           "from orchestra.cli.maestro import main; sys.argv[0] = 'maestro'; main()")


def interpreter_for(user: str, env: dict[str, str]) -> list[str]:
    """A Python the other user can run with this environment's packages: the tests' own one, else
    the same version from the system (a venv's interpreter may live under /root, mode 0700)."""
    candidates = [sys.executable]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if system and os.path.realpath(system) != os.path.realpath(sys.executable):
        candidates.append(system)
    why = []
    for python in candidates:
        probe = [python, "-c", PROGRAM.format(site=SITE, root=str(ROOT)).replace("main()", "None")]
        out = subprocess.run([runuser(), "-u", user, "--", *probe], env=env, capture_output=True, text=True,
                             timeout=60)
        if out.returncode == 0:
            return [python, "-c", PROGRAM.format(site=SITE, root=str(ROOT))]
        why.append(f"{python}: {(out.stderr.strip().splitlines() or ['exit %d' % out.returncode])[-1]}")
    pytest.skip("no Python the other user may run with Orchestra's packages (" + "; ".join(why) + ")")


def test_another_os_user_gets_one_line_and_no_traceback(other_user: str) -> None:
    shared = Path(tempfile.mkdtemp(prefix="orchestra-shared-"))  # pytest's tmp dirs are 0700
    theirs = Path(tempfile.mkdtemp(prefix="orchestra-theirs-"))
    try:
        os.chmod(shared, 0o755)
        os.chmod(theirs, 0o755)
        db = shared / "orchestra.db"
        use(f"sqlite:///{db}")  # root's personal database
        assert mode(db) == 0o600
        closed = shared / "closed"
        closed.mkdir(mode=0o700)
        home = theirs / "home"
        home.mkdir()
        uid = int(subprocess.run(["id", "-u", other_user], capture_output=True, text=True, check=True).stdout)
        os.chown(home, uid, -1)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "ORCHESTRA_HOME": str(home)}
        python = interpreter_for(other_user, env)
        for url, expected in ((f"sqlite:///{db}", "belongs to root (uid 0)"),
                              (f"sqlite:///{closed}/orchestra.db", "Permission denied")):
            out = subprocess.run([runuser(), "-u", other_user, "--", *python, "task", "list"],
                                 env={**env, "ORCHESTRA_DATABASE_URL": url}, capture_output=True, text=True,
                                 timeout=60)
            assert out.returncode != 0, out
            lines = out.stderr.splitlines()
            assert len(lines) == 1 and "Traceback" not in out.stderr and out.stdout == "", out
            assert "single-user" in lines[0] and expected in lines[0] and "postgresql://" in lines[0], lines[0]
        assert mode(db) == 0o600 and os.stat(db).st_uid == 0
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(theirs, ignore_errors=True)
