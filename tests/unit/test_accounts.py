"""Accounts: Slurm's one-level account tree on top of the flat fair share (pure, no database)."""
from __future__ import annotations

import numpy as np
import pytest

from orchestra import fairshare
from orchestra.accounts import effective_shares
from orchestra.config import AccountConfig, FairShareConfig, load_settings
from orchestra.errors import OrchestraError

PHYSICS = {"physics": AccountConfig(2.0, ("alice", "bob"))}


def normalised(names: list[str], shares: list[float], accounts: dict[str, AccountConfig]) -> list[float]:
    s = effective_shares(names, np.array(shares, dtype=float), accounts)
    return list(s / s.sum())


def test_no_accounts_is_the_flat_policy() -> None:
    assert normalised(["alice", "bob", "carol"], [1, 2, 1], {}) == [0.25, 0.5, 0.25]


def test_account_share_is_split_among_its_active_users() -> None:
    # physics (2) vs carol (an account of her own, share 1): 2/3 vs 1/3; alice and bob halve physics'
    assert normalised(["alice", "bob", "carol"], [1, 1, 1], PHYSICS) == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    # bob idle: alice holds all of physics' 2/3
    assert normalised(["alice", "carol"], [1, 1], PHYSICS) == pytest.approx([2 / 3, 1 / 3])
    # user shares count inside the account: alice 3, bob 1 -> 3/4 and 1/4 of physics
    assert normalised(["alice", "bob", "carol"], [3, 1, 1], PHYSICS) == pytest.approx([0.5, 1 / 6, 1 / 3])


def test_allocate_gives_accounts_their_shares() -> None:
    """Three backlogged users, 12 free slots: physics (alice + bob) gets 8, carol 4."""
    names = ["alice", "bob", "carol"]
    inp = fairshare.PolicyInput(
        now=0.0, user_usage=np.zeros(3), user_share=effective_shares(names, np.ones(3), PHYSICS),
        user_running=np.zeros(3, dtype=np.int64), user_cap=np.zeros(3, dtype=np.int64),
        task_user=np.array([0, 1, 2]), task_queue=np.zeros(3, dtype=np.int64), task_queued=np.full(3, 100),
        task_priority=np.zeros(3, dtype=np.int64), task_created=np.zeros(3), task_scouting=np.zeros(3, dtype=bool),
        queue_free=np.array([12]), queue_charge=np.array([1.0]),
    )
    take = fairshare.allocate(inp, FairShareConfig())
    assert list(take) == [4, 4, 4]  # per account: 8 vs 4
    alone = fairshare.PolicyInput(**{**inp.__dict__, "user_share": effective_shares(["alice", "carol"], np.ones(2),
                                                                                    PHYSICS),
                                     "user_usage": np.zeros(2), "user_running": np.zeros(2, dtype=np.int64),
                                     "user_cap": np.zeros(2, dtype=np.int64), "task_user": np.array([0, 1]),
                                     "task_queue": np.zeros(2, dtype=np.int64), "task_queued": np.full(2, 100),
                                     "task_priority": np.zeros(2, dtype=np.int64), "task_created": np.zeros(2),
                                     "task_scouting": np.zeros(2, dtype=bool)})
    assert list(fairshare.allocate(alone, FairShareConfig())) == [8, 4]


@pytest.mark.parametrize("toml, message", [
    ('[accounts.physics]\nshare = 0\nusers = ["alice"]\n', "share must be a number greater than 0"),
    ('[accounts.physics]\nshare = "two"\n', "share must be a number greater than 0"),
    ('[accounts.physics]\nusers = "alice"\n', "users must be a list of login names"),
    ('[accounts.physics]\nmembers = ["alice"]\n', "unknown keys ['members']"),
    ('[accounts.a]\nusers = ["alice"]\n[accounts.b]\nusers = ["alice"]\n', "user 'alice' is already in account 'a'"),
])
def test_bad_accounts_are_one_line_errors(tmp_path, monkeypatch, toml: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.toml"
    path.write_text(toml)
    monkeypatch.setenv("ORCHESTRA_CONFIG", str(path))
    monkeypatch.setenv("ORCHESTRA_HOME", str(tmp_path))
    with pytest.raises(OrchestraError) as err:
        load_settings()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_accounts_load(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.toml"
    path.write_text('[accounts.physics]\nshare = 2\nusers = ["alice", "bob"]\n')
    monkeypatch.setenv("ORCHESTRA_CONFIG", str(path))
    monkeypatch.setenv("ORCHESTRA_HOME", str(tmp_path))
    settings = load_settings()
    assert settings.accounts == PHYSICS
    assert settings.sources["accounts.physics"].endswith("c.toml") or "c.toml" in settings.sources["accounts.physics"]
