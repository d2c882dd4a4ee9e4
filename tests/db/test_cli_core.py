"""The seed's workflow through the CLIs, on SQLite and PostgreSQL, as a user types it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from orchestra.db.engine import make_engine
from orchestra.db.models import DatasetFile, Job, Task
from orchestra.scheduler.expand import expand_task
from orchestra.services.context import Context
from tests.helpers import ADMIN, Cli, nonzero


def make_files(root: Path, n: int = 5) -> tuple[Path, Path]:
    configs = root / "files" / "my_config_files"
    configs.mkdir(parents=True)
    for i in range(n):
        (configs / f"config_{i}.json").write_text(f'{{"i": {i}}}')
    data = root / "files" / "my_data_file.pic"
    data.write_text("data")
    return configs, data


@pytest.fixture
def registered(cli: Cli, storage: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(storage)
    make_files(storage)
    cli.ok("orchestra_registry.py -d user.alice.my_data_file.pic -p files/my_data_file.pic --cluster LPS")
    cli.ok("orchestra_registry.py -d user.alice.my_config_files -p files/my_config_files/ --cluster LPS")
    return storage


CREATE = ('maestro.py task create -c user.alice.my_config_files -d user.alice.my_data_file.pic '
          '-t user.alice.my_task --containerImage alice/my_orchestra_tutorial '
          '--exec "python3 /job_tuning.py -d %DATA -c %IN -o %OUT"')


def test_registry_records_files(cli: Cli, registered: Path) -> None:
    shown = cli.ok("maestro dataset show -d user.alice.my_config_files")
    # piped: the files are the TSV on stdout, the dataset's own lines go to stderr
    assert "5 file(s)" in shown.err and "config_4.json" in shown.out and shown.out.startswith("size\tpath\n")
    rows = json.loads(cli.ok("maestro dataset list --json").out)
    assert {r["name"]: r["n_files"] for r in rows} == {"user.alice.my_data_file.pic": 1, "user.alice.my_config_files": 5}
    assert rows[0]["path"] == str(registered / "files" / "my_data_file.pic")


def test_seed_workflow_create_list_retry_delete(cli: Cli, registered: Path) -> None:
    out = cli.ok(CREATE + " --bypass").out
    assert "created task user.alice.my_task" in out and "5 job(s)" in out
    listing = cli.ok("maestro.py task list -u alice").out
    assert "user.alice.my_task" in listing and "registered" in listing
    assert cli("maestro.py task retry -t user.alice.my_task").code == 1  # nothing ran yet
    rows = json.loads(cli.ok("maestro task list --json").out)
    assert rows[0]["status"] == "registered" and rows[0]["n_jobs"] == 5
    assert "deleted user.alice.my_task" in cli.ok("maestro.py task delete -t user.alice.my_task --yes").out
    assert json.loads(cli.ok("maestro task list --json").out) == []


def test_dry_run_writes_nothing(cli: Cli, registered: Path) -> None:
    out = cli.ok(CREATE + " --dry-run").out
    assert "would have 5 job(s)" in out and "3 scout(s)" in out
    assert f"-c {registered}/files/my_config_files/config_0.json" in out
    assert f"-o {registered}/alice/user.alice.my_task/job_000000" in out
    assert json.loads(cli.ok("maestro task list --json").out) == []


def test_expansion_inserts_jobs_with_scouts(cli: Cli, registered: Path, env: dict[str, str]) -> None:
    cli.ok(CREATE)
    ctx = Context.from_env()
    with ctx.transaction() as session:
        task_id = session.scalar(select(Task.id))
        assert expand_task(session, task_id) == 5
        jobs = session.execute(select(Job.index, Job.status, Job.is_scout).order_by(Job.index)).all()
        task = session.get(Task, task_id)
        assert task.status == "scouting" and task.n_queued == 3
    assert [(i, s) for i, s, scout in jobs if scout] == [(0, "queued"), (2, "queued"), (4, "queued")]
    assert {s for _, s, scout in jobs if not scout} == {"held"}
    ctx.engine.dispose()


def test_kill_and_retry_pending_task(cli: Cli, registered: Path) -> None:
    cli.ok(CREATE + " --bypass")
    ctx = Context.from_env()
    with ctx.transaction() as session:
        expand_task(session, session.scalar(select(Task.id)))
    ctx.engine.dispose()
    assert "killed user.alice.my_task" in cli.ok("maestro task kill -t user.alice.my_task").out
    detail = json.loads(cli.ok("maestro task show -t 1 --json").out)
    assert detail["summary"]["status"] == "killed" and nonzero(detail["summary"]["counts"]) == {"killed": 5}
    assert "re-queued 5 job(s)" in cli.ok("maestro task retry -t user.alice.my_task").out
    assert nonzero(json.loads(cli.ok("maestro task show -t 1 --json").out)["summary"]["counts"]) == {"queued": 5}


def test_other_users_task_is_refused_but_admin_may(cli: Cli, registered: Path) -> None:
    cli.ok(CREATE)
    result = cli("maestro task delete -t user.alice.my_task --yes", user="bob")
    assert result.code == 1 and "only its owner or an admin" in result.err
    cli.ok("maestro task kill -t user.alice.my_task", user=ADMIN)


def test_dataset_in_use_cannot_be_deleted(cli: Cli, registered: Path) -> None:
    cli.ok(CREATE)
    result = cli("maestro dataset delete -d user.alice.my_config_files --yes")
    assert result.code == 1 and "used by unfinished task(s) user.alice.my_task" in result.err
    cli.ok("maestro task kill -t user.alice.my_task")
    cli.ok("maestro dataset delete -d user.alice.my_config_files --yes")
    detail = json.loads(cli.ok("maestro task show -t user.alice.my_task --json").out)
    assert detail["config_dataset"] is None


def test_large_directory_is_recorded_in_order(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    big = storage / "big"
    (big / "sub").mkdir(parents=True)
    for i in range(1500):
        (big / ("sub" if i % 2 else ".") / f"f{i:05d}").write_text("x")
    cli.ok(f"orchestra_registry -d user.alice.big -p {big}")
    engine = make_engine(env["ORCHESTRA_DATABASE_URL"])
    with engine.connect() as conn:
        paths = conn.execute(select(DatasetFile.path).order_by(DatasetFile.position)).scalars().all()
        assert conn.execute(select(func.count()).select_from(DatasetFile)).scalar() == 1500
    engine.dispose()
    assert paths == sorted(paths)
