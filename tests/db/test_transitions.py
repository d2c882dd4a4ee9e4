"""Task states and users' actions, on SQLite and PostgreSQL: every (state, action) pair of kill,
retry and delete, with the CLI's exit code and line, the state it leaves, and that the task is never
stuck: scheduler cycles (null backend; every dispatched job succeeds) until the `--until-idle` test
says nothing can run without a user's action, ending in a final state. Plus the two bugs of
issue 14 (a retry of a task killed before expansion; the queued scouts of a broken task) and the
`--until-idle` summary line."""
from __future__ import annotations

import time

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from orchestra.backends.null import NullBackend
from orchestra.config import load_settings
from orchestra.db.models import Job, Task
from orchestra.scheduler.cycle import Scheduler
from orchestra.scheduler.loop import idle_summary
from orchestra.services.context import Context
from orchestra.states import FINAL_TASK, TASK_TRANSITIONS, USER_ACTIONS, TaskAction, TaskStatus, can_move
from tests.e2e.scheduler_helpers import make_inputs, run_scheduler
from tests.helpers import Cli, nonzero

TASK = "user.alice.t"
GONE = "gone"
N_JOBS = 6  # 3 scouts (tests/helpers.py CONFIG), 4 cpu slots, 1 gpu slot
NOTHING_LEFT = "idle: nothing queued or running"


def waiting_line(status: str) -> str:
    return f"idle: 1 task {status}; nothing can run without a user's action"


@pytest.fixture
def world(cli: Cli, storage: Path) -> Path:
    configs, data = make_inputs(storage, N_JOBS)
    cli.ok(f"orchestra_registry -d user.alice.configs -p {configs}/ --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.data -p {data} --cluster LPS")
    return storage


@dataclass
class Orc:
    """The CLIs and an in-process scheduler on the null backend: jobs end when the test says."""

    cli: Cli
    scheduler: Scheduler
    backend: NullBackend

    @property
    def ctx(self) -> Context:
        return self.scheduler.ctx

    def create(self, extra: str = "", name: str = TASK) -> None:
        self.cli.ok(f"maestro task create -c user.alice.configs -d user.alice.data -t {name} "
                    f"--containerImage x/img --exec 'run %DATA %IN %OUT' {extra}")

    def status(self, name: str = TASK) -> str:
        with self.ctx.transaction() as session:
            return session.scalar(select(Task.status).where(Task.name == name)) or GONE

    def jobs(self, name: str = TASK) -> dict[int, tuple[str, str | None]]:
        with self.ctx.transaction() as session:
            rows = session.execute(select(Job.index, Job.status, Job.reason).join(Task).where(Task.name == name))
            return {i: (s, r) for i, s, r in rows}

    def counts(self, name: str = TASK) -> dict[str, int]:
        """What `maestro task list` counts."""
        rows = json.loads(self.cli.ok("maestro task list --json").out)
        return next((nonzero(r["counts"]) for r in rows if r["name"] == name), {})

    def check_counters(self) -> None:
        """Every task's n_queued is its number of queued jobs (what the policy and the idle test read)."""
        with self.ctx.transaction() as session:
            queued = dict(session.execute(select(Job.task_id, func.count()).where(Job.status == "queued")
                                          .group_by(Job.task_id)).all())
            for task_id, n_queued, status in session.execute(select(Task.id, Task.n_queued, Task.status)):
                assert n_queued == queued.get(task_id, 0), (status, n_queued, queued)

    def cycle(self) -> None:
        before = self.status()
        self.scheduler.cycle()
        self.check_counters()
        after = self.status()
        assert after == GONE or can_move(TaskStatus(before), TaskStatus(after)), (before, after)

    def finish(self, exit_code: int = 0, n: int | None = None) -> None:
        running = sorted(self.backend.running)
        self.backend.finish(running[:n] if n is not None else running, exit_code)

    def until_idle(self, exit_code: int = 0, limit: int = 40) -> str:
        """Cycles until `--until-idle` would stop (every job started meanwhile ends with
        `exit_code`); its summary line. A task that never settles fails the test."""
        for _ in range(limit):
            self.cycle()
            line = idle_summary(self.ctx)
            if line is not None:
                return line
            self.finish(exit_code)
        raise AssertionError(f"stuck: {TASK} is still {self.status()} after {limit} cycles: {self.jobs()}")


