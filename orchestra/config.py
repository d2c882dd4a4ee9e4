"""Settings: defaults, then one TOML file (ORCHESTRA_CONFIG), then environment variables.

Every effective value remembers where it came from, so `orchestra config show` can answer the
question an admin actually has: "why is it using *that*?". A newcomer needs no file at all: the
defaults describe one cluster, `LPS`, on the local backend with a `cpu` queue.
"""
from __future__ import annotations

import getpass
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benedict import benedict

from orchestra.errors import OrchestraError

DEFAULT_CLUSTER = "LPS"


@dataclass(frozen=True)
class QueueConfig:
    """A named pool of slots on a cluster, and what one job in it may hold."""

    name: str
    slots: int
    cpu: float = 1.0
    memory: str = "2Gi"
    gpu: int = 0


@dataclass(frozen=True)
class KubernetesConfig:
    """Where and how the kubernetes backend creates pods (used only when backend = kubernetes)."""

    namespace: str = "default"
    context: str | None = None
    storage_pvc: str | None = None
    storage_host_path: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    image_pull_secrets: list[str] = field(default_factory=list)
    service_account: str | None = None
    priority_class: str | None = None
    kill_grace_seconds: int = 30
    image_pull_grace_seconds: int = 300
    create_concurrency: int = 32
    request_timeout_seconds: float = 30.0
    retry_backoff_seconds: float = 0.5
    # Turnover: a watch on the pods wakes the scheduler service the moment one ends (RBAC verb
    # "watch"); without it (false, or while the watch is down) the service looks for ended pods
    # every poll_seconds while any run.
    watch: bool = True
    poll_seconds: float = 5.0


@dataclass(frozen=True)
class ClusterConfig:
    """One cluster: its backend, the storage root every path lives under, and its queues."""

    name: str
    backend: str
    storage: Path
    queues: dict[str, QueueConfig]
    default_queue: str
    restrict_to_storage: bool
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)


@dataclass(frozen=True)
class SchedulerConfig:
    """Knobs of the scheduler service."""

    interval: float = 300.0
    scouts: int = 10
    scout_success_threshold: float = 0.8
    max_retries: int = 2
    max_running_per_user: int = 0  # 0: no cap
    lease_ttl: float = 60.0
    poll_interval: float = 0.5


@dataclass(frozen=True)
class FairShareConfig:
    """Weights of the multifactor priority (see orchestra/fairshare.py for the formula)."""

    half_life_days: float = 7.0
    weight_fairshare: float = 10000.0
    weight_age: float = 1000.0
    weight_task_priority: float = 1000.0
    age_max_days: float = 7.0
    gpu_weight: float = 10.0
    cpu_weight: float = 1.0


@dataclass(frozen=True)
class AccountConfig:
    """A group of users with its own fair share (see orchestra/accounts.py)."""

    share: float = 1.0
    users: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """The effective configuration, with the origin of each value in `sources` (dotted keys)."""

    home: Path
    database_url: str
    user: str
    admins: tuple[str, ...]
    clusters: dict[str, ClusterConfig]
    scheduler: SchedulerConfig
    fairshare: FairShareConfig
    user_shares: dict[str, float]
    config_file: Path | None
    sources: dict[str, str]
    accounts: dict[str, AccountConfig] = field(default_factory=dict)

    def cluster(self, name: str) -> ClusterConfig:
        """The named cluster, or a one-line error listing the known ones."""
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise OrchestraError(
                f"unknown cluster {name!r}; known clusters: {known} (add it under [clusters.{name}] in the config file)"
            ) from None

    def is_admin(self, user: str) -> bool:
        return user in self.admins


def _default_queues() -> dict[str, Any]:
    return {"cpu": {"slots": max(1, os.cpu_count() or 1), "cpu": 1.0, "memory": "2Gi", "gpu": 0}}


