"""Datasets made of a task's outputs: `orchestra_registry.py -d user.x.prep.outputs --from-task user.x.prep`.

The dataset is the task's output root, `<storage>/<owner>/<task>` (every file its jobs wrote under
their %OUT). Registered at once, so a pipeline can be set up in one go:

    orchestra_registry.py -d user.x.prep.outputs --from-task user.x.prep
    maestro task create --after user.x.prep -c user.x.prep.outputs ...

If the task is completed already, its files are recorded now, like any directory. Otherwise the
dataset is recorded without files, and the scheduler records them when it expands the first task
that uses it (which `task create` only accepts if that task waits for the source with `--after`,
or the source is completed by then). From then on the recorded list is the dataset, as for any
other: a later retry of the source that writes more files does not change it (register again).
"""
from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestra import expansion
from orchestra.config import Settings
from orchestra.db.bulk import bulk_insert
from orchestra.db.models import Dataset, DatasetFile, Task, User
from orchestra.errors import OrchestraError
from orchestra.naming import check_ownership
from orchestra.paths import trusted_output_root
from orchestra.services import datasets
from orchestra.services.context import Context
from orchestra.states import TaskStatus


@dataclass(frozen=True)
class FromTask:
    info: datasets.DatasetInfo
    task: str
    pending: bool  # True: the files are recorded when a dependent task is expanded


def pending(dataset: Dataset) -> bool:
    """A --from-task dataset whose files are not recorded yet."""
    return dataset.source_task_id is not None and dataset.n_files == 0


def register_from_task(ctx: Context, name: str, task_ref: str) -> FromTask:
    """Record dataset `name` as the output root of the caller's task `task_ref` (see the module doc)."""
    from orchestra.services.tasks import find

    owner = check_ownership(name, ctx.user, "dataset", admin=ctx.admin)
    with ctx.transaction() as session:
        task, task_owner = find(session, task_ref)
        if task_owner != owner:
            raise OrchestraError(f"task {task.name} belongs to {task_owner}; --from-task takes a task of the "
                                 f"dataset's owner ({owner})")
        if task.request in ("delete", "purge"):
            raise OrchestraError(f"task {task.name} is being deleted; its outputs cannot become a dataset")
        if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
            raise OrchestraError(
                f"dataset {name!r} already exists; choose another name or `maestro dataset delete -d {name}` first")
        cluster = ctx.settings.cluster(task.cluster)
        root = expansion.output_root(str(cluster.storage), task_owner, task.name)
        files: list[tuple[str, int]] = []
        if task.status == TaskStatus.COMPLETED:
            files = _list_now(root, task.name)
        now = time.time()
        dataset = Dataset(name=name, owner_id=ctx.user_id(session, owner), cluster=cluster.name, path=root,
                          is_dir=True, n_files=len(files), total_size=sum(s for _, s in files), created_at=now,
                          source_task_id=task.id)
        session.add(dataset)
        try:
            session.flush()
        except IntegrityError:
            raise OrchestraError(f"dataset name {name!r} already taken (just now, by another command); "
                                 "choose another name") from None
        bulk_insert(session, DatasetFile.__table__, ("dataset_id", "position", "path", "size"),
                    [(dataset.id, i, p, size) for i, (p, size) in enumerate(files)])
        ctx.audit(session, "dataset register", name)
        info = datasets.DatasetInfo(dataset.id, name, owner, cluster.name, root, True, len(files),
                                    dataset.total_size, now)
        return FromTask(info, task.name, not files)


def _list_now(root: str, task: str) -> list[tuple[str, int]]:
    try:
        files = list(datasets.walk_files(Path(root)))
    except OSError as exc:
        raise OrchestraError(f"cannot list the outputs of {task} in {root}: {exc.strerror}; "
                             "check the directory, or retry the task") from None
    if not files:
        raise OrchestraError(f"task {task} is completed but wrote no files in {root}; nothing to register")
    datasets.check_utf8_names([p for p, _ in files])
    return files


def walk_outputs(root: Path) -> list[tuple[str, int]]:
    """Regular files under `root`, sorted, never following a symbolic link (a job may leave one
    pointing anywhere; the scheduler lists the directory with its own rights)."""
    found: list[tuple[str, int]] = []
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    stack.append(Path(entry.path))
                elif stat.S_ISREG(mode):
                    found.append((entry.path, entry.stat(follow_symlinks=False).st_size))
    found.sort()
    return found


def record_outputs(session: Session, dataset_id: int, settings: Settings) -> str | None:
    """The scheduler, expanding a task whose config dataset is a pending --from-task dataset: list
    the source task's output root (recomputed from the storage, checked, links not followed) and
    record its files. Returns why it cannot (the task is then broken with it), or None."""
    dataset = session.execute(select(Dataset).where(Dataset.id == dataset_id)).scalar_one_or_none()
    if dataset is None or not pending(dataset):
        return None
    source = session.execute(select(Task.name, Task.cluster, User.name.label("owner"))
                             .join(User, User.id == Task.owner_id).where(Task.id == dataset.source_task_id)).first()
    if source is None:
        return (f"its config dataset {dataset.name} is the outputs of a task deleted before they were recorded; "
                "register the directory again with -p")
    try:
        root = trusted_output_root(settings.cluster(source.cluster).storage, source.owner, source.name)
        files = walk_outputs(root)
        datasets.check_utf8_names([p for p, _ in files])
    except OrchestraError as exc:
        return f"the outputs of {source.name} cannot be listed: {exc}"
    except OSError as exc:
        return f"the outputs of {source.name} cannot be listed: {exc.strerror or exc}"
    if not files:
        return f"{source.name} wrote no files in {root}, so its dataset {dataset.name} is empty"
    bulk_insert(session, DatasetFile.__table__, ("dataset_id", "position", "path", "size"),
                [(dataset.id, i, p, size) for i, (p, size) in enumerate(files)])
    session.execute(update(Dataset).where(Dataset.id == dataset.id).values(
        n_files=len(files), total_size=sum(s for _, s in files), path=str(root), is_dir=True))
    return None
