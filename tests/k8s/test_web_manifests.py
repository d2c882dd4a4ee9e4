"""The dashboard's packaging (docker/k8s/web.yaml, the `web` and `web-role` services of
docker/compose.yaml), checked like the scheduler's in test_manifests.py: the objects validate, the
command lines parse with the real CLI, the probes, ports and names agree, the pods are hardened,
the published port is the host's loopback only; and the compose file's role script, run for real
with psql against PostgreSQL, makes a role that reads everything and writes nothing.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import PurePosixPath
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from orchestra.backends.kubernetes import MANAGED_BY
from tests.k8s.test_manifests import (COMPOSE, K8S, compose_env, dockerfile_instructions, documents, parse_orchestra,
                                      the)

WEB = K8S / "web.yaml"


def web(kind: str) -> dict[str, Any]:
    [found] = [doc for doc in documents(WEB) if doc["kind"] == kind]
    return found


def web_container() -> dict[str, Any]:
    [container] = web("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_web_yaml_holds_a_deployment_and_its_service_and_kustomize_applies_it() -> None:
    assert sorted(doc["kind"] for doc in documents(WEB)) == ["Deployment", "Service"]
    [kustomization] = documents(K8S / "kustomization.yaml")
    assert "web.yaml" in kustomization["resources"]
    images = {i["name"] for i in kustomization["images"]}
    assert web_container()["image"].rsplit(":", 1)[0] in images


def test_the_deployment_serves_the_dashboard_on_its_named_port_with_probes_on_the_status_api() -> None:
    deployment = web("Deployment")
    assert deployment["spec"]["replicas"] == 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert MANAGED_BY not in labels and MANAGED_BY not in deployment["metadata"]["labels"]
    container = web_container()
    assert not container.get("args")
    path, params = parse_orchestra(container["command"])
    assert path == "web" and params["host"] == "0.0.0.0"
    [port] = container["ports"]
    assert port["containerPort"] == params["port"]
    for probe in ("readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/api/status" and check["port"] in (port["name"], port["containerPort"]), probe


def test_the_pods_are_hardened_and_bounded() -> None:
    spec = web("Deployment")["spec"]["template"]["spec"]
    uid = int([args for word, args in dockerfile_instructions() if word == "USER"][-1].split(":")[0])
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == uid
    assert spec["automountServiceAccountToken"] is False, "the dashboard never calls the Kubernetes API"
    container = web_container()
    hardened = container["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True and hardened["allowPrivilegeEscalation"] is False
    assert hardened["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    # A read-only root: whatever it writes goes to an emptyDir; the storage (job logs) is only read.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    storage = volumes[mounts["/data/orchestra"]["name"]]["persistentVolumeClaim"]
    assert storage["readOnly"] is True and mounts["/data/orchestra"]["readOnly"] is True


def test_the_deployment_reads_the_database_as_the_read_only_web_role_and_the_shared_config() -> None:
    container, secret, configmap = web_container(), the("Secret"), the("ConfigMap")
    env = {e["name"]: e for e in container["env"]}
    ref = env["ORCHESTRA_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    url = make_url(secret["stringData"][ref["key"]])
    assert url.drivername == "postgresql+psycopg2" and url.username == "orchestra_web"
    config = PurePosixPath(env["ORCHESTRA_CONFIG"]["value"])
    mounts = {PurePosixPath(m["mountPath"]): m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in web("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts[config.parent]["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert config.name in configmap["data"]


def test_the_service_selects_the_web_pods_only() -> None:
    service, labels = web("Service"), web("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "expose it through the authenticating proxy"
    assert service["spec"]["selector"].items() <= labels.items()
    scheduler_labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= scheduler_labels.items()
    assert not the("Service")["spec"]["selector"].items() <= labels.items(), "the metrics service selects web pods"
    [port] = service["spec"]["ports"]
    assert port["targetPort"] in ("http", web_container()["ports"][0]["containerPort"])


# ------------------------------------------------------------------------------------ compose
def compose_services() -> dict[str, Any]:
    [compose] = documents(COMPOSE)
    return compose["services"]


def test_compose_serves_the_dashboard_on_the_hosts_loopback_only() -> None:
    services = compose_services()
    web_service = services["web"]
    path, params = parse_orchestra(["orchestra", *web_service["command"]])
    assert path == "web" and params["host"] == "0.0.0.0"
    assert web_service["ports"], "the dashboard's port is published"
    for published in web_service["ports"]:
        host, host_port, container_port = str(published).split(":")
        assert host == "127.0.0.1", f"{published}: publish on the host's loopback only"
        assert int(container_port) == params["port"]
    assert web_service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert web_service["depends_on"]["web-role"]["condition"] == "service_completed_successfully"
    assert services["web-role"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert any(v.endswith(":/data/orchestra:ro") for v in web_service["volumes"]), "storage read-only"
    assert "/api/status" in " ".join(web_service["healthcheck"]["test"])


def test_compose_web_connects_as_the_role_its_one_shot_service_makes() -> None:
    services = compose_services()
    url = make_url(compose_env(services["web"])["ORCHESTRA_DATABASE_URL"])
    maker = compose_env(services["web-role"])
    assert url.username == "orchestra_web" and url.host == "postgres"
    assert url.password == maker["WEB_PASSWORD"]
    owner = make_url(compose_env(services["migrate"])["ORCHESTRA_DATABASE_URL"])
    assert (maker["PGUSER"], maker["PGPASSWORD"], maker["PGDATABASE"]) == (owner.username, owner.password,
                                                                           owner.database)
    script = services["web-role"]["entrypoint"][-1]
    assert "GRANT orchestra_readers TO orchestra_web" in script


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_compose_role_script_makes_a_role_that_reads_and_never_writes(db_url: str) -> None:
    """The `web-role` entrypoint, run as compose would (its `$$` unescaped) with psql against the
    tests' server, twice (compose runs it on every `up`): orchestra_web can read and not write."""
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed (apt-get install postgresql-client)")
    entrypoint = compose_services()["web-role"]["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"]
    script = entrypoint[2].replace("$$", "$")
    url = make_url(db_url)
    socket_dir = url.query.get("host")
    env = {**os.environ, "PGHOST": str(socket_dir or url.host), "PGPORT": str(url.port or 5432),
           "PGUSER": str(url.username), "PGDATABASE": str(url.database), "WEB_PASSWORD": "pw-web"}
    for _ in range(2):
        out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    engine = sqlalchemy.create_engine(url.set(username="orchestra_web", password="pw-web"))
    try:
        with engine.connect() as conn:
            for table in ("tasks", "jobs", "attempts", "users"):
                conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}")).scalar_one()
        for statement in ("DELETE FROM tasks", "UPDATE jobs SET status = 'killed'",
                          "INSERT INTO users (name) VALUES ('mallory')"):
            with engine.connect() as conn, pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"):
                conn.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()
