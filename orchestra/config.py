"""Settings: defaults, then one TOML file (ORCHESTRA_CONFIG), then environment variables.

Every effective value remembers where it came from, so `orchestra config show` can answer the
question an admin actually has: "why is it using *that*?". A newcomer needs no file at all: the
defaults describe one cluster, `LPS`, on the local backend with a `cpu` queue.

What a valid file is lives in orchestra/config_schema.py (pydantic models, every table closed to
unknown keys); this module reads the file, validates it there, and builds the frozen dataclasses
below, which are what the rest of the code constructs and reads.
"""
from __future__ import annotations

import getpass
import ipaddress
import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benedict import benedict
from pydantic import TypeAdapter, ValidationError

from orchestra.config_schema import (AccountModel, ClusterModel, ConfigModel, Problem, RetentionModel, UserModel, WebModel,
                                      explain)
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
    # Local jobs: "owner" (each job as its owner: needs root) or "scheduler" (the personal mode,
    # every job as the scheduler's own account); "" chooses: owner as root on PostgreSQL.
    run_jobs_as: str = ""
    kill_grace_seconds: float = 10.0  # SIGTERM, then SIGKILL for what is left (Slurm's KillWait)
    max_job_pids: int = 512  # processes per job (cgroup pids.max); 0: no limit
    max_log_bytes: int = 100 * 1024**2  # an attempt's log keeps its last half of this when it grows past it
    # Prometheus endpoint of the service (orchestra/metrics.py): 0 = none; loopback unless told
    # otherwise (the metrics name users and queues); user labels can go for privacy or cardinality.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_user_labels: bool = True


@dataclass(frozen=True)
class NotifyConfig:
    """`[notify]`: mail to a task's owner when it ends (orchestra/notify/). Off unless enabled."""

    enabled: bool = False
    host: str = "localhost"
    port: int = 25
    starttls: bool = False  # upgrade a plain connection (port 587)
    ssl: bool = False  # TLS from the first byte (port 465)
    user: str | None = None  # SMTP login, with its password from a file or the environment
    password_file: str | None = None
    password_env: str | None = None
    from_address: str = "orchestra@localhost"
    timeout: float = 10.0  # seconds per SMTP conversation step: a hanging server costs this, in the postman only
    batch: int = 20  # mails per postman pass


@dataclass(frozen=True)
class RetentionConfig:
    """`[retention]`: finished tasks are removed this many days after they finished (with their
    jobs, attempts and logs; their outputs too with purge_outputs), the owner told `notice_days`
    before (orchestra/services/retention.py). keep_finished_days = 0 keeps them forever."""

    keep_finished_days: float = 30.0
    purge_outputs: bool = False
    notice_days: tuple[int, ...] = (5, 1)
    keep_history_days: float = 90.0  # the usage history's 6-hour and daily rollups (services/history.py); 0 = forever


