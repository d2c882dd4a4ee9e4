"""A Kubernetes API simulator for tests: real HTTP, real REST, pods run as local processes."""
from tests.k8s_sim.kubelet import NodeOptions
from tests.k8s_sim.server import Faults, KubeSim

__all__ = ["Faults", "KubeSim", "NodeOptions"]
