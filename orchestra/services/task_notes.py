"""What `maestro task show` adds about dependencies and edits: what the task waits for (or why it
cannot start), its dependencies, and its history. Kept apart from `tasks.show` so either can
change without the other."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestra.services import dependencies, task_edit
from orchestra.services.context import Context
from orchestra.states import TaskStatus


@dataclass(frozen=True)
class TaskNotes:
    waiting: str | None  # "waiting for user.x.prep (running)", or why it cannot start; None: not waiting
    dependencies: list[dict[str, Any]] = field(default_factory=list)  # name, kind, status, satisfied
    history: list[task_edit.Event] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"waiting": self.waiting, "dependencies": self.dependencies,
                "history": [{"changed_at": e.at, "actor": e.actor, "what": e.what, "changes": e.details}
                            for e in self.history]}


def notes(ctx: Context, task_id: int) -> TaskNotes:
    from orchestra.db.models import Task

    with ctx.transaction() as session:
        status = session.get(Task, task_id)
        deps = dependencies.of_tasks(session, [task_id]).get(task_id, [])
        left = [d for d in deps if not d.satisfied]
        waiting = dependencies.describe(left) if left and status and status.status == TaskStatus.REGISTERED else None
        return TaskNotes(
            waiting,
            [{"task": d.name, "kind": d.kind, "status": d.status, "satisfied": d.satisfied} for d in deps],
            task_edit.history(session, task_id),
        )
