"""docker/: the Dockerfile, the compose file and the Kubernetes manifests, checked against the code.

No Docker engine and no Kubernetes API server run here, so the files are checked for what can
drift silently: every YAML parses; each Kubernetes object validates against the official client's
models (unknown fields and wrong types are refused); the Role grants exactly `RBAC_RULES`; the
names that tie the objects together (service account, secret key, config map, claim, namespace)
agree; every command line parses with the real `orchestra` CLI; and every config file loads with
the real settings loader (the kubernetes one also through the backend's own config validation).
"""
from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer
import yaml
from kubernetes import client
from sqlalchemy.engine import make_url

from orchestra.backends.kubernetes import MANAGED_BY, MANAGER, RBAC_RULES, KubernetesBackend
from orchestra.cli import admin
from orchestra.config import ClusterConfig, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"

# (apiVersion, kind) -> the official client's model (pydantic, extra fields forbidden)
MODELS: dict[tuple[str, str], type] = {
    ("v1", "Namespace"): client.V1Namespace,
    ("v1", "ServiceAccount"): client.V1ServiceAccount,
    ("v1", "Secret"): client.V1Secret,
    ("v1", "ConfigMap"): client.V1ConfigMap,
    ("apps/v1", "Deployment"): client.V1Deployment,
    ("batch/v1", "CronJob"): client.V1CronJob,
    ("rbac.authorization.k8s.io/v1", "Role"): client.V1Role,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): client.V1RoleBinding,
    ("v1", "Service"): client.V1Service,
}
NAMESPACED = {"ServiceAccount", "Secret", "ConfigMap", "Deployment", "CronJob", "Role", "RoleBinding", "Service"}


# ------------------------------------------------------------------------------------ loading
def yaml_files() -> list[Path]:
    return sorted(p for p in DOCKER.rglob("*") if p.suffix in (".yaml", ".yml"))


@cache
def documents(path: Path) -> tuple[dict[str, Any], ...]:
    with path.open(encoding="utf-8") as f:
        return tuple(doc for doc in yaml.safe_load_all(f) if doc is not None)


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in documents(path):
                yield path, doc


def the(kind: str) -> dict[str, Any]:
    """The one object of `kind` among the scheduler's manifests (the dashboard's, web.yaml, are
    checked by tests/k8s/test_web_manifests.py)."""
    found = [doc for path, doc in k8s_objects() if doc.get("kind") == kind and path.name != "web.yaml"]
    assert len(found) == 1, f"expected exactly one {kind} under docker/k8s, found {len(found)}"
    return found[0]


def pod_spec(kind: str) -> dict[str, Any]:
    obj = the(kind)
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def scheduler_container(kind: str) -> dict[str, Any]:
    [container] = pod_spec(kind)["containers"]
    return container


