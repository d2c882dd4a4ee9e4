"""Tasks that start after others: `task create --after A,B` (when A and B are completed) and
`--after-any A,B` (when they are in any final state).

A dependency is recorded once, when the dependent is created, and names a task that exists then,
so the graph only ever grows by a new task pointing at older ones: a cycle can only be a task
naming itself, which is refused. Dependencies are between tasks of one owner: a dependency
keeps its task from being deleted while dependents wait for it (`check_no_waiting_dependents`),
and one user must not be able to pin another's task that way.

A waiting task stays REGISTERED: the scheduler does not expand it (`ready_clause`), `task show` and
`maestro queue` say what it waits for (`describe`), and `--until-idle` counts it as waiting for a
user when nothing else can run. When an `--after` dependency ends partial, broken or killed, the
dependent says so and keeps waiting: `task retry` of the dependency revives it, and when that
completes, the dependent starts. Nothing is written while waiting; all of it is read on demand.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, exists, insert, not_, or_, select
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from orchestra.db.models import Job, Task, TaskDependency, User
from orchestra.errors import OrchestraError
from orchestra.states import FINAL_TASK, TaskStatus

AFTER = "after"
AFTER_ANY = "after_any"
OPTION = {AFTER: "--after", AFTER_ANY: "--after-any"}
FINAL = tuple(s.value for s in FINAL_TASK)
# An --after dependency in one of these can no longer complete without its owner's action.
DEAD_END = (TaskStatus.PARTIAL.value, TaskStatus.BROKEN.value, TaskStatus.KILLED.value)


@dataclass(frozen=True)
class Dependency:
    """One dependency of a task, with the dependency's state now."""

    task_id: int
    name: str
    status: str
    kind: str  # AFTER or AFTER_ANY

    @property
    def satisfied(self) -> bool:
        if self.kind == AFTER:
            return self.status == TaskStatus.COMPLETED
        return self.status in FINAL

    @property
    def dead_end(self) -> bool:
        return self.kind == AFTER and self.status in DEAD_END


def split_names(values: Sequence[str] | str | None) -> list[str]:
    """`A,B` (or the option repeated) -> [A, B], in order, without blanks or repeats."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for name in item.split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out


def resolve(session: Session, task_name: str, owner: str, after: Sequence[str],
            after_any: Sequence[str]) -> list[Dependency]:
    """Each dependency named on the command line, with its state now, checked: it exists, it is
    not the new task itself, it belongs to `owner`, and it is not being deleted."""
    from orchestra.services.tasks import find

    both = set(after) & set(after_any)
    if both:
        name = sorted(both)[0]
        raise OrchestraError(f"{name} is given to both --after and --after-any; keep it in one of them")
    out: list[Dependency] = []
    for kind, names in ((AFTER, after), (AFTER_ANY, after_any)):
        for ref in names:
            if ref == task_name:
                raise OrchestraError(f"{OPTION[kind]} {ref}: a task cannot wait for itself "
                                     f"(cycle {ref} -> {ref}); remove it from {OPTION[kind]}")
            task, dep_owner = find(session, ref)
            if dep_owner != owner:
                raise OrchestraError(f"{OPTION[kind]} {task.name}: that task belongs to {dep_owner}; a task may "
                                     f"wait only for tasks of its own owner ({owner})")
            if task.request in ("delete", "purge"):
                raise OrchestraError(f"{OPTION[kind]} {task.name}: that task is being deleted; "
                                     "choose another dependency")
            if any(d.task_id == task.id for d in out):
                continue
            out.append(Dependency(task.id, task.name, task.status, kind))
    return out


def record(session: Session, task_id: int, deps: Sequence[Dependency]) -> None:
    """Store the new task's dependencies (PostgreSQL: row-level security checks both are the caller's)."""
    if deps:
        session.execute(insert(TaskDependency), [
            {"task_id": task_id, "depends_on_id": d.task_id, "kind": d.kind} for d in deps])


def of_tasks(session: Session, task_ids: Sequence[int]) -> dict[int, list[Dependency]]:
    """Every dependency of each of `task_ids`, with its current state, in name order."""
    out: dict[int, list[Dependency]] = defaultdict(list)
    if not task_ids:
        return out
    dep = aliased(Task)
    rows = session.execute(
        select(TaskDependency.task_id, dep.id, dep.name, dep.status, TaskDependency.kind)
        .join(dep, dep.id == TaskDependency.depends_on_id)
        .where(TaskDependency.task_id.in_(list(task_ids))).order_by(dep.name))
    for task_id, dep_id, name, status, kind in rows:
        out[task_id].append(Dependency(dep_id, name, status, kind))
    return out


def dependents(session: Session, task_id: int) -> list[Dependency]:
    """The tasks that wait for `task_id` (what it is "waited by"), each with its own state and the
    kind of its wait, in name order (through the index on `depends_on_id`)."""
    rows = session.execute(
        select(Task.id, Task.name, Task.status, TaskDependency.kind)
        .join(TaskDependency, TaskDependency.task_id == Task.id)
        .where(TaskDependency.depends_on_id == task_id).order_by(Task.name))
    return [Dependency(i, name, status, kind) for i, name, status, kind in rows]


def blocking(session: Session, task_ids: Sequence[int]) -> dict[int, list[Dependency]]:
    """The dependencies each task still waits for (tasks with none left are not in the result)."""
    return {t: left for t, deps in of_tasks(session, task_ids).items()
            if (left := [d for d in deps if not d.satisfied])}


def describe(left: Sequence[Dependency]) -> str:
    """Why a registered task waits, in one line: what can never come without a user first."""
    dead = [d for d in left if d.dead_end]
    if dead:
        return "; ".join(f"dependency {d.name} ended {d.status}; retry it or delete this task" for d in dead)
    return "waiting for " + ", ".join(f"{d.name} ({d.status})" for d in left)


def ready_clause() -> ColumnElement[bool]:
    """SQL: the task (`Task`) has no dependency left to wait for (the scheduler's expansion filter)."""
    dep = aliased(Task)
    satisfied = or_(
        and_(TaskDependency.kind == AFTER, dep.status == TaskStatus.COMPLETED.value),
        and_(TaskDependency.kind == AFTER_ANY, dep.status.in_(FINAL)),
    )
    return not_(exists().where(TaskDependency.task_id == Task.id, dep.id == TaskDependency.depends_on_id,
                               not_(satisfied)))


def check_no_waiting_dependents(session: Session, task_id: int, name: str) -> None:
    """A task may not be deleted while a task that waits for it has not started (has no jobs yet):
    that task would otherwise start without its input, or wait for nothing. Dependents that have
    started do not mind; their dependency rows go with the task."""
    dependent = aliased(Task)
    waiting = session.execute(
        select(dependent.name, dependent.status, User.name)
        .join(TaskDependency, TaskDependency.task_id == dependent.id)
        .join(User, User.id == dependent.owner_id)
        .where(TaskDependency.depends_on_id == task_id, not_(exists().where(Job.task_id == dependent.id)))
        .order_by(dependent.name)).all()
    if waiting:
        names = ", ".join(f"{n} ({s})" for n, s, _ in waiting)
        raise OrchestraError(f"task {name} cannot be deleted: {names} wait(s) for it and has not started; "
                             "delete those first (or let them start)")
