"""What a valid config file is (pydantic v2), and why a file is not, in one line.

`orchestra/config.py` reads the TOML, validates it against `ConfigModel`, then builds the frozen
dataclasses (`Settings`, `ClusterConfig`, ...) the rest of the code uses. The models here only
decide what is allowed; the defaults stay in those dataclasses, so a field left out of the file is
None here ("not set") and the dataclass default applies. TOML has no null, so None never comes
from a file.

Every table refuses unknown keys (`slot = 64` in a queue must not silently mean the default of one
slot) and values are strict: "4" is not a number, true is not 1, nan and inf are refused. A
refusal becomes a `Problem`: the dotted key and what to write instead, from the field's
constraints and an example (`explain`).
"""
from __future__ import annotations

import json
import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# A Kubernetes quantity for bytes: 2Gi, 500M, 1.5G, 129e6 (no milli-bytes: "500m" is a typo for 500M).
MEMORY_PATTERN = r"^(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[kMGTPE]|[eE][+-]?\d+)?$"


def _opt(example: Any, **constraints: Any) -> Any:
    """An optional key: None (not in the file) or a value meeting `constraints`, like `example`."""
    return Field(None, examples=[example], **constraints)


class _Table(BaseModel):
    """A TOML table: unknown keys refused, no coercion between types."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)
    example: ClassVar[str] = ""  # one line of the table, shown when a table is expected


QUEUE_NUMBERS = "slots and gpu are integers 0 or more, cpu a number greater than 0"


class QueueModel(_Table):
    example = "slots = 4"
    slots: int = Field(1, ge=0, examples=[4], description=QUEUE_NUMBERS)  # QueueConfig has no default
    cpu: float | None = _opt(4, gt=0, description=QUEUE_NUMBERS)
    memory: str | None = _opt("16Gi", pattern=MEMORY_PATTERN,
                              description="memory must be a Kubernetes quantity such as 2Gi, 500M or 1.5G")
    gpu: int | None = _opt(1, ge=0, description=QUEUE_NUMBERS)


class KubernetesModel(_Table):
    example = 'namespace = "orchestra"'
    namespace: str | None = _opt("orchestra")
    context: str | None = _opt("my-cluster")
    storage_pvc: str | None = _opt("orchestra-storage")
    storage_host_path: str | None = _opt("/data/orchestra")
    node_selector: dict[str, str] | None = _opt({"pool": "batch"})
    tolerations: list[dict[str, Any]] | None = _opt([{"key": "nvidia.com/gpu", "operator": "Exists"}])
    image_pull_secrets: list[str] | None = _opt(["registry-credentials"])
    service_account: str | None = _opt("orchestra-jobs")
    priority_class: str | None = _opt("batch-low")
    # 0 is meaningful for the two grace periods: kill at once, fail an image that does not pull at once.
    kill_grace_seconds: int | None = _opt(30, ge=0)
    image_pull_grace_seconds: int | None = _opt(300, ge=0)
    create_concurrency: int | None = _opt(32, gt=0)
    request_timeout_seconds: float | None = _opt(30.0, gt=0)
    retry_backoff_seconds: float | None = _opt(0.5, gt=0)
    watch: bool | None = _opt(True)
    poll_seconds: float | None = _opt(5.0, gt=0)


class ClusterModel(_Table):
    example = 'backend = "local"'
    backend: Literal["local", "kubernetes"] | None = _opt(
        "kubernetes", description="unknown backend; use 'local' or 'kubernetes'")
    storage: str | None = _opt("/mnt/cluster-volume")
    queues: dict[str, QueueModel] | None = None
    default_queue: str | None = _opt("cpu")
    restrict_to_storage: bool | None = _opt(True)
    kubernetes: KubernetesModel | None = None


class SchedulerModel(_Table):
    example = "scouts = 10"
    interval: float | None = _opt(300, gt=0)
    scouts: int | None = _opt(10, ge=0)
    scout_success_threshold: float | None = _opt(0.8, gt=0, le=1)
    max_retries: int | None = _opt(2, ge=0, le=100)
    max_running_per_user: int | None = _opt(0, ge=0)
    lease_ttl: float | None = _opt(60, gt=0)
    poll_interval: float | None = _opt(0.5, gt=0)
    run_jobs_as: Literal["owner", "scheduler"] | None = _opt("owner")
    kill_grace_seconds: float | None = _opt(10, ge=0)
    max_job_pids: int | None = _opt(512, ge=0)
    max_log_bytes: int | None = _opt(104857600, ge=4096)
    metrics_port: int | None = _opt(9464, ge=0, le=65535, description="metrics_port must be a TCP port from 1 to 65535 (0: no metrics endpoint)")
    metrics_host: str | None = _opt("0.0.0.0", min_length=1)
    metrics_user_labels: bool | None = _opt(False)


class FairShareModel(_Table):
    example = "half_life_days = 7.0"
    half_life_days: float | None = _opt(7.0, gt=0)
    weight_fairshare: float | None = _opt(10000.0, ge=0)
    weight_age: float | None = _opt(1000.0, ge=0)
    weight_task_priority: float | None = _opt(1000.0, ge=0)
    age_max_days: float | None = _opt(7.0, gt=0)
    gpu_weight: float | None = _opt(10.0, ge=0)
    cpu_weight: float | None = _opt(1.0, ge=0)


class NotifyModel(_Table):
    example = 'enabled = true, host = "smtp.example.org"'
    enabled: bool | None = _opt(True)
    host: str | None = _opt("smtp.example.org", min_length=1)
    port: int | None = _opt(587, ge=1, le=65535)
    starttls: bool | None = _opt(True)
    ssl: bool | None = _opt(False)
    user: str | None = _opt("orchestra", min_length=1)
    password_file: str | None = _opt("/etc/orchestra/smtp-password", pattern=r"^/",
                                     description="password_file must be an absolute path")
    password_env: str | None = _opt("ORCHESTRA_SMTP_PASSWORD", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="password_env must be an environment variable's name")
    from_address: str | None = _opt("orchestra@example.org", pattern=r"^[^@\s<>,]+@[^@\s<>,]+$",
                                     description="from_address must be one e-mail address")
    timeout: float | None = _opt(10.0, gt=0)
    batch: int | None = _opt(20, ge=1)


NOTICE_DAYS = "notice_days must be a whole number of days, 1 or more, or a list of them (e.g. [5, 1]; [] for no notice)"


class RetentionModel(_Table):
    example = "keep_finished_days = 30"
    keep_finished_days: float | None = _opt(30, ge=0, description=(
        "keep_finished_days must be a number of days, 0 or more (0: keep finished tasks forever)"))
    purge_outputs: bool | None = _opt(False)
    keep_history_days: float | None = _opt(90, ge=0, description=(
        "keep_history_days must be a number of days, 0 or more (0: keep the usage history forever)"))
    notice_days: list[Annotated[int, Field(ge=1)]] | None = _opt([5, 1], description=NOTICE_DAYS)

    @field_validator("notice_days", mode="before")
    @classmethod
    def _one_or_a_list(cls, value: Any) -> Any:
        """`notice_days = 3` means [3]."""
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value


class WebModel(_Table):
    example = 'port = 8080, trusted_proxies = ["127.0.0.1"]'
    host: str | None = _opt("127.0.0.1", min_length=1)
    port: int | None = _opt(8080, ge=1, le=65535, description="port must be a TCP port from 1 to 65535")
    trusted_proxies: list[Annotated[str, Field(min_length=1)]] | None = _opt(
        ["127.0.0.1", "10.0.0.0/8"], description="trusted_proxies must be a list of IP addresses or networks")
    user_header: str | None = _opt("X-Forwarded-User", pattern=r"^[A-Za-z0-9-]+$",
                                   description="user_header must be an HTTP header name")
    public: bool | None = _opt(False)


MAX_ID = 2**32 - 2  # the largest uid/gid Linux gives out ((uid_t)-1 means "no change")
ID_RANGE = f"an integer from 1 to {MAX_ID} (0 is root: a job never runs as root)"


class UserModel(_Table):
    """`[users.alice]`: her fair share, and optionally the account her jobs run as
    (orchestra/security/accounts.py); without uid and gid, the OS account database decides."""

    example = "share = 2"
    share: float = Field(1.0, gt=0, examples=[2])  # the one place this default lives
    uid: int | None = _opt(1001, ge=1, le=MAX_ID, description=f"uid must be {ID_RANGE}")
    gid: int | None = _opt(1001, ge=1, le=MAX_ID, description=f"gid must be {ID_RANGE}")
    groups: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = _opt(
        [1001, 2000], description=f"groups must be a list of group ids, each {ID_RANGE}")
    home: str | None = _opt("/home/alice", pattern=r"^/", description="home must be an absolute path")


class AccountModel(_Table):
    example = 'share = 2, users = ["alice", "bob"]'
    share: float | None = _opt(2, gt=0)
    users: list[Annotated[str, Field(min_length=1)]] | None = _opt(
        ["alice", "bob"], description="users must be a list of login names")


class ConfigModel(_Table):
    """The whole file."""

    database_url: str | None = _opt("postgresql://orchestra@db.example.org/orchestra")
    scheduler: SchedulerModel = SchedulerModel()
    fairshare: FairShareModel = FairShareModel()
    notify: NotifyModel = NotifyModel()
    retention: RetentionModel = RetentionModel()
    web: WebModel = WebModel()
    clusters: dict[str, ClusterModel] | None = None
    users: dict[str, UserModel] = Field(default_factory=dict)
    accounts: dict[str, AccountModel] = Field(default_factory=dict)


# ------------------------------------------------------------------------------ errors, one line each
@dataclass(frozen=True)
class Problem:
    """One refusal: where in the file (`loc`, a TOML key path) and what to write instead."""

    loc: tuple[str | int, ...]
    text: str

    @property
    def key(self) -> str:
        """The dotted key, list items as [i]: clusters.LPS.queues.cpu.slots, accounts.a.users[0]."""
        out = ""
        for part in self.loc:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out

    @property
    def table(self) -> str:
        """The table holding the key (accounts.physics for accounts.physics.share)."""
        names = [str(p) for p in self.loc if isinstance(p, str)]
        return ".".join(names[:-1])


def explain(exc: ValidationError, root: Any, prefix: tuple[str, ...] = ()) -> Problem:
    """The first error of `exc` (validated against `root`), with every unknown key of its table."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    if first["type"] == "extra_forbidden":
        siblings = sorted(str(e["loc"][-1]) for e in errors
                          if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == loc[:-1])
        _, _, table = _walk(root, loc[:-1])
        known = ", ".join(sorted(table.model_fields)) if _is_model(table) else "none"
        return Problem(prefix + loc, f"unknown keys {siblings!r}; known keys: {known}")
    name, field, target = _walk(root, loc)
    got = f" (got {_toml(first['input'], limit=60)})"
    where = Problem(prefix + loc, "").key
    if _is_model(target):
        return Problem(prefix + loc, f"must be a table, e.g. [{where}] {target.example}{got}")
    if get_origin(target) is dict and _is_model(get_args(target)[1]):
        example = get_args(target)[1].example
        return Problem(prefix + loc, f"must be tables, e.g. [{where}.NAME] {example}{got}")
    if field is None:  # not reached with these models; keep pydantic's words rather than fail
        return Problem(prefix + loc, f"{first['msg']}{got}")
    need = field.description or f"{name} must be {_kind(field.annotation)}{_range(field.metadata)}"
    if first["type"] == "finite_number":
        need += ", not inf or nan"
    example = f", e.g. {name} = {_toml(field.examples[0])}" if field.examples else ""
    return Problem(prefix + loc, f"{need}{example}{got}")


