"""`orchestra_registry.py -d user.<name>.<x> -p PATH --cluster LPS`: register a dataset (the seed's CLI)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from orchestra.cli.common import VersionOption, console, context, new_app, run, size
from orchestra.config import DEFAULT_CLUSTER
from orchestra.errors import OrchestraError
from orchestra.services import datasets

app = new_app("Register a file or a directory on shared storage as a dataset named user.<you>.<name>.", root=True)


@app.command()
def register(
    dataset: Annotated[str, typer.Option("-d", "--dataset", help="dataset name, user.<you>.<name>")],
    path: Annotated[Optional[str], typer.Option("-p", "--path", help="file or directory (relative to here or absolute)")] = None,
    cluster: Annotated[str, typer.Option("--cluster", help="cluster whose storage holds the path")] = DEFAULT_CLUSTER,
    from_task: Annotated[Optional[str], typer.Option("--from-task", help="instead of -p: the outputs of this task of yours (its output directory)")] = None,
    version: VersionOption = False,  # noqa: ARG001 - printed by its callback
) -> None:
    """Record the dataset and its files (path, size)."""
    if from_task is not None and path is None:
        _from_task(dataset, from_task)
        return
    if path is None or from_task is not None:
        raise OrchestraError("give either -p PATH (a file or directory) or --from-task TASK (a task's outputs)")
    info = datasets.register(context(), dataset, path, cluster)
    kind = "directory" if info.is_dir else "file"
    console.print(
        f"registered {info.name}: {kind} {info.path} on {info.cluster}, "
        f"{info.n_files} file(s), {size(info.total_size)}"
    )


def _from_task(dataset: str, task: str) -> None:
    from orchestra.services.task_outputs import register_from_task

    done = register_from_task(context(), dataset, task)
    info = done.info
    if done.pending:
        console.print(f"registered {info.name}: the outputs of {done.task}, directory {info.path} on {info.cluster}; "
                      f"its files are recorded when a task that uses it starts (create it with --after {done.task})",
                      markup=False)
    else:
        console.print(f"registered {info.name}: the outputs of {done.task}, directory {info.path} on {info.cluster}, "
                      f"{info.n_files} file(s), {size(info.total_size)}", markup=False)


def main() -> None:
    run(app)
