"""What `task create` checks on the storage before it writes anything (issue 15):

- the datasets' files are still there: a data file deleted after registration would make every
  job fail with FileNotFoundError. Cheap on purpose (at most four stat calls, never one per
  file): the data dataset's path, the config dataset's path, and its first and last recorded file;
- the task's output directory does not exist yet: a directory left by a deleted task of the same
  name (deleted without --purge) would mix its old results with the new ones, so it is refused;
- a dataset registered with `--from-task` and still without files may only be used by a task that
  waits for its source with `--after` (or whose source is completed): its files are recorded when
  the task is expanded (services/task_outputs.py).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestra.db.models import Dataset, DatasetFile, Task
from orchestra.errors import OrchestraError
from orchestra.services.dependencies import AFTER, Dependency
from orchestra.services.task_outputs import pending
from orchestra.states import TaskStatus


def _register_again(name: str) -> str:
    return (f"register it again (`maestro dataset delete -d {name}`, then "
            f"`orchestra_registry.py -d {name} -p PATH`)")


def check_files_exist(session: Session, config: Dataset, data: Dataset) -> None:
    """The data path, the config path and the config dataset's first and last file exist."""
    checks: list[tuple[Dataset, str, str]] = []
    if not pending(data):
        checks.append((data, "data", data.path))
    if not pending(config):
        checks.append((config, "config", config.path))
        ends = {
            session.scalar(select(DatasetFile.path).where(DatasetFile.dataset_id == config.id)
                           .order_by(DatasetFile.position.asc()).limit(1)),
            session.scalar(select(DatasetFile.path).where(DatasetFile.dataset_id == config.id)
                           .order_by(DatasetFile.position.desc()).limit(1)),
        }
        checks += [(config, "config", path) for path in sorted(p for p in ends if p)]
    for dataset, role, path in checks:
        if not os.path.exists(path):
            raise OrchestraError(f"{role} dataset {dataset.name}: {path} no longer exists (deleted or moved after "
                                 f"registration); put it back or {_register_again(dataset.name)}")


def check_fresh_output_root(root: str, task: str) -> None:
    """Refuse a name whose output directory exists already (left by a deleted task)."""
    if os.path.lexists(root):
        raise OrchestraError(f"output directory {root} already exists (left by an earlier task {task} deleted "
                             "without --purge); its old results would mix with the new ones: remove that "
                             "directory or choose another task name")


def check_pending_datasets(session: Session, config: Dataset, data: Dataset,
                           deps: Sequence[Dependency]) -> None:
    """A --from-task dataset without files yet needs its source task among the --after ones (or completed)."""
    after = {d.task_id for d in deps if d.kind == AFTER}
    for role, dataset in (("config", config), ("data", data)):
        if not pending(dataset) or dataset.source_task_id in after:
            continue
        source = session.execute(select(Task.name, Task.status).where(Task.id == dataset.source_task_id)).first()
        if source is None:
            raise OrchestraError(f"{role} dataset {dataset.name} is the outputs of a task that was deleted before "
                                 f"they were recorded; {_register_again(dataset.name)}")
        if source.status != TaskStatus.COMPLETED:
            raise OrchestraError(f"{role} dataset {dataset.name} is the outputs of {source.name}, which is "
                                 f"{source.status}; add --after {source.name} so this task starts when they are "
                                 "complete")
