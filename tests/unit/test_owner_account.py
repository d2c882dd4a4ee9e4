"""Who a job runs as (orchestra/security/accounts.py): the config's [users.<name>] ids, else the OS
account database; never root; a user with neither is refused in one line."""
from __future__ import annotations

import dataclasses
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra.config import Settings, UserAccountConfig, load_settings
from orchestra.errors import OrchestraError
from orchestra.security import accounts
from orchestra.security.accounts import NoAccount, OwnerAccount, owner_account


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    accounts._os_account.cache_clear()
    yield
    accounts._os_account.cache_clear()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"ORCHESTRA_HOME": str(tmp_path)})


def with_accounts(settings: Settings, **users: UserAccountConfig) -> Settings:
    return dataclasses.replace(settings, user_accounts=users)


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "orchestra.toml"
    path.write_text(text)
    return load_settings({"ORCHESTRA_CONFIG": str(path), "ORCHESTRA_HOME": str(tmp_path)})


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# ------------------------------------------------------------------------------------ the config
def test_the_config_gives_an_account(tmp_path: Path) -> None:
    settings = load(tmp_path, '[users.alice]\nshare = 2\nuid = 1001\ngid = 1001\ngroups = [2000, 1001, 2001]\n'
                              'home = "/home/alice"\n[users.bob]\nshare = 3\n')
    assert settings.user_shares == {"alice": 2.0, "bob": 3.0}  # shares as before
    assert settings.user_accounts == {"alice": UserAccountConfig(1001, 1001, (2000, 1001, 2001), "/home/alice")}
    # the primary group first, each group once
    assert owner_account(settings, "alice") == OwnerAccount("alice", 1001, 1001, (1001, 2000, 2001), "/home/alice")


def test_the_config_wins_over_the_os_even_after_a_cached_lookup(settings: Settings) -> None:
    from_os = owner_account(settings, "nobody")  # cached from now on
    assert from_os.uid == 65534
    mine = with_accounts(settings, nobody=UserAccountConfig(uid=5000, gid=5001))
    assert owner_account(mine, "nobody") == OwnerAccount("nobody", 5000, 5001, (5001,), "/")
    assert owner_account(settings, "nobody") == from_os


def test_config_ids_of_root_are_refused_at_lookup(settings: Settings) -> None:
    """The schema refuses 0 in a file; Settings built in code are checked again at the lookup."""
    for config, words in [(UserAccountConfig(uid=0, gid=1001), "uid 0 (root)"),
                          (UserAccountConfig(uid=1001, gid=0), "group 0 (root)"),
                          (UserAccountConfig(uid=1001, gid=1001, groups=(0,)), "group 0 (root)")]:
        with pytest.raises(NoAccount) as err:
            owner_account(with_accounts(settings, alice=config), "alice")
        assert words in one_line(err) and "[users.alice]" in str(err.value)


BAD = [
    ("uid = 0\ngid = 1001\n", "users.alice.uid", "uid must be an integer from 1 to 4294967294"),
    ('uid = "x"\ngid = 1001\n', "users.alice.uid", '(got "x")'),
    ("uid = 1001\ngid = -1\n", "users.alice.gid", "gid must be an integer from 1"),
    ("uid = 1001.5\ngid = 1001\n", "users.alice.uid", "uid = 1001"),
    ("uid = 4294967295\ngid = 1001\n", "users.alice.uid", "to 4294967294"),
    ("uid = 1001\ngid = 1001\ngroups = [0]\n", "users.alice.groups[0]", "groups must be a list of group ids"),
    ("uid = 1001\ngid = 1001\ngroups = 5\n", "users.alice.groups", "groups must be a list of group ids"),
    ('uid = 1001\ngid = 1001\nhome = "home/alice"\n', "users.alice.home", "absolute path"),
    ("uid = 1001\n", "users.alice.gid", "uid given without gid; set both"),
    ("groups = [5]\n", "users.alice.uid", "groups given without uid"),
    ('shell = "/bin/sh"\n', "users.alice.shell", "known keys: gid, groups, home, share, uid"),
]


@pytest.mark.parametrize("text, key, phrase", BAD, ids=[b[1] + ":" + b[0].split("\n")[0] for b in BAD])
def test_bad_ids_in_the_config_are_one_line(tmp_path: Path, text: str, key: str, phrase: str) -> None:
    with pytest.raises(OrchestraError) as err:
        load(tmp_path, "[users.alice]\n" + text)
    message = one_line(err)
    assert message.startswith(f"config file {tmp_path / 'orchestra.toml'}: {key}: "), message
    assert phrase in message, message


# ------------------------------------------------------------------------------------ the OS
def test_an_os_account_with_its_groups_and_home(settings: Settings) -> None:
    entry = pwd.getpwnam("nobody")
    account = owner_account(settings, "nobody")
    assert account == OwnerAccount("nobody", 65534, entry.pw_gid,
                                   tuple(dict.fromkeys([entry.pw_gid, *os.getgrouplist("nobody", entry.pw_gid)])),
                                   entry.pw_dir)
    assert account.groups[0] == account.gid


def test_supplementary_groups_come_from_the_os(settings: Settings) -> None:
    """Any account of this host that belongs to more groups than its primary one."""
    found = [e for e in pwd.getpwall() if e.pw_uid and e.pw_gid and len(set(os.getgrouplist(e.pw_name, e.pw_gid))) > 1
             and 0 not in os.getgrouplist(e.pw_name, e.pw_gid)]
    if not found:
        pytest.skip("no account on this host has supplementary groups")
    entry = found[0]
    account = owner_account(settings, entry.pw_name)
    assert set(account.groups) == set(os.getgrouplist(entry.pw_name, entry.pw_gid)) and len(account.groups) > 1
    assert (account.uid, account.gid, account.home) == (entry.pw_uid, entry.pw_gid, entry.pw_dir)


def test_an_unknown_user_has_no_account(settings: Settings) -> None:
    for name in ("no-such-user-7f3a", "bad\0name"):
        with pytest.raises(NoAccount) as err:
            owner_account(settings, name)
        message = one_line(err)
        assert f"user {name!r} has no OS account on this host and no uid/gid in [users.{name}]" in message
        assert "useradd" in message


def test_root_is_refused(settings: Settings) -> None:
    with pytest.raises(NoAccount) as err:
        owner_account(settings, "root")
    assert "maps to uid 0 (root) through its OS account" in one_line(err)
    assert "a job never runs as root" in str(err.value)


def test_a_failed_lookup_is_not_cached(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """An account created after a refusal is found by the next launch, without a restart."""
    with pytest.raises(NoAccount):
        owner_account(settings, "ghost-7f3a")
    entry = pwd.struct_passwd(("ghost-7f3a", "x", 4242, 4242, "", "/home/ghost", "/bin/sh"))
    monkeypatch.setattr(accounts.pwd, "getpwnam", lambda name: entry)
    monkeypatch.setattr(accounts.os, "getgrouplist", lambda name, gid: [gid, 5000])
    assert owner_account(settings, "ghost-7f3a") == OwnerAccount("ghost-7f3a", 4242, 4242, (4242, 5000), "/home/ghost")