@pytest.fixture
def orc(cli: Cli, world: Path, env: dict[str, str]) -> Iterator[Orc]:
    backend = NullBackend()
    scheduler = Scheduler(Context.from_env(), backends={"LPS": backend})
    assert scheduler.lease.try_acquire()
    yield Orc(cli, scheduler, backend)
    scheduler.ctx.engine.dispose()


# ------------------------------------------------------------------ the states, reached as users do
def _registered(orc: Orc) -> None:
    orc.create()


def _scouting(orc: Orc) -> None:
    orc.create()
    orc.cycle()  # 3 scouts running, 3 jobs held


def _running(orc: Orc) -> None:
    orc.create("--bypass")
    orc.cycle()  # 4 jobs running, 2 queued


def _completed(orc: Orc) -> None:
    orc.create("--bypass")
    assert orc.until_idle() == NOTHING_LEFT


def _partial(orc: Orc) -> None:
    orc.create("--bypass --max-retries 0")
    orc.cycle()
    orc.finish(1, n=1)  # one job fails for good, the others succeed
    assert orc.until_idle() == waiting_line("partial")


def _broken(orc: Orc) -> None:
    orc.create("--queue gpu")  # one slot: one scout runs, two wait
    orc.cycle()
    orc.finish(1)  # the running scout fails: 80 % of 3 scouts can no longer succeed
    assert orc.until_idle() == waiting_line("broken")


def _killed(orc: Orc) -> None:
    orc.create("--bypass")
    orc.cycle()
    orc.cli.ok(f"maestro task kill -t {TASK}")  # 2 queued jobs killed now, 4 running ones by the scheduler
    assert orc.until_idle() == waiting_line("killed")


def _killed_before_expansion(orc: Orc) -> None:
    orc.create()
    orc.cli.ok(f"maestro task kill -t {TASK}")


def _killed_before_expansion_bypass(orc: Orc) -> None:
    orc.create("--bypass")
    orc.cli.ok(f"maestro task kill -t {TASK}")


STATES: dict[str, tuple[Callable[[Orc], None], str, dict[str, int]]] = {
    # name: (how to get there, the task's status, its job counts in `task list`)
    "registered": (_registered, "registered", {}),
    "scouting": (_scouting, "scouting", {"running": 3, "held": 3}),
    "running": (_running, "running", {"running": 4, "queued": 2}),
    "completed": (_completed, "completed", {"succeeded": 6}),
    "partial": (_partial, "partial", {"succeeded": 5, "failed": 1}),
    "broken": (_broken, "broken", {"failed": 1, "killed": 2, "held": 3}),
    "killed": (_killed, "killed", {"killed": 6}),
    "killed-before-expansion": (_killed_before_expansion, "killed", {}),
    "killed-before-expansion-bypass": (_killed_before_expansion_bypass, "killed", {}),
}

STOPPING = f"{TASK}: jobs are being killed; the scheduler removes it next pass"
REGISTERED_AGAIN = (f"{TASK} had no jobs yet: it is registered again and will be expanded again at the "
                    "scheduler's next cycle")


def already(status: str) -> str:
    return f"error: task '{TASK}' is already {status}; nothing to kill"


def no_redo(status: str) -> str:
    return f"error: task '{TASK}' is {status} and has no failed or killed jobs; nothing to retry"


