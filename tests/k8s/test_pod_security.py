"""Every pod Orchestra makes meets the Pod Security Standard "restricted".

No API server runs here, so Pod Security Admission cannot refuse a pod: `violations` implements
the documented controls instead (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
the "baseline" table, then the "restricted" one, which includes baseline) on the pod as the API
server receives it (camelCase JSON: the body the backend sent to the simulator, or a manifest's
pod template). It is applied to the job pods the backend generates (cpu and gpu queues, PVC and
hostPath storage, every optional field set) and to the scheduler's own Deployment and CronJob
(docker/k8s/, whose namespace enforces "restricted"); negative cases show it catches violations.

A hostPath volume violates even "baseline": a cluster with `storage_host_path` cannot run in a
namespace enforcing either level (README "The pods"); the checker says so for such a pod.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestra.backends.base import LaunchSpec
from orchestra.backends.kubernetes import KubernetesBackend
from tests.k8s.conftest import ALICE, k8s_cluster
from tests.k8s_sim import KubeSim

Pod = dict[str, Any]
K8S = Path(__file__).resolve().parents[2] / "docker" / "k8s"

# ------------------------------------------------------------------------------------ the standard
# Baseline "Capabilities": adding anything beyond these is disallowed.
BASELINE_CAPABILITIES = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                                   "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
# Baseline "Sysctls": the safe, namespaced subset.
SAFE_SYSCTLS = frozenset({"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                          "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                          "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                          "net.ipv4.tcp_keepalive_probes"})
# Baseline "SELinux": allowed seLinuxOptions.type values (user and role must stay unset).
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
# Restricted "Volume Types": the only volume sources allowed.
RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                                "projected", "secret"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _containers(spec: Pod) -> Iterator[tuple[str, Pod]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(kind) or []:
            yield f"{kind} {container.get('name')!r}", container


def _apparmor_ok(profile: Pod | None) -> bool:
    return profile is None or profile.get("type") in (None, "RuntimeDefault", "Localhost")


def baseline_violations(spec: Pod, annotations: dict[str, str] | None = None) -> list[str]:
    """The "baseline" controls `spec` (a PodSpec) and its pod's `annotations` break, one line each."""
    found: list[str] = []
    pod_context = spec.get("securityContext") or {}
    # HostProcess
    if (pod_context.get("windowsOptions") or {}).get("hostProcess"):
        found.append("HostProcess: pod securityContext.windowsOptions.hostProcess")
    # Host Namespaces
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"Host Namespaces: {field} is true")
    # HostPath Volumes
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            found.append(f"HostPath Volumes: volume {volume.get('name')!r} is a hostPath")
    # AppArmor (pod level and annotations)
    if not _apparmor_ok(pod_context.get("appArmorProfile")):
        found.append(f"AppArmor: pod appArmorProfile.type {pod_context['appArmorProfile'].get('type')!r}")
    for key, value in (annotations or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (value == "runtime/default" or value.startswith("localhost/")):
            found.append(f"AppArmor: annotation {key} = {value!r}")
    # SELinux (pod level)
    found += _selinux("pod", pod_context.get("seLinuxOptions"))
    # Seccomp (pod level): never Unconfined
    if (pod_context.get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append("Seccomp: pod seccompProfile.type is Unconfined")
    # Sysctls
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"Sysctls: {sysctl.get('name')!r} is not in the safe set")
    for where, container in _containers(spec):
        context = container.get("securityContext") or {}
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"HostProcess: {where}")
        # Privileged Containers
        if context.get("privileged"):
            found.append(f"Privileged Containers: {where} is privileged")
        # Capabilities
        added = set((context.get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        if added:
            found.append(f"Capabilities: {where} adds {sorted(added)}")
        # Host Ports
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"Host Ports: {where} uses hostPort {port['hostPort']}")
        if not _apparmor_ok(context.get("appArmorProfile")):
            found.append(f"AppArmor: {where} appArmorProfile.type {context['appArmorProfile'].get('type')!r}")
        found += _selinux(where, context.get("seLinuxOptions"))
        # /proc Mount Type
        if context.get("procMount") not in (None, "Default"):
            found.append(f"/proc Mount Type: {where} procMount {context['procMount']!r}")
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"Seccomp: {where} seccompProfile.type is Unconfined")
    return found


