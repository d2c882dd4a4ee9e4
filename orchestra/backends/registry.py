"""Choose the backend named by a cluster's config."""
from __future__ import annotations

from orchestra.backends.base import Backend
from orchestra.config import ClusterConfig, Settings


def make_backend(cluster: ClusterConfig, settings: Settings | None = None, installation: str = "default") -> Backend:
    if cluster.backend == "local":
        from orchestra.backends.local import LocalBackend
        from orchestra.config import load_settings

        return LocalBackend(cluster, settings or load_settings(), installation)
    from orchestra.backends.kubernetes import KubernetesBackend

    if settings is None:
        return KubernetesBackend(cluster)  # type: ignore[no-any-return]
    from orchestra.security.accounts import owner_account

    return KubernetesBackend(cluster, accounts=lambda user: owner_account(settings, user))  # type: ignore[no-any-return]