# (state, action): exit code, the CLI's one line, the status right after, the status once idle
EXPECTED: dict[tuple[str, str], tuple[int, str, str, str]] = {
    ("registered", "kill"): (0, f"killed {TASK}", "killed", "killed"),
    ("registered", "retry"): (1, f"error: task '{TASK}' has not been expanded into jobs yet; nothing to retry",
                              "registered", "completed"),
    ("registered", "delete"): (0, f"deleted {TASK}", GONE, GONE),
    ("scouting", "kill"): (0, f"killed {TASK}; running jobs stop in the scheduler's next pass", "killed", "killed"),
    ("scouting", "retry"): (1, no_redo("scouting"), "scouting", "completed"),
    ("scouting", "delete"): (0, STOPPING, "killed", GONE),
    ("running", "kill"): (0, f"killed {TASK}; running jobs stop in the scheduler's next pass", "killed", "killed"),
    ("running", "retry"): (1, no_redo("running"), "running", "completed"),
    ("running", "delete"): (0, STOPPING, "killed", GONE),
    ("completed", "kill"): (1, already("completed"), "completed", "completed"),
    ("completed", "retry"): (1, f"error: every job of task '{TASK}' succeeded; nothing to retry", "completed",
                             "completed"),
    ("completed", "delete"): (0, f"deleted {TASK}", GONE, GONE),
    ("partial", "kill"): (1, already("partial"), "partial", "partial"),
    ("partial", "retry"): (0, f"re-queued 1 job(s) of {TASK}", "running", "completed"),
    ("partial", "delete"): (0, f"deleted {TASK}", GONE, GONE),
    ("broken", "kill"): (1, already("broken"), "broken", "broken"),
    ("broken", "retry"): (0, f"re-queued 3 job(s) of {TASK}; its scouts run first, the other jobs stay held",
                          "scouting", "completed"),
    ("broken", "delete"): (0, f"deleted {TASK}", GONE, GONE),
    ("killed", "kill"): (1, already("killed"), "killed", "killed"),
    ("killed", "retry"): (0, f"re-queued 6 job(s) of {TASK}", "running", "completed"),
    ("killed", "delete"): (0, f"deleted {TASK}", GONE, GONE),
    ("killed-before-expansion", "kill"): (1, already("killed"), "killed", "killed"),
    ("killed-before-expansion", "retry"): (0, REGISTERED_AGAIN, "registered", "completed"),
    ("killed-before-expansion", "delete"): (0, f"deleted {TASK}", GONE, GONE),
    ("killed-before-expansion-bypass", "kill"): (1, already("killed"), "killed", "killed"),
    ("killed-before-expansion-bypass", "retry"): (0, REGISTERED_AGAIN, "registered", "completed"),
    ("killed-before-expansion-bypass", "delete"): (0, f"deleted {TASK}", GONE, GONE),
}


def test_the_table_covers_every_state_and_action() -> None:
    assert {status for _, status, _ in STATES.values()} == set(TaskStatus)
    assert {(STATES[s][1], a) for s, a in EXPECTED} == set(USER_ACTIONS) == {
        (s, a) for s in TaskStatus for a in TaskAction}
    for old, targets in TASK_TRANSITIONS.items():  # a final state moves only by a user's action
        if old in FINAL_TASK:
            assert targets == frozenset().union(*(m.to for (s, _), m in USER_ACTIONS.items() if s == old)) - {old}


@pytest.mark.parametrize("state,action", list(EXPECTED), ids=[f"{s}-{a}" for s, a in EXPECTED])
def test_every_action_at_every_state(orc: Orc, state: str, action: str) -> None:
    reach, status, counts = STATES[state]
    code, line, right_after, settled = EXPECTED[(state, action)]
    reach(orc)
    assert orc.status() == status
    assert orc.counts() == counts
    jobs_before = orc.jobs()
    result = orc.cli(f"maestro task {action} -t {TASK}" + (" --yes" if action == "delete" else ""))
    printed = (result.out if result.code == 0 else result.err).strip()
    assert (result.code, printed) == (code, line)
    assert orc.status() == right_after
    orc.check_counters()
    move = USER_ACTIONS[(TaskStatus(status), TaskAction(action))]
    if code:  # refused: one line, nothing written
        assert not move.allowed or move.needs_redo
        assert orc.jobs() == jobs_before
    elif right_after == GONE:
        assert move.gone
    else:
        assert TaskStatus(right_after) in move.to and can_move(TaskStatus(status), TaskStatus(right_after))
    # Never stuck: the scheduler settles it, every job it starts succeeding, and stops.
    idle = orc.until_idle()
    assert orc.status() == settled
    assert settled == GONE or TaskStatus(settled) in FINAL_TASK
    assert idle == (NOTHING_LEFT if settled in (GONE, "completed") else waiting_line(settled))
    if settled == "completed":
        assert orc.counts() == {"succeeded": N_JOBS}


# ------------------------------------------------------------------ regressions (issue 14, item 4)
@pytest.mark.parametrize("bypass", [False, True], ids=["scouts", "bypass"])
def test_a_task_killed_before_expansion_is_expanded_again_by_a_retry(orc: Orc, bypass: bool) -> None:
    """Was: "re-queued 0 job(s)", then `scouting` with no job forever (`--until-idle` never
    returned); with --bypass, no retry at all."""
    orc.create("--bypass" if bypass else "")
    assert orc.cli.ok(f"maestro task kill -t {TASK}").out.strip() == f"killed {TASK}"
    assert orc.jobs() == {}
    assert orc.cli.ok(f"maestro task retry -t {TASK}").out.strip() == REGISTERED_AGAIN
    detail = json.loads(orc.cli.ok(f"maestro task show -t {TASK} --json").out)["summary"]
    assert (detail["status"], detail["reason"]) == ("registered", None)
    orc.cycle()  # expanded again
    assert orc.status() == ("running" if bypass else "scouting") and len(orc.jobs()) == N_JOBS
    assert orc.until_idle() == NOTHING_LEFT
    assert orc.status() == "completed" and orc.counts() == {"succeeded": N_JOBS}


