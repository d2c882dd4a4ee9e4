"""`maestro queue`, `maestro job why` and `maestro usage` against the real scheduler cycle (null backend),
on SQLite and PostgreSQL: reasons, positions that match what the next cycle dispatches, JSON."""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from orchestra import fairshare
from orchestra.backends.null import NullBackend
from orchestra.config import load_settings
from orchestra.db.models import Attempt, Job, Task, User
from orchestra.scheduler.cycle import Scheduler
from orchestra.services.queue import policy_input
from tests.helpers import ADMIN, Cli

TAU = 7 * 86400 / math.log(2)  # default half-life: one running cpu job weighs tau slot-seconds


@pytest.fixture
def world(cli: Cli, storage: Path) -> Path:
    for name, n in (("configs", 12), ("few", 5)):
        (storage / name).mkdir()
        for i in range(n):
            (storage / name / f"c{i:02d}").write_text(str(i))
    (storage / "data").write_text("d")
    cli.ok(f"orchestra_registry -d user.alice.configs -p {storage / 'configs'} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.few -p {storage / 'few'} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.data -p {storage / 'data'} --cluster LPS")
    return storage


def create(cli: Cli, user: str, name: str, configs: str = "configs", extra: str = "--bypass") -> None:
    cli.ok(f"maestro task create -c user.alice.{configs} -d user.alice.data -t user.{user}.{name} "
           f"--containerImage x/img --exec 'run %DATA %IN %OUT' {extra}", user=user)


def queue(cli: Cli, args: str = "") -> list[dict]:
    report = json.loads(cli.ok(f"maestro queue --json {args}").out)
    return report["rows"]


def set_cpu_slots(env: dict[str, str], scheduler: Scheduler, slots: int) -> None:
    path = Path(env["ORCHESTRA_CONFIG"])
    text = path.read_text()
    head, tail = text.split("[clusters.LPS.queues.cpu]", 1)
    lines = tail.splitlines()
    lines = [f"slots = {slots}" if line.startswith("slots =") and i < 3 else line for i, line in enumerate(lines)]
    path.write_text(head + "[clusters.LPS.queues.cpu]" + "\n".join(lines) + "\n")
    scheduler.settings = scheduler.ctx.settings = load_settings()


def started_job_ids(scheduler: Scheduler) -> set[int]:
    with scheduler.ctx.transaction() as session:
        return set(session.scalars(select(Attempt.job_id)))