def _selinux(where: str, options: Pod | None) -> list[str]:
    options = options or {}
    found = []
    if options.get("type") not in (None, *SELINUX_TYPES):
        found.append(f"SELinux: {where} seLinuxOptions.type {options['type']!r}")
    for field in ("user", "role"):
        if options.get(field):
            found.append(f"SELinux: {where} sets seLinuxOptions.{field}")
    return found


def restricted_violations(spec: Pod, annotations: dict[str, str] | None = None) -> list[str]:
    """The "restricted" controls (baseline included) `spec` breaks, one line each."""
    found = baseline_violations(spec, annotations)
    pod_context = spec.get("securityContext") or {}
    linux = (spec.get("os") or {}).get("name") != "windows"  # some controls are Linux-only
    # Volume Types
    for volume in spec.get("volumes") or []:
        sources = set(volume) - {"name"}
        if not sources <= RESTRICTED_VOLUMES:
            found.append(f"Volume Types: volume {volume.get('name')!r} is {sorted(sources - RESTRICTED_VOLUMES)}")
    # Running as Non-root user: runAsUser never 0
    if pod_context.get("runAsUser") == 0:
        found.append("Running as Non-root user: pod runAsUser is 0")
    pod_non_root = pod_context.get("runAsNonRoot") is True
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
    for where, container in _containers(spec):
        context = container.get("securityContext") or {}
        # Privilege Escalation (Linux): explicitly false
        if linux and context.get("allowPrivilegeEscalation") is not False:
            found.append(f"Privilege Escalation: {where} does not set allowPrivilegeEscalation: false")
        # Running as Non-root: pod true and no container false, or every container true
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            found.append(f"Running as Non-root: {where} may run as root (runAsNonRoot not true here or on the pod)")
        if context.get("runAsUser") == 0:
            found.append(f"Running as Non-root user: {where} runAsUser is 0")
        # Seccomp (Linux): RuntimeDefault or Localhost, on the pod or on every container
        kind = (context.get("seccompProfile") or {}).get("type")
        if linux and not (kind in ("RuntimeDefault", "Localhost") or (kind is None and pod_seccomp)):
            found.append(f"Seccomp: {where} has no RuntimeDefault or Localhost profile (here or on the pod)")
        # Capabilities (Linux): drop ALL, add at most NET_BIND_SERVICE
        capabilities = context.get("capabilities") or {}
        if linux and "ALL" not in (capabilities.get("drop") or []):
            found.append(f"Capabilities: {where} does not drop ALL")
        extra = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if linux and extra:
            found.append(f"Capabilities: {where} adds {sorted(extra)} (restricted allows NET_BIND_SERVICE only)")
    return found


# ------------------------------------------------------------------------------------ the job pods
def job_pod(sim: KubeSim, backend: KubernetesBackend, spec: LaunchSpec) -> Pod:
    """The pod as the API server received it."""
    [launched] = backend.launch([spec])
    assert launched.error is None, launched.error
    pod = sim.sent(spec.backend_name)
    assert pod is not None
    return pod


@pytest.mark.parametrize("queue", ["cpu", "gpu"])
@pytest.mark.parametrize("options", [{}, {"node_selector": {"pool": "batch"}, "service_account": "jobs",
                                          "tolerations": [{"key": "gpu", "operator": "Exists"}],
                                          "image_pull_secrets": ["regcred"], "priority_class": "low"}],
                         ids=["plain", "every-option"])
