"""The config file's schema (orchestra/config_schema.py): every mistake is one line naming the file,
the dotted key and what to write instead; good files load as before, with their sources."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestra import config_schema as schema
from orchestra.config import (ClusterConfig, FairShareConfig, KubernetesConfig, QueueConfig, SchedulerConfig,
                              load_settings)
from orchestra.errors import OrchestraError
from orchestra.secrets import mask_url
from tests.helpers import write_config

BAD = [
    # (config file, the dotted key the error must name, a phrase saying what is wrong or what to write)
    ("colour = 'blue'\n", "colour", "known keys: accounts, clusters"),
    ("admins = ['root']\n", "admins", "orchestra user add NAME --admin"),
    ("[clusters.LPS.queues.cpu]\nslot = 64\n", "clusters.LPS.queues.cpu.slot", "known keys: cpu, gpu, memory, slots"),
    ("[scheduler]\nscout = 3\n", "scheduler.scout", "unknown keys ['scout']"),
    ("[fairshare]\nhalf_life = 3\n", "fairshare.half_life", "half_life_days"),
    ("[users.alice]\nshares = 2\n", "users.alice.shares", "known keys: gid, groups, home, share, uid"),
    ("[accounts.physics]\nmembers = ['alice']\n", "accounts.physics.members", "known keys: share, users"),
    ("[scheduler]\nscouts = -1\n", "scheduler.scouts", "0 or more"),
    ("[scheduler]\ninterval = 0\n", "scheduler.interval", "greater than 0"),
    ("[scheduler]\nlease_ttl = -1\n", "scheduler.lease_ttl", "greater than 0"),
    ("[scheduler]\npoll_interval = 0\n", "scheduler.poll_interval", "greater than 0"),
    ("[scheduler]\nscout_success_threshold = 1.5\n", "scheduler.scout_success_threshold", "at most 1"),
    ("[scheduler]\nmax_retries = 500\n", "scheduler.max_retries", "at most 100"),
    ("[scheduler]\nmax_running_per_user = -2\n", "scheduler.max_running_per_user", "0 or more"),
    ("[scheduler]\nscouts = true\n", "scheduler.scouts", "(got true)"),
    ("[scheduler]\nscouts = '4'\n", "scheduler.scouts", "an integer"),
    ("[scheduler]\ninterval = nan\n", "scheduler.interval", "a number"),
    ("[fairshare]\nhalf_life_days = 0\n", "fairshare.half_life_days", "greater than 0"),
    ("[fairshare]\ngpu_weight = -10\n", "fairshare.gpu_weight", "0 or more"),
    ("[users.alice]\nshare = 'x'\n", "users.alice.share", "share must be a number greater than 0"),
    ("[users.alice]\nshare = 0\n", "users.alice.share", "greater than 0"),
    ("users.alice = 5\n", "users.alice", "[users.alice] share = 2"),
    ("clusters = 5\n", "clusters", "must be tables"),
    ("[clusters]\nLPS = 'local'\n", "clusters.LPS", "must be a table"),
    ("[clusters.X]\nbackend = 'slurm'\n", "clusters.X.backend", "use 'local' or 'kubernetes'"),
    ("[clusters.X]\ndefault_queue = 'gpu'\n", "clusters.X.default_queue", "use one of: cpu"),
    ("[clusters.X]\nrestrict_to_storage = 'yes'\n", "clusters.X.restrict_to_storage", "true or false"),
    ("[clusters.X.kubernetes]\nnamspace = 'batch'\n", "clusters.X.kubernetes.namspace", "namespace, node_selector"),
    ("[clusters.X.kubernetes]\ncreate_concurrency = 0\n", "clusters.X.kubernetes.create_concurrency", "greater than 0"),
    ("[clusters.X.kubernetes]\nnode_selector = { pool = 1 }\n", "clusters.X.kubernetes.node_selector.pool", "strings"),
    ("[clusters.X.queues.cpu]\ncpu = 0\n", "clusters.X.queues.cpu.cpu", "cpu a number greater than 0"),
    ("[clusters.X.queues.gpu]\ngpu = -1\n", "clusters.X.queues.gpu.gpu", "slots and gpu are integers 0 or more"),
    ("[clusters.X.queues.cpu]\nslots = '4'\n", "clusters.X.queues.cpu.slots", "slots = 4"),
    ("[clusters.X.queues.cpu]\nslots = 2.5\n", "clusters.X.queues.cpu.slots", "integers"),
    ("[clusters.X.queues.cpu]\nmemory = 'lots'\n", "clusters.X.queues.cpu.memory", "Kubernetes quantity"),
    ("[clusters.X.queues.cpu]\nmemory = 2048\n", "clusters.X.queues.cpu.memory", "Kubernetes quantity"),
    ("[accounts.physics]\nshare = 0\n", "accounts.physics.share", "share must be a number greater than 0"),
    ("[accounts.physics]\nusers = 'alice'\n", "accounts.physics.users", "list of login names"),
    ("[accounts.a]\nusers = ['alice']\n[accounts.b]\nusers = ['alice']\n", "accounts.b.users",
     "user 'alice' is already in account 'a'"),
]


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "orchestra.toml"
    path.write_text(text)
    return path, load_settings({"ORCHESTRA_CONFIG": str(path), "ORCHESTRA_HOME": str(tmp_path)})


@pytest.mark.parametrize("text, key, phrase", BAD, ids=[key for _, key, _ in BAD])
def test_a_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, text: str, key: str, phrase: str) -> None:
    with pytest.raises(OrchestraError) as err:
        _load(tmp_path, text)
    message = str(err.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"config file {tmp_path / 'orchestra.toml'}: {key}: "), message
    assert phrase in message, message


def test_every_unknown_key_of_a_table_is_listed(tmp_path: Path) -> None:
    with pytest.raises(OrchestraError, match=r"unknown keys \['scout', 'slots'\]; known keys: interval, "):
        _load(tmp_path, "[scheduler]\nslots = 3\nscout = 3\n")


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf"])
def test_the_interval_from_the_environment_must_be_positive(tmp_path: Path, value: str) -> None:
    with pytest.raises(OrchestraError, match="ORCHESTRA_SCHEDULER_INTERVAL must be a number of seconds greater than 0"):
        load_settings({"ORCHESTRA_HOME": str(tmp_path), "ORCHESTRA_SCHEDULER_INTERVAL": value})
    settings = load_settings({"ORCHESTRA_HOME": str(tmp_path), "ORCHESTRA_SCHEDULER_INTERVAL": "2.5"})
    assert settings.scheduler.interval == 2.5
    assert settings.sources["scheduler.interval"] == "env ORCHESTRA_SCHEDULER_INTERVAL"


def test_no_file_means_the_defaults(tmp_path: Path) -> None:
    settings = load_settings({"ORCHESTRA_HOME": str(tmp_path)})
    assert settings.config_file is None
    assert settings.scheduler == SchedulerConfig() and settings.fairshare == FairShareConfig()
    (lps,) = settings.clusters.values()
    assert (lps.name, lps.backend, lps.storage, lps.default_queue) == ("LPS", "local", tmp_path / "storage", "cpu")
    assert lps.queues["cpu"].slots >= 1 and lps.kubernetes == KubernetesConfig() and not lps.restrict_to_storage
    assert settings.user_shares == {} and settings.accounts == {}
    assert set(settings.sources.values()) <= {"default", "env ORCHESTRA_HOME", "OS login"}


def test_the_tests_config_loads_with_its_sources(tmp_path: Path) -> None:
    path = write_config(tmp_path / "orchestra.toml", tmp_path / "storage",
                        "[users.bob]\nshare = 3\n[accounts.physics]\nshare = 2\nusers = ['alice', 'bob']\n")
    settings = load_settings({"ORCHESTRA_CONFIG": str(path), "ORCHESTRA_HOME": str(tmp_path),
                              "ORCHESTRA_DATABASE_URL": "sqlite:////x.db"})
    origin = f"file {path}"
    assert settings.scheduler == SchedulerConfig(scouts=3, max_retries=1, poll_interval=0.2, lease_ttl=10.0,
                                                 run_jobs_as="scheduler")
    assert isinstance(settings.scheduler.lease_ttl, float)  # an integer in the file, a float in Settings
    assert settings.sources["scheduler.scouts"] == origin and settings.sources["scheduler.interval"] == "default"
    assert settings.sources["fairshare.half_life_days"] == "default"
    assert settings.sources["database_url"] == "env ORCHESTRA_DATABASE_URL"
    lps, other = settings.clusters["LPS"], settings.clusters["OTHER"]
    assert lps.queues == {"cpu": QueueConfig("cpu", 4, 1.0, "1Gi", 0), "gpu": QueueConfig("gpu", 1, 4.0, "8Gi", 1)}
    assert lps.storage == tmp_path / "storage" and lps.default_queue == "cpu"
    assert other.storage == tmp_path / "storage" / "other" and list(other.queues) == ["cpu"]
    assert settings.sources["clusters.LPS"] == settings.sources["clusters.OTHER"] == origin
    assert settings.user_shares == {"bob": 3.0} and settings.sources["users.bob"] == origin
    assert settings.accounts["physics"].users == ("alice", "bob") and settings.sources["accounts.physics"] == origin


def test_a_kubernetes_cluster_gets_every_key(tmp_path: Path) -> None:
    _, settings = _load(tmp_path, """