def _build_queue(cluster: str, name: str, raw: Any) -> QueueConfig:
    if not isinstance(raw, dict):
        raise OrchestraError(f"config: clusters.{cluster}.queues.{name} must be a table with slots, cpu, memory, gpu")
    try:
        slots = int(raw.get("slots", 1))
        cpu = float(raw.get("cpu", 1.0))
        gpu = int(raw.get("gpu", 0))
    except (TypeError, ValueError) as exc:
        raise OrchestraError(f"config: clusters.{cluster}.queues.{name}: {exc}; slots and gpu are integers, cpu a number") from None
    if slots < 0 or gpu < 0 or cpu <= 0:
        raise OrchestraError(f"config: clusters.{cluster}.queues.{name}: slots and gpu must be >= 0 and cpu > 0")
    return QueueConfig(name=name, slots=slots, cpu=cpu, memory=str(raw.get("memory", "2Gi")), gpu=gpu)


def _build_cluster(name: str, raw: dict[str, Any], home: Path) -> ClusterConfig:
    backend = str(raw.get("backend", "local"))
    if backend not in ("local", "kubernetes"):
        raise OrchestraError(f"config: clusters.{name}.backend is {backend!r}; use 'local' or 'kubernetes'")
    storage = Path(os.path.expanduser(str(raw.get("storage", home / "storage")))).absolute()
    queues_raw = raw.get("queues") or _default_queues()
    queues = {q: _build_queue(name, q, v) for q, v in dict(queues_raw).items()}
    default_queue = str(raw.get("default_queue", next(iter(queues))))
    if default_queue not in queues:
        raise OrchestraError(f"config: clusters.{name}.default_queue {default_queue!r} is not one of its queues")
    k8s_raw = dict(raw.get("kubernetes") or {})
    known = set(KubernetesConfig.__dataclass_fields__)
    unknown = set(k8s_raw) - known
    if unknown:
        raise OrchestraError(f"config: clusters.{name}.kubernetes has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return ClusterConfig(
        name=name,
        backend=backend,
        storage=storage,
        queues=queues,
        default_queue=default_queue,
        restrict_to_storage=bool(raw.get("restrict_to_storage", backend == "kubernetes")),
        kubernetes=KubernetesConfig(**k8s_raw),
    )