def _walk(root: Any, loc: tuple[Any, ...]) -> tuple[str, Any, Any]:
    """(field name, FieldInfo, type) that `loc` points into, from the type `root`.

    A list item or a value of a plain table (node_selector) is explained by its field.
    """
    name, field, tp = "", None, root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            break
        if _is_model(tp) and part in tp.model_fields:
            name, field = part, tp.model_fields[part]
            tp = field.annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            break
    return name, field, _unwrap(tp)


def _unwrap(tp: Any) -> Any:
    """X for X | None."""
    args = get_args(tp)
    if type(None) in args and get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _kind(tp: Any) -> str:
    tp = _unwrap(tp)
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return "a list of tables" if get_origin(get_args(tp)[0]) is dict else "a list of strings"
    if get_origin(tp) is dict:
        return "a table of strings"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, "a value")


def _range(metadata: list[Any]) -> str:
    low = next((f"greater than {m.gt}" for m in metadata if isinstance(m, at.Gt)), None)
    low = low or next((f"{m.ge} or more" for m in metadata if isinstance(m, at.Ge)), None)
    high = next((f"at most {m.le}" for m in metadata if isinstance(m, at.Le)), None)
    return " " + " and ".join(p for p in (low, high) if p) if low or high else ""


def _toml(value: Any, limit: int = 0) -> str:
    """`value` as it would be written in TOML (shortened to `limit` characters when given)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, dict):
        text = "{ " + ", ".join(f"{k if re.fullmatch(r'[A-Za-z0-9_-]+', k) else json.dumps(k)} = {_toml(v)}"
                                for k, v in value.items()) + " }"
    elif isinstance(value, list):
        text = "[" + ", ".join(_toml(v) for v in value) + "]"
    else:
        text = str(value)
    return text[: limit - 3] + "..." if limit and len(text) > limit else text