def test_slots_full_positions_and_the_next_cycle_agree(cli: Cli, world: Path, env: dict[str, str],
                                                        sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, _ = sched
    create(cli, "alice", "a")
    scheduler.cycle()  # 4 of alice's 12 jobs run: the queue is full
    create(cli, "bob", "b", "few")
    create(cli, "carol", "c", "few")
    scheduler.cycle()  # expands bob's and carol's tasks; no slot for them
    rows = queue(cli)
    by_task = {r["task"]: r for r in rows}
    assert set(by_task) == {"user.alice.a", "user.bob.b", "user.carol.c"}
    full = "no free slot in queue LPS/cpu (4 of 4 in use)"
    assert all(r["reason"] == full and r["state"] == "queued" for r in rows), rows
    assert [by_task[t]["pending"] for t in ("user.alice.a", "user.bob.b", "user.carol.c")] == [8, 5, 5]
    # bob and carol run nothing: they alternate (ties go to the older user), alice (4 running) comes after
    assert [by_task[t]["position"] for t in ("user.bob.b", "user.carol.c", "user.alice.a")] == [1, 2, 11]
    assert [r["task"] for r in rows] == ["user.bob.b", "user.carol.c", "user.alice.a"]
    a, b = by_task["user.alice.a"], by_task["user.bob.b"]
    assert a["factors"]["fairshare"] < b["factors"]["fairshare"] == 1.0
    assert b["total"] == pytest.approx(sum(b["weighted"].values()))
    assert b["weighted"]["scout"] == 0 and b["scouts"] is False

    jobs = queue(cli, "--jobs --limit 100")
    assert [r["position"] for r in jobs] == list(range(1, 19))
    assert [r["user"] for r in jobs[:10]] == ["bob", "carol"] * 5 and {r["user"] for r in jobs[10:]} == {"alice"}
    first = jobs[0]
    bobs = queue(cli, "-u bob --jobs")
    expected = [(r["job_id"], r["position"]) for r in jobs if r["user"] == "bob"]
    assert [(r["job_id"], r["position"]) for r in bobs] == expected
    assert [r["position"] for r in bobs] == [1, 3, 5, 7, 9]
    cut = cli.ok("maestro queue --json --jobs --limit 4")
    limited = json.loads(cut.out)
    assert [r["position"] for r in limited["rows"]] == [1, 2, 3, 4] and limited["jobs_truncated"] is True
    assert limited["jobs_shown"] == 4 and limited["pending_jobs"] >= 18  # never silent: said on stderr too
    assert f"4 of {limited['pending_jobs']} shown (--limit 0 for all)" in cut.err
    everything = queue(cli, "--jobs --limit 0")  # 0: all
    assert [r["position"] for r in everything if r["position"]] == list(range(1, 19))
    assert len(everything) == len(jobs)

    # one more slot: the job at position 1 is "next in line", and it is the one the cycle starts
    set_cpu_slots(env, scheduler, 5)
    rows = queue(cli)
    assert rows[0]["task"] == "user.bob.b"
    assert rows[0]["reason"] == "next in line: starts at the next cycle (1 of its 5)"
    assert rows[1]["reason"] == ("no free slot in queue LPS/cpu (4 of 5 in use; the 1 free slot(s) go to jobs "
                                 "ahead in line at the next cycle)")
    why = json.loads(cli.ok(f"maestro job why {first['job_id']} --json").out)
    assert why["position"] == 1 and why["reason"] == "next in line: starts at the next cycle"
    before = started_job_ids(scheduler)
    assert scheduler.cycle().counts["started"] == 1
    assert started_job_ids(scheduler) - before == {first["job_id"]}

    # three more: positions 1..3 of the new order start
    jobs = queue(cli, "--jobs --limit 100")
    assert jobs[0]["user"] == "carol" and [r["position"] for r in jobs[:3]] == [1, 2, 3]
    set_cpu_slots(env, scheduler, 8)
    before = started_job_ids(scheduler)
    assert scheduler.cycle().counts["started"] == 3
    assert started_job_ids(scheduler) - before == {r["job_id"] for r in jobs[:3]}
    assert "job" in cli.ok("maestro queue --jobs").out  # the table renders


def test_policy_input_is_what_the_scheduler_plans(cli: Cli, world: Path, env: dict[str, str],
                                                  sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, _ = sched
    create(cli, "alice", "a")
    create(cli, "bob", "b", "few", extra="--priority 5")
    scheduler.cycle()
    create(cli, "carol", "c", "few", extra="")  # scouting
    scheduler.cycle()
    set_cpu_slots(env, scheduler, 9)  # 5 free cpu slots to share out
    for now in (2e9, 2e9 + 86400 * 30):
        with scheduler.ctx.transaction() as session:
            plan, info = scheduler._plan(session, now)
            view = policy_input(session, scheduler.settings, now)
        take = fairshare.allocate(view.inp, scheduler.settings.fairshare)
        assert sum(n for _, n in plan) == 5
        # What dispatch needs of each task, read by the same statement: its owner's name and its own.
        assert {task_id: (i.id, i.cluster, i.queue) for task_id, i in info.items()} == {
            t.id: (t.id, t.cluster, t.queue) for t in view.tasks}
        assert all(i.name.startswith(f"user.{i.user}.") and i.image for i in info.values())
        assert sorted(plan) == sorted((view.tasks[i].id, int(take[i])) for i in np.flatnonzero(take))
    assert view.queues == [("LPS", "cpu"), ("LPS", "gpu"), ("OTHER", "cpu")]
    assert view.busy.tolist() == [4, 0, 0] and view.free.tolist() == (view.slots - view.busy).tolist()
    assert view.free[:2].tolist() == [5, 1]


def test_cap_reached(cli: Cli, world: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, _ = sched
    cli.ok("orchestra user set alice --max-running 2", user=ADMIN)
    create(cli, "alice", "a")
    scheduler.cycle()
    [row] = queue(cli)
    assert row["reason"] == "user's running cap reached (2 of 2)" and row["position"] is None
    assert row["pending"] == 10 and row["total"] is not None
    jobs = queue(cli, "--jobs --limit 3")
    assert [(r["position"], r["reason"]) for r in jobs] == [(None, "user's running cap reached (2 of 2)")] * 3
    [usage] = json.loads(cli.ok("maestro usage -u alice --json").out)["rows"]
    assert (usage["cap"], usage["cap_from"], usage["running"], usage["queued"]) == (2, "user", 2, 10)
    assert "2" in cli.ok("maestro usage").out


def test_scouts_registered_and_held(cli: Cli, world: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, backend = sched
    create(cli, "bob", "busy", extra="--bypass")
    create(cli, "alice", "s", extra="")  # 12 jobs, 3 scouts
    listed = queue(cli)
    assert [r["state"] for r in listed] == ["registered", "registered"]
    registered = listed[1]
    assert registered["task"] == "user.alice.s" and registered["pending"] == 12
    assert registered["reason"] == "task held: waiting for the scheduler to expand it (next cycle)"
    scheduler.cycle()
    # scouts go before anything else: alice's 3 scouts run, bob got the 4th slot
    rows = {(r["task"], r["state"]): r for r in queue(cli)}
    assert set(rows) == {("user.bob.busy", "queued"), ("user.alice.s", "held")}
    held = rows[("user.alice.s", "held")]
    assert held["pending"] == 9 and held["position"] is None
    assert held["reason"] == ("waiting for scouts of this task to finish: 0 of 3 succeeded, 0 failed; "
                              "3 successes release it")
    with scheduler.ctx.transaction() as session:
        held_job = session.scalar(select(Job.id).join(Task).where(Task.name == "user.alice.s", Job.status == "held"))
    assert cli.ok(f"maestro job why {held_job}").out.count("waiting for scouts") == 1
    scouts = [n for n in backend.running if n.startswith(f"orc-{scheduler.installation[:8]}-{held['task_id']}-")]
    backend.finish(scouts[:1])
    scheduler.cycle()
    [held] = [r for r in queue(cli) if r["state"] == "held"]
    assert "1 of 3 succeeded, 0 failed" in held["reason"]
    backend.finish(scouts[1:])
    scheduler.cycle()  # all 3 succeeded: released, and 2 of its jobs take the two freed slots
    rows = {(r["task"], r["state"]): r for r in queue(cli)}
    assert rows[("user.alice.s", "queued")]["pending"] == 7 and ("user.alice.s", "held") not in rows


def test_scouts_jump_the_queue(cli: Cli, world: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, _ = sched
    create(cli, "bob", "busy", extra="--bypass")
    scheduler.cycle()  # bob fills the 4 slots
    create(cli, "alice", "s", extra="")
    scheduler.cycle()  # expanded: 3 scouts queued, 9 held
    rows = {(r["task"], r["state"]): r for r in queue(cli)}
    scouts = rows[("user.alice.s", "queued")]
    assert scouts["scouts"] and scouts["pending"] == 3 and scouts["position"] == 1
    assert scouts["weighted"]["scout"] > 0 and scouts["total"] > rows[("user.bob.busy", "queued")]["total"]
    assert scouts["reason"] == "no free slot in queue LPS/cpu (4 of 4 in use)"
    assert rows[("user.alice.s", "held")]["pending"] == 9
    piped = cli.ok("maestro queue -u alice")
    table = piped.out
    assert "3 scouts" in table and "waiting for scouts" in table and "user.bob.busy" not in table
    # piped: the lines above the table go to stderr, so stdout stays TSV
    assert "local jobs run as the scheduler's own account" in piped.err  # the tests' run_jobs_as = "scheduler"


def test_killed_task_is_shown_until_its_jobs_stop(cli: Cli, world: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, _ = sched
    create(cli, "alice", "a")
    scheduler.cycle()
    cli.ok("maestro task kill -t user.alice.a")
    [row] = queue(cli, "-t user.alice.a")
    assert row["state"] == "stopping"
    assert row["reason"] == ("task being killed: its 4 running job(s) are being stopped "
                             "(SIGTERM, then SIGKILL after the grace)")
    scheduler.cycle()  # the kill is sent; the attempts stay live until the backend says they are gone
    assert [r["state"] for r in queue(cli, "-t user.alice.a")] == ["stopping"]
    scheduler.cycle()
    assert queue(cli) == []
    assert "no pending jobs" in cli.ok("maestro queue").err  # piped: stdout is the TSV header alone


def test_usage_numbers(cli: Cli, world: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, _ = sched
    cli.ok("orchestra user set bob --share 3", user=ADMIN)
    create(cli, "alice", "a")
    scheduler.cycle()
    rows = {r["user"]: r for r in json.loads(cli.ok("maestro usage --json").out)["rows"]}
    alice, bob = rows["alice"], rows["bob"]
    assert (alice["running"], alice["queued"], alice["held"], alice["ranked"]) == (4, 8, 0, True)
    assert alice["effective_slot_hours"] == pytest.approx(alice["usage_slot_hours"] + 4 * TAU / 3600)
    assert alice["norm_share"] == 1.0 and alice["norm_usage"] == 1.0 and alice["fairshare"] == 0.5
    [qrow] = queue(cli)
    assert qrow["factors"]["fairshare"] == pytest.approx(alice["fairshare"])
    # bob queues nothing: his factor is the one he would have if he queued now (no usage: 1)
    assert bob["ranked"] is False and bob["fairshare"] == 1.0 and bob["norm_share"] == 0.75
    out = cli.ok("maestro usage").out
    assert "1.000*" in out and "alice" in out


@pytest.mark.parametrize("line, message", [
    ("maestro queue -u nobody", "user 'nobody' is unknown"),
    ("maestro usage -u nobody", "user 'nobody' is unknown"),
    ("maestro queue -t user.alice.nope", "task 'user.alice.nope' does not exist"),
    ("maestro queue --jobs --format pos,nope", "--format: unknown column(s) nope; use a comma-separated list of: pos,"),
    ("maestro job why 12345", "job 12345 does not exist"),
])
def test_bad_input(cli: Cli, world: Path, line: str, message: str) -> None:
    result = cli(line)
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("error: ") and message in result.err and result.err.count("\n") == 1


def test_queue_removed_from_the_configuration(cli: Cli, world: Path, env: dict[str, str],
                                               sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, _ = sched
    create(cli, "alice", "g", "few", extra="--bypass --queue gpu")
    scheduler.cycle()  # 1 gpu slot: one runs, 4 wait
    path = Path(env["ORCHESTRA_CONFIG"])
    text = path.read_text()
    start = text.index("[clusters.LPS.queues.gpu]")
    path.write_text(text[:start] + text[text.index("[clusters.OTHER]"):])
    [row] = queue(cli)
    assert row["pending"] == 4 and row["position"] is None
    assert row["reason"] == "queue LPS/gpu is not in the configuration: nothing can start (ask an admin)"


def test_a_short_pass_charges_what_ended_and_a_full_cycle_everything(
        cli: Cli, world: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, backend = sched
    create(cli, "alice", "a")
    scheduler.cycle()  # 4 of 12 start
    time.sleep(0.2)
    first = sorted(backend.running)[0]
    backend.finish([first])
    scheduler.cycle(full=False)  # records the end, charges only that attempt, refills the slot

    def state() -> tuple[float, dict[str, float | None]]:
        with scheduler.ctx.transaction() as session:
            usage = session.scalar(select(User.usage).where(User.name == "alice"))
            marks = dict(session.execute(select(Attempt.backend_name, Attempt.charged_until)).all())
        return usage, marks

    usage, marks = state()
    with scheduler.ctx.transaction() as session:
        started = session.scalar(select(Attempt.started_at).where(Attempt.backend_name == first))
    assert marks[first] is not None and usage >= 0.2
    assert usage == pytest.approx(marks[first] - started, rel=1e-3)  # one job's seconds (cpu weight 1), decayed a hair
    assert [n for n, mark in marks.items() if mark is not None] == [first]  # the live ones wait for a full cycle
    time.sleep(0.1)
    scheduler.cycle()
    usage_after, marks = state()
    assert all(mark is not None for mark in marks.values())
    assert usage_after >= usage + 3 * 0.3  # the three that ran since the start, charged now


def test_accounts_share_slots_through_the_real_cycle(cli: Cli, world: Path, env: dict[str, str],
                                                     sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, _ = sched
    path = Path(env["ORCHESTRA_CONFIG"])
    path.write_text(path.read_text() + '\n[accounts.physics]\nshare = 2\nusers = ["alice", "bob"]\n')
    set_cpu_slots(env, scheduler, 6)
    create(cli, "alice", "a")
    create(cli, "carol", "c")
    scheduler.cycle()  # flat shares would give 3 and 3; physics (alice) holds 2/3 of the slots
    rows = {r["user"]: r for r in json.loads(cli.ok("maestro usage --json").out)["rows"]}
    assert (rows["alice"]["running"], rows["carol"]["running"]) == (4, 2)
    assert rows["alice"]["account"] == "physics" and rows["carol"]["account"] is None
    assert rows["alice"]["norm_share"] == pytest.approx(2 / 3) and rows["carol"]["norm_share"] == pytest.approx(1 / 3)
    assert "physics" in cli.ok("maestro usage").out


def test_a_kill_settles_the_killed_attempts_charge_up_to_their_end(
        cli: Cli, world: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, _ = sched
    create(cli, "alice", "a")
    scheduler.cycle()  # 4 start
    time.sleep(0.2)
    cli.ok("maestro task kill -t user.alice.a")
    scheduler.cycle()  # reconcile charges them up to its start; the kill is sent
    scheduler.cycle()  # their end is seen: charged up to it, in the same write
    with scheduler.ctx.transaction() as session:
        killed = session.execute(select(Attempt.charged_until, Attempt.ended_at).where(Attempt.status == "killed")).all()
        usage = session.scalar(select(User.usage).where(User.name == "alice"))
    assert len(killed) == 4 and all(until == ended for until, ended in killed)
    assert usage >= 4 * 0.2


def test_the_cycle_line_says_what_each_step_cost(cli: Cli, world: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, backend = sched
    create(cli, "alice", "a")
    line = scheduler.cycle().line()
    assert re.fullmatch(r"cycle: jobs expanded 12, started 4 \(\d+ ms: reconcile \d+, requests \d+, expand \d+, "
                        r"tasks \d+, dispatch \d+, launch \d+\)", line), line
    backend.finish(sorted(backend.running)[:1])
    line = scheduler.cycle(full=False).line()
    assert re.fullmatch(r"short pass: started 1, succeeded 1 \(\d+ ms\)", line), line
    assert re.fullmatch(r"cycle: nothing to do \(\d+ ms: reconcile \d+, requests \d+, expand \d+, tasks \d+, "
                        r"dispatch \d+\)", scheduler.cycle().line())