def _dataclass_from(cls: type, raw: dict[str, Any], section: str) -> Any:
    known = set(cls.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise OrchestraError(f"config: [{section}] has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    try:
        values = {k: type(getattr(cls(), k))(v) for k, v in raw.items()}
    except (TypeError, ValueError) as exc:
        raise OrchestraError(f"config: [{section}]: {exc}") from None
    return cls(**values)


def read_config_file(path: Path) -> benedict:
    """Parse the TOML file, turning every failure into a one-line error that names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OrchestraError(
            f"cannot read config file {path}: {exc.strerror}; fix ORCHESTRA_CONFIG or the file's permissions"
        ) from None
    try:
        return benedict(tomllib.loads(text), keypath_separator=None)
    except tomllib.TOMLDecodeError as exc:
        raise OrchestraError(f"config file {path} is not valid TOML: {exc}") from None


def current_user(env: dict[str, str]) -> str:
    """The OS login name; ORCHESTRA_USER overrides it (the documented switch for admins and tests)."""
    return env.get("ORCHESTRA_USER") or getpass.getuser()


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build the effective settings from defaults, the config file and the environment."""
    env = dict(os.environ if env is None else env)
    sources: dict[str, str] = {}
    home = Path(os.path.expanduser(env.get("ORCHESTRA_HOME", "~/.orchestra"))).absolute()
    sources["home"] = "env ORCHESTRA_HOME" if "ORCHESTRA_HOME" in env else "default"

    config_file: Path | None = None
    raw: benedict = benedict({}, keypath_separator=None)
    if env.get("ORCHESTRA_CONFIG"):
        config_file = Path(os.path.expanduser(env["ORCHESTRA_CONFIG"])).absolute()
        raw = read_config_file(config_file)
    origin = f"file {config_file}" if config_file else "default"

    if env.get("ORCHESTRA_DATABASE_URL"):
        database_url = env["ORCHESTRA_DATABASE_URL"]
        sources["database_url"] = "env ORCHESTRA_DATABASE_URL"
    elif raw.get("database_url"):
        database_url = str(raw["database_url"])
        sources["database_url"] = origin
    else:
        database_url = f"sqlite:///{home / 'orchestra.db'}"
        sources["database_url"] = "default"

    user = current_user(env)
    sources["user"] = "env ORCHESTRA_USER" if env.get("ORCHESTRA_USER") else "OS login"
    admins = tuple(str(a) for a in raw.get("admins", []))
    sources["admins"] = origin if "admins" in raw else "default"

    clusters_raw = dict(raw.get("clusters") or {DEFAULT_CLUSTER: {}})
    clusters = {}
    for name, craw in clusters_raw.items():
        if not isinstance(craw, dict):
            raise OrchestraError(f"config: clusters.{name} must be a table")
        clusters[name] = _build_cluster(name, craw, home)
        sources[f"clusters.{name}"] = origin if raw.get("clusters") else "default"

    scheduler = _dataclass_from(SchedulerConfig, dict(raw.get("scheduler") or {}), "scheduler")
    for key in SchedulerConfig.__dataclass_fields__:
        sources[f"scheduler.{key}"] = origin if key in (raw.get("scheduler") or {}) else "default"
    if env.get("ORCHESTRA_SCHEDULER_INTERVAL"):
        try:
            interval = float(env["ORCHESTRA_SCHEDULER_INTERVAL"])
        except ValueError:
            raise OrchestraError("ORCHESTRA_SCHEDULER_INTERVAL must be a number of seconds") from None
        scheduler = SchedulerConfig(**{**scheduler.__dict__, "interval": interval})
        sources["scheduler.interval"] = "env ORCHESTRA_SCHEDULER_INTERVAL"
    if not 0 < scheduler.scout_success_threshold <= 1:
        raise OrchestraError("config: scheduler.scout_success_threshold must be in (0, 1], e.g. 0.8")
    fairshare = _dataclass_from(FairShareConfig, dict(raw.get("fairshare") or {}), "fairshare")
    for key in FairShareConfig.__dataclass_fields__:
        sources[f"fairshare.{key}"] = origin if key in (raw.get("fairshare") or {}) else "default"
    users_raw = dict(raw.get("users") or {})
    user_shares = {str(u): float(dict(v).get("share", 1.0)) for u, v in users_raw.items()}
    accounts = build_accounts(raw.get("accounts") or {})
    for name in accounts:
        sources[f"accounts.{name}"] = origin

    return Settings(
        home=home,
        database_url=database_url,
        user=user,
        admins=admins,
        clusters=clusters,
        scheduler=scheduler,
        fairshare=fairshare,
        user_shares=user_shares,
        config_file=config_file,
        sources=sources,
        accounts=accounts,
    )


def build_accounts(raw: Any) -> dict[str, AccountConfig]:
    """`[accounts.<name>]` tables: share > 0 and a list of user names, each user in one account."""
    if not isinstance(raw, dict):
        raise OrchestraError("config: accounts must be tables, e.g. [accounts.physics] share = 2, users = [\"alice\"]")
    accounts: dict[str, AccountConfig] = {}
    seen: dict[str, str] = {}
    for name, table in raw.items():
        where = f"config: [accounts.{name}]"
        if not isinstance(table, dict):
            raise OrchestraError(f"{where} must be a table with share and users")
        unknown = set(table) - {"share", "users"}
        if unknown:
            raise OrchestraError(f"{where} has unknown keys {sorted(unknown)}; known: ['share', 'users']")
        share = table.get("share", 1.0)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not share > 0:
            raise OrchestraError(f"{where}: share must be a number greater than 0, e.g. share = 2")
        users = table.get("users", [])
        if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
            raise OrchestraError(f"{where}: users must be a list of login names, e.g. users = [\"alice\", \"bob\"]")
        for user in users:
            if user in seen:
                raise OrchestraError(f"{where}: user {user!r} is already in account {seen[user]!r}; "
                                     "a user belongs to one account")
            seen[user] = str(name)
        accounts[str(name)] = AccountConfig(float(share), tuple(users))
    return accounts