[clusters.K8S]
backend = "kubernetes"
[clusters.K8S.queues.gpu]
slots = 8
memory = "1.5G"
gpu = 1
[clusters.K8S.kubernetes]
namespace = "batch"
node_selector = { pool = "batch" }
tolerations = [{ key = "nvidia.com/gpu", operator = "Exists" }]
image_pull_secrets = ["registry"]
kill_grace_seconds = 0
watch = false
poll_seconds = 2
""")
    k8s = settings.clusters["K8S"]
    assert k8s.restrict_to_storage and k8s.queues["gpu"] == QueueConfig("gpu", 8, 1.0, "1.5G", 1)
    assert k8s.kubernetes == KubernetesConfig(namespace="batch", node_selector={"pool": "batch"},
                                              tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
                                              image_pull_secrets=["registry"], kill_grace_seconds=0, watch=False,
                                              poll_seconds=2.0)


@pytest.mark.parametrize("model, dataclass", [
    (schema.SchedulerModel, SchedulerConfig), (schema.FairShareModel, FairShareConfig),
    (schema.KubernetesModel, KubernetesConfig), (schema.QueueModel, QueueConfig), (schema.ClusterModel, ClusterConfig),
])
def test_the_schema_knows_every_field_of_the_settings(model: type, dataclass: type) -> None:
    """A field added to a dataclass but not to the schema would be refused as an unknown key."""
    fields = {f.name for f in dataclasses.fields(dataclass)} - {"name"}
    assert set(model.model_fields) == fields


def test_mask_url_hides_passwords() -> None:
    assert mask_url("postgresql://bob:s3cret@db/orchestra") == "postgresql://bob:***@db/orchestra"
    assert mask_url("postgresql://bob@db/orchestra") == "postgresql://bob@db/orchestra"
    assert mask_url("sqlite:////home/bob/.orchestra/orchestra.db") == "sqlite:////home/bob/.orchestra/orchestra.db"
    for url in ("postgresql://bob:s3cret@db:notaport/orchestra", "bob:s3cret@db", "postgresql://bob:s3@cret@db/x",
                "postgresql://bob@db/orchestra?password=s3cret"):
        assert "s3" not in mask_url(url) and "***" in mask_url(url), url
    assert mask_url("nonsense") == "nonsense"


@pytest.mark.parametrize("url", ["postgresql://bob:s3cret@db:notaport/orchestra", "bob:s3cret@db",
                                 "mysql://bob:s3cret@db/orchestra"])
def test_database_url_errors_hide_the_password(url: str) -> None:
    from orchestra.db.engine import make_engine

    with pytest.raises(OrchestraError) as err:
        make_engine(url)
    assert "s3cret" not in str(err.value) and "***" in str(err.value)