def all_containers(kind: str) -> list[dict[str, Any]]:
    spec = pod_spec(kind)
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def parse_orchestra(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse a command line with the real `orchestra` typer app, without running it.

    Returns the subcommand path and the parsed parameters; an unknown subcommand or option fails.
    """
    assert argv and argv[0] == "orchestra", f"not an orchestra command line: {argv}"
    [entry] = [e for e in metadata.entry_points(group="console_scripts") if e.name == "orchestra"]
    assert entry.value == f"{admin.__name__}:main", entry
    command = typer.main.get_command(admin.app)
    args, path = list(argv[1:]), ["orchestra"]
    while hasattr(command, "commands"):  # a group: the next word names a subcommand
        assert args, f"{' '.join(argv)}: missing a subcommand of {' '.join(path)}"
        name, *args = args
        assert name in command.commands, f"{' '.join(argv)}: {' '.join(path)} has no subcommand {name!r}"
        command, path = command.commands[name], [*path, name]
    ctx = command.make_context(" ".join(path), args)  # raises on an unknown option or a stray argument
    return " ".join(path[1:]), dict(ctx.params)


def load_config_text(text: str, tmp_path: Path) -> Settings:
    config = tmp_path / "orchestra.toml"
    config.write_text(text, encoding="utf-8")
    return load_settings({"ORCHESTRA_CONFIG": str(config), "ORCHESTRA_HOME": str(tmp_path / "home"),
                          "ORCHESTRA_USER": "tester"})


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    out = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


# ------------------------------------------------------------------------------------ every file parses
@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DOCKER)))
def test_yaml_parses_and_objects_are_well_formed(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
        if path.parent != K8S:
            continue
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: apiVersion and kind are required"
        if doc["kind"] == "Kustomization":
            continue
        assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} has no metadata.name"


def test_the_expected_files_exist() -> None:
    names = {p.name for p in K8S.glob("*.yaml")}
    assert {"serviceaccount.yaml", "rbac.yaml", "secret.yaml", "configmap.yaml", "deployment.yaml",
            "cronjob.yaml"} <= names
    assert DOCKERFILE.is_file() and COMPOSE.is_file()


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_objects_validate_against_the_client_models(path: Path) -> None:
    """The official client's models refuse unknown fields and wrong types: a typo'd key fails here."""
    for doc in documents(path):
        if doc["kind"] == "Kustomization":
            continue
        model = MODELS.get((doc["apiVersion"], doc["kind"]))
        assert model is not None, f"{path}: unexpected object {doc['apiVersion']} {doc['kind']}"
        model.model_validate(doc)


def test_every_namespaced_object_is_in_the_configured_namespace(tmp_path: Path) -> None:
    namespace = kubernetes_cluster(tmp_path).kubernetes.namespace
    assert the("Namespace")["metadata"]["name"] == namespace
    for path, doc in k8s_objects():
        if doc["kind"] in NAMESPACED:
            assert doc["metadata"].get("namespace") == namespace, f"{path}: {doc['kind']} outside {namespace}"
    kustomization = documents(K8S / "kustomization.yaml")[0]
    assert kustomization.get("namespace", namespace) == namespace


def test_kustomization_lists_every_manifest_but_the_cron_alternative() -> None:
    [kustomization] = documents(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    for name in resources:
        assert (K8S / name).is_file(), f"kustomization.yaml lists a missing file {name}"
    left_out = {p.name for p in K8S.glob("*.yaml")} - set(resources)
    assert left_out == {"kustomization.yaml", "cronjob.yaml"}
    images = {i["name"] for i in kustomization.get("images", [])}
    used = {c["image"].rsplit(":", 1)[0] for kind in ("Deployment", "CronJob") for c in all_containers(kind)}
    assert used <= images, f"kustomization images {images} do not cover {used}"


# ------------------------------------------------------------------------------------ RBAC
def test_role_grants_exactly_what_the_backend_calls() -> None:
    role = the("Role")
    granted: set[tuple[str, str]] = set()
    for rule in role["rules"]:
        assert rule.get("apiGroups") == [""], f"only the core API group is used: {rule}"
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        assert "*" not in rule["resources"] and "*" not in rule["verbs"], f"no wildcards: {rule}"
        granted |= {(resource, verb) for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == set(RBAC_RULES), (f"missing: {sorted(set(RBAC_RULES) - granted)}; "
                                        f"more than needed: {sorted(granted - set(RBAC_RULES))}")


def test_role_binding_binds_the_role_to_the_schedulers_service_account() -> None:
    role, binding, account = the("Role"), the("RoleBinding"), the("ServiceAccount")
    ref = binding["roleRef"]
    assert (ref["apiGroup"], ref["kind"], ref["name"]) == ("rbac.authorization.k8s.io", "Role",
                                                           role["metadata"]["name"])
    subjects = {(s["kind"], s["name"], s.get("namespace")) for s in binding["subjects"]}
    expected = ("ServiceAccount", account["metadata"]["name"], account["metadata"]["namespace"])
    assert subjects == {expected}
    for kind in ("Deployment", "CronJob"):
        spec = pod_spec(kind)
        assert spec["serviceAccountName"] == account["metadata"]["name"], kind
        assert spec.get("automountServiceAccountToken", account.get("automountServiceAccountToken", True)), \
            f"{kind}: the scheduler needs its token (in-cluster configuration)"


# ------------------------------------------------------------------------------------ the scheduler's pods
def test_deployment_runs_one_scheduler_service() -> None:
    deployment = the("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    path, params = parse_orchestra(scheduler_container("Deployment")["command"])
    assert path == "scheduler run" and not params["once"] and not params["until_idle"]


def test_cronjob_runs_one_cycle_every_five_minutes() -> None:
    cron = the("CronJob")
    assert cron["spec"]["schedule"] == "*/5 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert pod_spec("CronJob")["restartPolicy"] in ("Never", "OnFailure")
    path, params = parse_orchestra(scheduler_container("CronJob")["command"])
    assert path == "scheduler run" and params["once"] is True


@pytest.mark.parametrize("kind", ["Deployment", "CronJob"])
def test_every_container_runs_a_real_orchestra_command(kind: str) -> None:
    for container in all_containers(kind):
        assert not container.get("args"), f"{kind}/{container['name']}: put the whole command line in command"
        parse_orchestra(container["command"])


@pytest.mark.parametrize("kind", ["Deployment", "CronJob"])
def test_scheduler_pods_are_not_mistaken_for_job_pods(kind: str) -> None:
    """The backend deletes pods labelled managed-by=orchestra that it does not know: not its own scheduler."""
    obj = the(kind)
    template = obj["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" else obj["spec"]["template"]
    for labels in (obj["metadata"].get("labels") or {}, template["metadata"].get("labels") or {}):
        assert labels.get(MANAGED_BY) != MANAGER, f"{kind}: {MANAGED_BY}={MANAGER} marks job pods only"


@pytest.mark.parametrize("kind", ["Deployment", "CronJob"])
def test_scheduler_pods_wire_secret_config_and_storage(kind: str, tmp_path: Path) -> None:
    secret, configmap = the("Secret"), the("ConfigMap")
    spec = pod_spec(kind)
    volumes = {v["name"]: v for v in spec["volumes"]}
    cluster = kubernetes_cluster(tmp_path)
    for container in all_containers(kind):
        env = {e["name"]: e for e in container["env"]}
        ref = env["ORCHESTRA_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        url = (secret.get("stringData") or {}).get(ref["key"])
        assert url is not None, f"secret {ref['name']} has no key {ref['key']} in stringData"
        assert make_url(url).drivername == "postgresql+psycopg2"
        config_path = PurePosixPath(env["ORCHESTRA_CONFIG"]["value"])
        mounts = {PurePosixPath(m["mountPath"]): m for m in container["volumeMounts"]}
        mount = mounts.get(config_path.parent)
        assert mount is not None, f"{kind}/{container['name']}: nothing mounted at {config_path.parent}"
        assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
        assert config_path.name in configmap["data"]
    # The scheduler writes each ended pod's log under the storage: it mounts the job pods' claim there.
    mounts = {PurePosixPath(m["mountPath"]): m for m in scheduler_container(kind)["volumeMounts"]}
    storage = mounts.get(PurePosixPath(cluster.storage))
    assert storage is not None, f"{kind}: the storage {cluster.storage} is not mounted"
    assert volumes[storage["name"]]["persistentVolumeClaim"]["claimName"] == cluster.kubernetes.storage_pvc


def test_scheduler_pods_run_as_the_images_user() -> None:
    users = [args for word, args in dockerfile_instructions() if word == "USER"]
    uid = int(users[-1].split(":")[0])
    for kind in ("Deployment", "CronJob"):
        context = pod_spec(kind)["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == uid, kind


# ------------------------------------------------------------------------------------ configuration
def kubernetes_cluster(tmp_path: Path) -> ClusterConfig:
    configmap = the("ConfigMap")
    settings = load_config_text(configmap["data"]["orchestra.toml"], tmp_path)
    [cluster] = settings.clusters.values()
    return cluster


def test_configmap_config_loads_and_selects_the_kubernetes_backend(tmp_path: Path) -> None:
    configmap = the("ConfigMap")
    settings = load_config_text(configmap["data"]["orchestra.toml"], tmp_path)
    assert settings.sources["database_url"] == "default", "the database URL belongs in the secret"
    assert settings.clusters and all(c.backend == "kubernetes" for c in settings.clusters.values())
    cluster = kubernetes_cluster(tmp_path)
    assert cluster.kubernetes.storage_pvc and not cluster.kubernetes.storage_host_path
    # The backend's own validation (namespace, storage, concurrency, tolerations) accepts it too.
    backend = KubernetesBackend(cluster, client.ApiClient(client.Configuration(host="http://127.0.0.1:9")))
    backend.close()


def test_compose_config_loads_and_selects_the_local_backend(tmp_path: Path) -> None:
    text = (DOCKER / "orchestra.toml").read_text(encoding="utf-8")
    settings = load_config_text(text, tmp_path)
    assert settings.clusters and all(c.backend == "local" for c in settings.clusters.values())


# ------------------------------------------------------------------------------------ Dockerfile and compose
def test_dockerfile_builds_the_package_and_runs_the_scheduler() -> None:
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    for word, args in steps:
        if word == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which the repository lacks"
    copied = " ".join(args for word, args in steps if word == "COPY")
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    needed = {"setup.py", "README.md", "orchestra"} | set(re.findall(r'"(scripts/[^"]+)"', setup))
    for name in needed:
        assert name in copied, f"setup.py needs {name}; the Dockerfile does not copy it"
    assert any(word == "RUN" and re.search(r"\bpip install \.", args) for word, args in steps)
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    [entrypoint] = [exec_form(args) for word, args in steps if word == "ENTRYPOINT"]
    [cmd] = [exec_form(args) for word, args in steps if word == "CMD"]
    assert entrypoint == ["orchestra"]
    assert parse_orchestra(entrypoint + cmd)[0] == "scheduler run"


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    # ${VAR:-default} -> default: what compose substitutes when VAR is unset
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def test_compose_file_wires_postgres_and_the_scheduler(tmp_path: Path) -> None:
    [compose] = documents(COMPOSE)
    services, volumes = compose["services"], compose.get("volumes") or {}
    postgres, scheduler = services["postgres"], services["scheduler"]
    assert postgres["image"] == "postgres:16"
    assert postgres["healthcheck"]["test"]
    pg_data = [v for v in postgres["volumes"] if v.split(":")[1] == "/var/lib/postgresql/data"]
    assert pg_data and pg_data[0].split(":")[0] in volumes, "postgres data must live on a named volume"

    build = scheduler["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert scheduler["depends_on"]["postgres"]["condition"] == "service_healthy"
    command = scheduler.get("command")
    assert parse_orchestra(["orchestra", *command])[0] == "scheduler run"
    for name, service in services.items():
        if name != "postgres" and "command" in service:
            parse_orchestra(["orchestra", *service["command"]])

    env, pg_env = compose_env(scheduler), compose_env(postgres)
    owner = make_url(compose_env(services["migrate"])["ORCHESTRA_DATABASE_URL"])
    assert (owner.username, owner.password, owner.database) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"],
                                                                pg_env["POSTGRES_DB"])
    # The scheduler connects as its own role (orchestra_scheduler), made by a one-shot service that
    # runs as the owner, not as the owner itself.
    url = make_url(env["ORCHESTRA_DATABASE_URL"])
    assert url.drivername == "postgresql+psycopg2" and url.host == "postgres" and url.database == owner.database
    assert url.username != owner.username
    [maker] = [svc for svc in services.values() if (svc.get("command") or [])[:3] == ["user", "add", url.username]]
    path, params = parse_orchestra(["orchestra", *maker["command"]])
    assert path == "user add" and params["scheduler"] and not params["admin"]
    assert compose_env(maker)[params["password_env"]] == url.password
    assert make_url(compose_env(maker)["ORCHESTRA_DATABASE_URL"]) == owner
    assert scheduler["depends_on"][[n for n, svc in services.items() if svc is maker][0]]["condition"] == \
        "service_completed_successfully"

    mounts = {}
    for volume in scheduler["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    config_source = mounts[env["ORCHESTRA_CONFIG"]]
    config_file = (COMPOSE.parent / config_source).resolve()
    assert config_file.is_file(), f"compose mounts {config_source}, which does not exist"
    settings = load_config_text(config_file.read_text(encoding="utf-8"), tmp_path)
    for cluster in settings.clusters.values():
        assert cluster.backend == "local"
        source = mounts.get(str(PurePosixPath(cluster.storage)))
        assert source in volumes, f"cluster {cluster.name}: storage {cluster.storage} is not a shared volume"


# ------------------------------------------------------------------------------------ metrics (issue 16)
def test_scheduler_metrics_are_served_where_the_annotations_and_the_service_say(tmp_path: Path) -> None:
    settings = load_config_text(the("ConfigMap")["data"]["orchestra.toml"], tmp_path)
    port = settings.scheduler.metrics_port
    assert port, "the configmap's [scheduler] has no metrics_port"
    assert settings.scheduler.metrics_host not in ("127.0.0.1", "localhost", "::1"), \
        "bound to the pod's loopback, Prometheus could not reach it"
    template = the("Deployment")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                           "prometheus.io/path": "/metrics"}
    [metrics_port] = [p for p in scheduler_container("Deployment")["ports"] if p["containerPort"] == port]
    service = the("Service")
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    [served] = service["spec"]["ports"]
    assert served["targetPort"] in (metrics_port["name"], port) and served["port"] == port
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service["metadata"]["annotations"] == annotations
    # The service selects the scheduler's pods, never the job pods (which carry managed-by=orchestra).
    assert MANAGED_BY not in service["spec"]["selector"]


def test_compose_monitoring_profile_scrapes_the_scheduler_and_provisions_the_dashboard(tmp_path: Path) -> None:
    [compose] = documents(COMPOSE)
    services = compose["services"]
    monitoring = {name for name, svc in services.items() if "monitoring" in (svc.get("profiles") or [])}
    assert monitoring == {"prometheus", "grafana"}
    assert all(not svc.get("profiles") for name, svc in services.items() if name not in monitoring), \
        "the core services must start without a profile"
    settings = load_config_text((DOCKER / "orchestra.toml").read_text(encoding="utf-8"), tmp_path)
    assert settings.scheduler.metrics_port and settings.scheduler.metrics_host == "0.0.0.0"

    def mounts(service: dict[str, Any]) -> dict[str, Path]:
        out = {}
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                out[target] = (COMPOSE.parent / source).resolve()
        return out

    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "command" not in prometheus  # the image's default --config.file is the mounted file
    [scrape] = documents(mounts(prometheus)["/etc/prometheus/prometheus.yml"])
    targets = [t for job in scrape["scrape_configs"] for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"scheduler:{settings.scheduler.metrics_port}"]
    grafana_mounts = mounts(grafana)
    provisioning = grafana_mounts["/etc/grafana/provisioning"]
    [datasources] = documents(provisioning / "datasources" / "prometheus.yaml")
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    [providers] = documents(provisioning / "dashboards" / "orchestra.yaml")
    [provider] = providers["providers"]
    dashboards = grafana_mounts[provider["options"]["path"]]
    dashboard = json.loads((dashboards / "orchestra.json").read_text(encoding="utf-8"))
    uids = {target["datasource"]["uid"] for panel in dashboard["panels"] for target in panel["targets"]}
    assert uids == {source["uid"]}, "every panel must use the provisioned data source"


# ------------------------------------------------------------------------------------ scripts/bench_k8s.py
def test_pod_creation_benchmark_runs() -> None:
    """scripts/bench.py imports bench_pod_creation: keep its contract (the rate itself is not asserted)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_k8s", ROOT / "scripts" / "bench_k8s.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.bench_pod_creation(40, concurrency=4)
    assert {"pods", "seconds", "pods_per_s", "concurrency"} <= result.keys()
    assert result["pods"] == 40 and result["concurrency"] == 4 and result["pods_per_s"] > 0
