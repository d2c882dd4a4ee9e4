"""A task whose owner has no account (no OS account on the scheduler's host, no [users.<name>] uid
and gid) never gets a pod: each attempt fails at launch with the reason, which `maestro task show`
shows (not retried: no attempt could run); the other users' jobs run as usual."""
from __future__ import annotations

import json
import pwd
from pathlib import Path

import pytest

from tests.e2e.scheduler_helpers import make_inputs, run_scheduler
from tests.helpers import Cli
from tests.k8s.test_e2e_k8s import FAST, K8sEnv, create, register

NOBODY_KNOWS = "carol"  # neither in the tests' config nor (checked below) an OS account


def test_a_task_of_a_user_without_an_account_fails_with_the_reason(cli: Cli, storage: Path,
                                                                   k8s_env: K8sEnv) -> None:
    try:
        pwd.getpwnam(NOBODY_KNOWS)
        pytest.skip(f"this host has an OS account {NOBODY_KNOWS!r}")
    except KeyError:
        pass
    sim = k8s_env()
    register(cli, storage, 2)  # alice: [users.alice] uid/gid in the config
    create(cli, "fine", "echo %DATA %IN %OUT", "--bypass")
    configs, data = make_inputs(storage / "carol-in", 2)
    user = NOBODY_KNOWS
    cli.ok(f"orchestra_registry.py -d user.{user}.data -p {data} --cluster LPS", user=user)
    cli.ok(f"orchestra_registry.py -d user.{user}.configs -p {configs}/ --cluster LPS", user=user)
    cli.ok(f"maestro.py task create -c user.{user}.configs -d user.{user}.data -t user.{user}.orphan "
           f"--containerImage {user}/img --exec 'echo %DATA %IN %OUT' --bypass", user=user)

    result = run_scheduler(*FAST)
    assert result.returncode == 0, result.stderr

    reason = (f"user '{user}' has no OS account on this host and no uid/gid in [users.{user}]; create the account "
              f"(useradd, LDAP) or set [users.{user}] uid = ..., gid = ... in the config")
    jobs = json.loads(cli.ok(f"maestro job list -t user.{user}.orphan --json", user=user).out)
    # no attempt of this task could ever run: each job fails at its first launch, not retried
    assert [(j["status"], j["attempts"], j["reason"]) for j in jobs] == [("failed", 1, reason)] * 2
    shown = cli.ok(f"maestro task show -t user.{user}.orphan", user=user).out
    assert reason in shown, shown
    # no pod was ever made for carol; alice's ran as usual
    assert all(labels["orchestra/user"] == "alice" for labels in
               (pod["metadata"]["labels"] for pod in sim.store.bodies.values())), sorted(sim.store.creates)
    assert len(sim.store.creates) == 2
    alice = json.loads(cli.ok("maestro job list -t user.alice.fine --json").out)
    assert [j["status"] for j in alice] == ["succeeded"] * 2
