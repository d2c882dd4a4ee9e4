"""`orchestra_registry.py -d user.<name>.<x> -p PATH --cluster LPS`: register a dataset (the seed's CLI)."""
from __future__ import annotations

from typing import Annotated

import typer

from orchestra.cli.common import console, context, new_app, run, size
from orchestra.config import DEFAULT_CLUSTER
from orchestra.services import datasets

app = new_app("Register a file or a directory on shared storage as a dataset named user.<you>.<name>.")


@app.command()
def register(
    dataset: Annotated[str, typer.Option("-d", "--dataset", help="dataset name, user.<you>.<name>")],
    path: Annotated[str, typer.Option("-p", "--path", help="file or directory (relative to here or absolute)")],
    cluster: Annotated[str, typer.Option("--cluster", help="cluster whose storage holds the path")] = DEFAULT_CLUSTER,
) -> None:
    """Record the dataset and its files (path, size)."""
    info = datasets.register(context(), dataset, path, cluster)
    kind = "directory" if info.is_dir else "file"
    console.print(
        f"registered {info.name}: {kind} {info.path} on {info.cluster}, "
        f"{info.n_files} file(s), {size(info.total_size)}"
    )


def main() -> None:
    run(app)