def test_a_task_broken_at_expansion_is_retried_without_getting_stuck(orc: Orc) -> None:
    """Killed before expansion, its config dataset deleted, then retried: the expansion breaks it
    (no job rows); a retry expands it again, and it breaks again with the same reason."""
    orc.create()
    orc.cli.ok(f"maestro task kill -t {TASK}")
    orc.cli.ok("maestro dataset delete -d user.alice.configs --yes")
    assert orc.cli.ok(f"maestro task retry -t {TASK}").out.strip() == REGISTERED_AGAIN
    assert orc.until_idle() == waiting_line("broken")
    reason = json.loads(orc.cli.ok(f"maestro task show -t {TASK} --json").out)["summary"]["reason"]
    assert reason == "its datasets were deleted before it started" and orc.jobs() == {}
    assert orc.cli.ok(f"maestro task retry -t {TASK}").out.strip() == REGISTERED_AGAIN
    assert orc.until_idle() == waiting_line("broken")


def test_a_broken_task_kills_its_queued_scouts_and_keeps_the_rest_held(orc: Orc) -> None:
    """Was: the scouts that had not started stayed `queued` forever (`job why`: "waiting for the
    next cycle", `maestro queue`: nothing pending, `task list`: counted queued)."""
    orc.create("--queue gpu")  # one slot: one scout runs, two wait
    orc.cycle()
    assert orc.counts() == {"running": 1, "queued": 2, "held": 3}
    orc.finish(1)
    orc.cycle()
    assert orc.status() == "broken"
    reason = json.loads(orc.cli.ok(f"maestro task show -t {TASK} --json").out)["summary"]["reason"]
    assert reason.startswith("its scouts failed (exit code ")
    jobs = orc.jobs()
    killed = {i for i, (s, _) in jobs.items() if s == "killed"}
    assert len(killed) == 2 and {jobs[i][1] for i in killed} == {f"its task is broken: {reason}"}
    assert sorted(s for s, _ in jobs.values()) == ["failed", "held", "held", "held", "killed", "killed"]
    assert orc.counts() == {"failed": 1, "killed": 2, "held": 3}
    header, row = [line.split("\t") for line in orc.cli.ok("maestro task list").out.splitlines()]  # piped: TSV
    shown = dict(zip(header, row))
    # the table's columns are the JSON's state names, and killed jobs are counted as killed
    assert {s: int(shown[s]) for s in orc.counts()} == {"failed": 1, "killed": 2, "held": 3}
    assert (shown["queued"], shown["running"], shown["succeeded"], shown["progress"]) == ("0", "0", "0", "3/6"), shown
    job_id = next(j["id"] for j in json.loads(orc.cli.ok(f"maestro job list -t {TASK} --json").out)
                  if j["index"] in killed)
    why = json.loads(orc.cli.ok(f"maestro job why {job_id} --json").out)
    assert why["reason"] == f"finished: killed (its task is broken: {reason})"
    held_id = next(j["id"] for j in json.loads(orc.cli.ok(f"maestro job list -t {TASK} --json").out)
                   if j["status"] == "held")
    assert json.loads(orc.cli.ok(f"maestro job why {held_id} --json").out)["reason"] == "held: task is broken"
    assert json.loads(orc.cli.ok("maestro queue --json").out)["rows"] == []
    usage = json.loads(orc.cli.ok("maestro usage --json").out)["rows"]
    assert all(r["queued"] == 0 for r in usage)
    assert orc.until_idle() == waiting_line("broken")
    # A retry scouts again: the failed and the killed scouts are queued, the rest stays held.
    out = orc.cli.ok(f"maestro task retry -t {TASK}").out.strip()
    assert out == f"re-queued 3 job(s) of {TASK}; its scouts run first, the other jobs stay held"
    assert orc.status() == "scouting" and orc.counts() == {"queued": 3, "held": 3}
    assert orc.until_idle() == NOTHING_LEFT and orc.counts() == {"succeeded": N_JOBS}