@dataclass(frozen=True)
class WebConfig:
    """`[web]`: where `orchestra web` listens and whom it believes (orchestra/web/viewer.py).

    Anonymous viewers see the queue but no user's commands or logs, unless `public`; a viewer is
    a user only when `user_header` comes from an address in `trusted_proxies` (a reverse proxy
    that authenticated them, e.g. oauth2-proxy)."""

    host: str = "127.0.0.1"
    port: int = 8080
    trusted_proxies: tuple[str, ...] = ()
    user_header: str = "X-Forwarded-User"
    public: bool = False


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
class UserAccountConfig:
    """`[users.<name>] uid, gid, groups, home`: the account a user's jobs run as, when the config
    says so rather than the OS account database (see orchestra/security/accounts.py)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str | None = None


@dataclass(frozen=True)
class Settings:
    """The effective configuration, with the origin of each value in `sources` (dotted keys)."""

    home: Path
    database_url: str
    user: str
    clusters: dict[str, ClusterConfig]
    scheduler: SchedulerConfig
    fairshare: FairShareConfig
    user_shares: dict[str, float]
    config_file: Path | None
    sources: dict[str, str]
    accounts: dict[str, AccountConfig] = field(default_factory=dict)
    user_accounts: dict[str, UserAccountConfig] = field(default_factory=dict)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    web: WebConfig = field(default_factory=WebConfig)

    def cluster(self, name: str) -> ClusterConfig:
        """The named cluster, or a one-line error listing the known ones."""
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise OrchestraError(
                f"unknown cluster {name!r}; known clusters: {known} (add it under [clusters.{name}] in the config file)"
            ) from None


def _default_queues() -> dict[str, QueueConfig]:
    return {"cpu": QueueConfig(name="cpu", slots=max(1, os.cpu_count() or 1))}


def _refused(where: str, problem: Problem) -> OrchestraError:
    """`config file /x/orchestra.toml: clusters.LPS.queues.cpu.slot: unknown keys ...`: one line."""
    return OrchestraError(f"{where}: {problem.key}: {problem.text}")


def _build_cluster(name: str, model: ClusterModel, home: Path, where: str) -> ClusterConfig:
    backend = model.backend or "local"
    storage = Path(os.path.expanduser(model.storage if model.storage is not None else home / "storage")).absolute()
    queues = ({q: QueueConfig(name=q, **m.model_dump(exclude_none=True)) for q, m in model.queues.items()}
              if model.queues else _default_queues())
    default_queue = model.default_queue if model.default_queue is not None else next(iter(queues))
    if default_queue not in queues:
        raise _refused(where, Problem(("clusters", name, "default_queue"),
                                      f"{default_queue!r} is not one of the cluster's queues; "
                                      f"use one of: {', '.join(queues)}"))
    return ClusterConfig(
        name=name,
        backend=backend,
        storage=storage,
        queues=queues,
        default_queue=default_queue,
        restrict_to_storage=(model.restrict_to_storage if model.restrict_to_storage is not None
                             else backend == "kubernetes"),
        kubernetes=KubernetesConfig(**model.kubernetes.model_dump(exclude_none=True)) if model.kubernetes
        else KubernetesConfig(),
    )


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
    """The OS login name, or ORCHESTRA_USER (checked against the database: orchestra/security/identity.py)."""
    return env.get("ORCHESTRA_USER") or getpass.getuser()


def _interval_from_env(value: str) -> float:
    """ORCHESTRA_SCHEDULER_INTERVAL: seconds, finite and greater than 0 (0 would spin the service)."""
    try:
        interval = float(value)
    except ValueError:
        interval = math.nan
    if not (math.isfinite(interval) and interval > 0):
        raise OrchestraError(f"ORCHESTRA_SCHEDULER_INTERVAL must be a number of seconds greater than 0, "
                             f"e.g. ORCHESTRA_SCHEDULER_INTERVAL=300 (got {value!r})")
    return interval


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
    where = f"config file {config_file}"
    if "admins" in raw:
        raise OrchestraError(
            f"{where}: admins: the config file grants no power any more; remove the key: admins are members of "
            "the PostgreSQL role orchestra_admins (`orchestra user add NAME --admin`), and on SQLite the "
            "database file's owner (README: Security model)")
    try:
        doc = ConfigModel.model_validate(dict(raw))
    except ValidationError as exc:
        raise _refused(where, explain(exc, ConfigModel)) from None

    if env.get("ORCHESTRA_DATABASE_URL"):
        database_url = env["ORCHESTRA_DATABASE_URL"]
        sources["database_url"] = "env ORCHESTRA_DATABASE_URL"
    elif doc.database_url:
        database_url = doc.database_url
        sources["database_url"] = origin
    else:
        database_url = f"sqlite:///{home / 'orchestra.db'}"
        sources["database_url"] = "default"

    user = current_user(env)
    sources["user"] = "env ORCHESTRA_USER" if env.get("ORCHESTRA_USER") else "OS login"

    clusters = {}
    for name, model in (doc.clusters or {DEFAULT_CLUSTER: ClusterModel()}).items():
        clusters[name] = _build_cluster(name, model, home, where)
        sources[f"clusters.{name}"] = origin if doc.clusters else "default"

    scheduler = SchedulerConfig(**doc.scheduler.model_dump(exclude_none=True))
    for key in SchedulerConfig.__dataclass_fields__:
        sources[f"scheduler.{key}"] = origin if key in doc.scheduler.model_fields_set else "default"
    if env.get("ORCHESTRA_SCHEDULER_INTERVAL"):
        interval = _interval_from_env(env["ORCHESTRA_SCHEDULER_INTERVAL"])
        scheduler = SchedulerConfig(**{**scheduler.__dict__, "interval": interval})
        sources["scheduler.interval"] = "env ORCHESTRA_SCHEDULER_INTERVAL"
    fairshare = FairShareConfig(**doc.fairshare.model_dump(exclude_none=True))
    for key in FairShareConfig.__dataclass_fields__:
        sources[f"fairshare.{key}"] = origin if key in doc.fairshare.model_fields_set else "default"
    notify = NotifyConfig(**doc.notify.model_dump(exclude_none=True))
    for key in NotifyConfig.__dataclass_fields__:
        sources[f"notify.{key}"] = origin if key in doc.notify.model_fields_set else "default"
    if notify.ssl and notify.starttls:
        raise OrchestraError(f"{where}: notify: ssl and starttls exclude each other; set one of them "
                             "(ssl = true for port 465, starttls = true for port 587)")
    if notify.password_file and notify.password_env:
        raise OrchestraError(f"{where}: notify: give the SMTP password one way: password_file or password_env")
    retention = _retention_from(doc.retention)
    for key in RetentionConfig.__dataclass_fields__:
        sources[f"retention.{key}"] = origin if key in doc.retention.model_fields_set else "default"
    web = _web_from(doc.web, lambda problem: _refused(where, problem))
    for key in WebConfig.__dataclass_fields__:
        sources[f"web.{key}"] = origin if key in doc.web.model_fields_set else "default"
    user_shares = {name: model.share for name, model in doc.users.items()}
    for name in user_shares:
        sources[f"users.{name}"] = origin
    user_accounts = _user_accounts_from(doc.users, lambda problem: _refused(where, problem))
    accounts = _accounts_from(doc.accounts, lambda problem: _refused(where, problem))
    for name in accounts:
        sources[f"accounts.{name}"] = origin

    return Settings(
        home=home,
        database_url=database_url,
        user=user,
        clusters=clusters,
        scheduler=scheduler,
        fairshare=fairshare,
        user_shares=user_shares,
        config_file=config_file,
        sources=sources,
        accounts=accounts,
        user_accounts=user_accounts,
        notify=notify,
        retention=retention,
        web=web,
    )


def _web_from(model: WebModel, refuse: Callable[[Problem], OrchestraError]) -> WebConfig:
    """`[web]`, each trusted proxy checked as an address or network now, not at the first request."""
    values = model.model_dump(exclude_none=True)
    proxies = []
    for i, proxy in enumerate(model.trusted_proxies or ()):
        try:
            proxies.append(str(ipaddress.ip_network(proxy, strict=False)))
        except ValueError:
            raise refuse(Problem(("web", "trusted_proxies", i),
                                 f"{proxy!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)")) from None
    values["trusted_proxies"] = tuple(proxies)
    return WebConfig(**values)


def _retention_from(model: RetentionModel) -> RetentionConfig:
    """`[retention]`, with notice_days as a sorted tuple of distinct whole days (one or a list)."""
    values = model.model_dump(exclude_none=True)
    if model.notice_days is not None:
        values["notice_days"] = tuple(sorted(set(model.notice_days), reverse=True))
    return RetentionConfig(**values)


def _user_accounts_from(models: dict[str, UserModel],
                        refused: Callable[[Problem], OrchestraError]) -> dict[str, UserAccountConfig]:
    """The users whose table names the account their jobs run as: uid and gid together (groups
    and home only with them: an account comes whole from the config or whole from the OS)."""
    found: dict[str, UserAccountConfig] = {}
    for name, model in models.items():
        given = [key for key in ("uid", "gid", "groups", "home") if getattr(model, key) is not None]
        if not given:
            continue
        if model.uid is None or model.gid is None:
            raise refused(Problem(("users", name, "uid" if model.uid is None else "gid"),
                                  f"{', '.join(given)} given without {'uid' if model.uid is None else 'gid'}; "
                                  f"set both, e.g. [users.{name}] uid = 1001, gid = 1001 (or neither: the OS "
                                  "account database then decides)"))
        found[name] = UserAccountConfig(model.uid, model.gid, tuple(model.groups or ()), model.home)
    return found


def build_accounts(raw: Any) -> dict[str, AccountConfig]:
    """`[accounts.<name>]` tables: share > 0 and a list of user names, each user in one account.

    For callers outside a config file (orchestra/replay.py reads them from a trace): errors start
    with "config: [accounts.<name>]:", and the caller puts its own file's name in place of "config".
    """
    def refused(problem: Problem) -> OrchestraError:
        return OrchestraError(f"config: [{problem.table}]: {problem.text}" if problem.table
                              else f"config: {problem.key}: {problem.text}")

    try:
        models = _ACCOUNTS.validate_python(raw, strict=True)
    except ValidationError as exc:
        raise refused(explain(exc, dict[str, AccountModel], prefix=("accounts",))) from None
    return _accounts_from(models, refused)


_ACCOUNTS = TypeAdapter(dict[str, AccountModel])


def _accounts_from(models: dict[str, AccountModel],
                   refused: Callable[[Problem], OrchestraError]) -> dict[str, AccountConfig]:
    """The accounts, once each user is known to be in one account only (a rule across tables)."""
    accounts: dict[str, AccountConfig] = {}
    seen: dict[str, str] = {}
    for name, model in models.items():
        for user in model.users or ():
            if user in seen:
                raise refused(Problem(("accounts", name, "users"), f"user {user!r} is already in account "
                                      f"{seen[user]!r}; a user belongs to one account"))
            seen[user] = name
        accounts[name] = AccountConfig(**{**model.model_dump(exclude_none=True), "users": tuple(model.users or ())})
    return accounts