def test_job_pods_on_a_pvc_meet_restricted(sim: KubeSim, make_backend: Callable[..., KubernetesBackend],
                                           spec: Callable[..., LaunchSpec], storage: Path, queue: str,
                                           options: dict[str, Any]) -> None:
    cluster = k8s_cluster(storage, storage_host_path=None, storage_pvc="orchestra-storage", **options)
    pod = job_pod(sim, make_backend(cluster_config=cluster), spec(queue=queue, cluster_config=cluster))
    assert restricted_violations(pod["spec"], pod["metadata"].get("annotations")) == []
    # ... and they run as their owner: [users.alice] in the tests' config
    context = pod["spec"]["securityContext"]
    assert context == {"runAsNonRoot": True, "runAsUser": ALICE.uid, "runAsGroup": ALICE.gid,
                       "supplementalGroups": [ALICE.gid, *ALICE.groups], "seccompProfile": {"type": "RuntimeDefault"}}
    # no fsGroup: a CSI driver with fsGroupPolicy File would chgrp the whole shared storage to it
    assert "fsGroup" not in context
    [container] = pod["spec"]["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                             "capabilities": {"drop": ["ALL"]}}


@pytest.mark.parametrize("queue", ["cpu", "gpu"])
def test_job_pods_on_a_host_path_break_only_the_host_path_rules(sim: KubeSim, backend: KubernetesBackend,
                                                                spec: Callable[..., LaunchSpec], queue: str) -> None:
    """storage_host_path (the tests' default cluster) is incompatible with a restricted, or even a
    baseline, namespace: the checker flags the volume and nothing else."""
    pod = job_pod(sim, backend, spec(queue=queue))
    assert baseline_violations(pod["spec"]) == ["HostPath Volumes: volume 'storage' is a hostPath"]
    assert restricted_violations(pod["spec"]) == ["HostPath Volumes: volume 'storage' is a hostPath",
                                                  "Volume Types: volume 'storage' is ['hostPath']"]


# ------------------------------------------------------------------------------------ the scheduler's pods
def _template(kind: str, file: str | None = None) -> Pod:
    """The pod template of the one `kind` in `file` (None: among the scheduler's manifests, which
    are every file but the dashboard's web.yaml)."""
    paths = [K8S / file] if file else [p for p in sorted(K8S.glob("*.yaml")) if p.name != "web.yaml"]
    [doc] = [d for path in paths for d in yaml.safe_load_all(path.read_text(encoding="utf-8"))
             if d and d.get("kind") == kind]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return doc["spec"]["template"]


@pytest.mark.parametrize("kind", ["Deployment", "CronJob"])
def test_the_schedulers_pods_meet_restricted(kind: str) -> None:
    template = _template(kind)
    assert len(list(_containers(template["spec"]))) >= 2  # the init containers are checked too
    assert restricted_violations(template["spec"], template["metadata"].get("annotations")) == []


def test_the_dashboards_pods_meet_restricted() -> None:
    template = _template("Deployment", "web.yaml")
    assert restricted_violations(template["spec"], template["metadata"].get("annotations")) == []


def test_the_namespace_enforces_restricted() -> None:
    [namespace] = [d for d in yaml.safe_load_all((K8S / "namespace.yaml").read_text(encoding="utf-8"))
                   if d and d["kind"] == "Namespace"]
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "latest", mode


# ------------------------------------------------------------------------------------ the checker itself
COMPLIANT: Pod = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1001, "seccompProfile": {"type": "RuntimeDefault"}},
    "initContainers": [{"name": "init", "securityContext": {"allowPrivilegeEscalation": False,
                                                            "capabilities": {"drop": ["ALL"]}}}],
    "containers": [{"name": "main", "securityContext": {"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "x"}}, {"name": "tmp", "emptyDir": {}}],
}


def _main(pod: Pod) -> Pod:
    return pod["containers"][0]["securityContext"]


def _set(path: str, value: Any) -> Callable[[Pod], None]:
    """A mutation setting `path` (dots; `main.` / `init.` for the containers' securityContext)."""
    def apply(pod: Pod) -> None:
        head, *rest = path.split(".")
        target = {"main": _main(pod), "init": pod["initContainers"][0]["securityContext"]}.get(head)
        if target is None:
            target, rest = pod, [head, *rest]
        for key in rest[:-1]:
            target = target.setdefault(key, {})
        target[rest[-1]] = value
    return apply


def _drop(path: str) -> Callable[[Pod], None]:
    def apply(pod: Pod) -> None:
        head, *rest = path.split(".")
        target = {"main": _main(pod), "init": pod["initContainers"][0]["securityContext"]}.get(head, pod)
        if target is pod:
            rest = [head, *rest]
        for key in rest[:-1]:
            target = target[key]
        del target[rest[-1]]
    return apply


VIOLATIONS = [
    # (what is wrong, mutation of COMPLIANT, the level that must catch it, a phrase of the rule)
    ("runAsUser 0 on the pod", _set("securityContext.runAsUser", 0), "restricted", "pod runAsUser is 0"),
    ("runAsUser 0 on a container", _set("main.runAsUser", 0), "restricted", "runAsUser is 0"),
    ("privileged", _set("main.privileged", True), "baseline", "Privileged Containers"),
    ("no drop ALL", _set("main.capabilities", {"drop": ["NET_RAW"]}), "restricted", "does not drop ALL"),
    ("no capabilities at all (init)", _drop("init.capabilities"), "restricted", "does not drop ALL"),
    ("adds SYS_ADMIN", _set("main.capabilities.add", ["SYS_ADMIN"]), "baseline", "adds ['SYS_ADMIN']"),
    ("adds CHOWN", _set("main.capabilities.add", ["CHOWN"]), "restricted", "NET_BIND_SERVICE only"),
    ("privilege escalation unset", _drop("main.allowPrivilegeEscalation"), "restricted", "allowPrivilegeEscalation"),
    ("privilege escalation true", _set("init.allowPrivilegeEscalation", True), "restricted", "allowPrivilegeEscalation"),
    ("runAsNonRoot unset", _drop("securityContext.runAsNonRoot"), "restricted", "may run as root"),
    ("container runAsNonRoot false", _set("main.runAsNonRoot", False), "restricted", "may run as root"),
    ("no seccomp", _drop("securityContext.seccompProfile"), "restricted", "Seccomp"),
    ("seccomp Unconfined", _set("main.seccompProfile", {"type": "Unconfined"}), "baseline", "Unconfined"),
    ("hostNetwork", _set("hostNetwork", True), "baseline", "Host Namespaces"),
    ("hostPID", _set("hostPID", True), "baseline", "Host Namespaces"),
    ("hostIPC", _set("hostIPC", True), "baseline", "Host Namespaces"),
    ("hostPort", _set("containers", [{"name": "main", "ports": [{"containerPort": 80, "hostPort": 80}],
                                      "securityContext": {"allowPrivilegeEscalation": False,
                                                          "capabilities": {"drop": ["ALL"]}}}]),
     "baseline", "Host Ports"),
    ("hostPath volume", _set("volumes", [{"name": "h", "hostPath": {"path": "/"}}]), "baseline", "HostPath"),
    ("nfs volume", _set("volumes", [{"name": "n", "nfs": {"server": "s", "path": "/"}}]), "restricted",
     "Volume Types"),
    ("unsafe sysctl", _set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]), "baseline",
     "Sysctls"),
    ("procMount Unmasked", _set("main.procMount", "Unmasked"), "baseline", "/proc Mount Type"),
    ("SELinux type", _set("securityContext.seLinuxOptions", {"type": "spc_t"}), "baseline", "SELinux"),
    ("SELinux user", _set("main.seLinuxOptions", {"user": "system_u"}), "baseline", "SELinux"),
    ("AppArmor unconfined", _set("main.appArmorProfile", {"type": "Unconfined"}), "baseline", "AppArmor"),
    ("HostProcess", _set("securityContext.windowsOptions", {"hostProcess": True}), "baseline", "HostProcess"),
]


def test_the_compliant_example_passes() -> None:
    assert restricted_violations(copy.deepcopy(COMPLIANT)) == []
    annotations = {APPARMOR_ANNOTATION + "main": "runtime/default"}
    assert restricted_violations(copy.deepcopy(COMPLIANT), annotations) == []


@pytest.mark.parametrize("what, mutate, level, phrase", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_the_checker_catches_each_violation(what: str, mutate: Callable[[Pod], None], level: str,
                                            phrase: str) -> None:
    pod = copy.deepcopy(COMPLIANT)
    mutate(pod)
    found = restricted_violations(pod)
    assert any(phrase in line for line in found), (what, found)
    if level == "baseline":
        assert any(phrase in line for line in baseline_violations(pod)), (what, baseline_violations(pod))
    else:
        assert baseline_violations(pod) == [], (what, "restricted-only, yet baseline flags it")


def test_an_apparmor_annotation_other_than_the_defaults_is_caught() -> None:
    found = baseline_violations(copy.deepcopy(COMPLIANT), {APPARMOR_ANNOTATION + "main": "unconfined"})
    assert found == ["AppArmor: annotation container.apparmor.security.beta.kubernetes.io/main = 'unconfined'"]