def test_a_scout_still_running_when_its_task_breaks_ends_on_its_own(orc: Orc) -> None:
    orc.create()
    orc.cycle()  # the 3 scouts run
    orc.finish(1, n=1)
    orc.cycle()
    assert orc.status() == "broken" and orc.counts() == {"failed": 1, "running": 2, "held": 3}
    assert idle_summary(orc.ctx) is None  # its scouts are live
    assert orc.until_idle() == waiting_line("broken")
    assert orc.counts() == {"failed": 1, "succeeded": 2, "held": 3}


# ------------------------------------------------------------------ the --until-idle summary
def test_until_idle_stops_at_a_held_queue_and_says_why(orc: Orc) -> None:
    """Jobs queued in a held queue (its storage full, say) wait for the hold's probe, minutes away
    and often for an admin: `--until-idle` says so and stops instead of backing off for ever."""
    from sqlalchemy import insert

    from orchestra.db.models import QueueHold

    now = time.time()
    with orc.ctx.transaction() as session:
        session.execute(insert(QueueHold).values(cluster="LPS", queue="cpu", reason="storage full (test)",
                                                 since=now, retry_at=now + 3600, backoff=300.0, tries=3))
    orc.create("--bypass")
    assert orc.until_idle() == ("idle: 1 task running; 6 queued job(s) in LPS/cpu, held: storage full (test); "
                                "nothing can run without a user's action")
    assert orc.counts() == {"queued": 6}  # nothing started, nothing charged


def test_until_idle_reports_what_waits_for_a_user(orc: Orc, env: dict[str, str]) -> None:
    config = Path(env["ORCHESTRA_CONFIG"])
    text = config.read_text()
    config.write_text(text.replace("[clusters.LPS.queues.gpu]\nslots = 1", "[clusters.LPS.queues.gpu]\nslots = 0"))
    orc.scheduler.settings = orc.ctx.settings = load_settings()
    orc.create("--queue gpu")  # a queue without slots: its 3 scouts can never start
    orc.create("", name="user.alice.k")
    orc.cli.ok("maestro task kill -t user.alice.k")
    orc.create("--bypass", name="user.alice.done")
    line = orc.until_idle()
    assert line == ("idle: 1 task scouting, 1 killed; 3 queued job(s) in queues without slots; "
                    "nothing can run without a user's action")
    assert orc.status("user.alice.done") == "completed"


def test_the_scheduler_service_until_idle(cli: Cli, world: Path) -> None:
    """`orchestra scheduler run --until-idle` with real processes: tasks killed before expansion
    and retried complete, a broken one and a killed one remain, and its last line says so."""

    def create(name: str, command: str, extra: str = "") -> None:
        cli.ok(f"maestro task create -c user.alice.configs -d user.alice.data -t user.alice.{name} "
               f"--containerImage x/img --exec '{command}' {extra}")

    for name, extra in (("again", ""), ("again_bypass", "--bypass"), ("stopped", "")):
        create(name, "echo %DATA %IN %OUT", extra)
        cli.ok(f"maestro task kill -t user.alice.{name}")
    for name in ("again", "again_bypass"):
        assert "expanded again" in cli.ok(f"maestro task retry -t user.alice.{name}").out
    create("broken", "echo no %IN >&2; exit 3; %DATA %OUT")
    result = run_scheduler("--until-idle", "--interval", "1", timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line.split(" ", 2)[-1] for line in result.stderr.splitlines()]  # without the time stamp
    idle = [i for i, line in enumerate(lines) if line.startswith("idle:")]
    assert idle and lines[idle[-1]] == "idle: 1 task broken, 1 killed; nothing can run without a user's action"
    assert all("stopped" in line for line in lines[idle[-1] + 1:]), lines  # at most the service's stop line
    rows = {r["name"]: r for r in json.loads(cli.ok("maestro task list --json").out)}
    assert rows["user.alice.again"]["status"] == rows["user.alice.again_bypass"]["status"] == "completed"
    assert nonzero(rows["user.alice.again"]["counts"]) == {"succeeded": N_JOBS}
    broken = rows["user.alice.broken"]
    assert broken["status"] == "broken" and broken["counts"].get("queued", 0) == 0
    assert broken["counts"]["failed"] >= 1 and broken["counts"]["held"] == N_JOBS - 3
