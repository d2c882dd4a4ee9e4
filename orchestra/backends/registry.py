"""Choose the backend named by a cluster's config."""
from __future__ import annotations

from orchestra.backends.base import Backend
from orchestra.config import ClusterConfig


def make_backend(cluster: ClusterConfig) -> Backend:
    if cluster.backend == "local":
        from orchestra.backends.local import LocalBackend

        return LocalBackend()
    from orchestra.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(cluster)  # type: ignore[no-any-return]
