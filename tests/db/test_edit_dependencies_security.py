"""PostgreSQL, as password-authenticated plain roles (tests/db/test_security.py's world): `task edit`,
`task create --after` and `orchestra_registry --from-task` work for a task's owner through the
privileges and policies of migration 0008, and every route for bob to alice's task is refused by
the server itself, leaving the database exactly as it was."""
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.db.test_security import POSTGRES_ONLY, World, role_url, world  # noqa: F401 - the fixture

TABLES = ("tasks", "jobs", "task_events", "task_dependencies", "datasets", "dataset_files")


def snapshot(w: World) -> dict[str, list[Any]]:
    with w.owner.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1, 2"))] for t in TABLES}


ATTACKS = [
    ("edit alice's task through the function", "SELECT orchestra_task_edit({alice_task}, 'bob', "
                                               "'{{\"priority\": 9}}'::jsonb, NULL, NULL)"),
    ("edit alice's task in her name", "SELECT orchestra_task_edit({alice_task}, 'alice', "
                                      "'{{\"priority\": 9}}'::jsonb, NULL, NULL)"),
    ("give alice's jobs a command through the function",
     "SELECT orchestra_task_edit({alice_task}, 'bob', '{{\"image\": \"evil/x\"}}'::jsonb, "
     "ARRAY[{alice_job}]::bigint[], ARRAY['rm -rf ~']::text[])"),
    ("change one's own task's command directly", "UPDATE tasks SET command = 'x %DATA %IN %OUT' WHERE id = {bob_task}"),
    ("change one's own job's command directly", "UPDATE jobs SET command = 'x' WHERE id = {bob_job}"),
    ("forge a history entry", "INSERT INTO task_events (task_id, at, actor, what, details) "
                              "VALUES ({alice_task}, 0, 'alice', 'edit', '{{}}')"),
    ("make alice's task wait for bob's", "INSERT INTO task_dependencies (task_id, depends_on_id, kind) "
                                         "VALUES ({alice_task}, {bob_task}, 'after')"),
    ("make bob's task wait for alice's", "INSERT INTO task_dependencies (task_id, depends_on_id, kind) "
                                         "VALUES ({bob_task}, {alice_task}, 'after')"),
    ("claim alice's task outputs as a dataset",
     "INSERT INTO datasets (name, owner_id, cluster, path, is_dir, n_files, total_size, created_at, source_task_id) "
     "VALUES ('user.alice.out', {alice_uid}, 'LPS', '/x', true, 0, 0, 0, {alice_task})"),
]


@POSTGRES_ONLY
def test_edit_and_dependencies_for_the_owner_and_never_for_bob(world: World) -> None:  # noqa: F811
    ids = world.ids
    world.ok("alice", "maestro task kill -t user.alice.t")
    out = world.ok("alice", "maestro task edit -t user.alice.t --exec 'echo new %DATA %IN %OUT' --priority 3").out
    assert "edited user.alice.t (killed)" in out and "3 unfinished job(s) get the new command" in out
    with world.owner.connect() as conn:
        commands = conn.execute(text("SELECT command FROM jobs WHERE task_id = :t"), {"t": ids["alice_task"]}).scalars()
        assert all(c.startswith("echo new ") for c in commands)
        actor, details = conn.execute(text("SELECT actor, details FROM task_events")).one()
    assert actor == "alice" and details["priority"] == {"from": 0, "to": 3}
    # Bob, through the CLI, then through every door of his own.
    before = snapshot(world)
    result = world.run("bob", "maestro task edit -t user.alice.t --priority 9")
    assert result.code != 0 and "belongs to 'alice'" in result.err and "\n" not in result.err.strip()
    for what, sql in ATTACKS:
        bob = create_engine(role_url(world.db_url, "bob"))
        try:
            with bob.begin() as conn:
                conn.execute(text(sql.format(**ids)))
        except DBAPIError:
            pass
        else:
            pytest.fail(f"{what}: PostgreSQL allowed it")
        finally:
            bob.dispose()
        assert snapshot(world) == before, f"{what}: the database changed"
    # Bob may edit his own task, but the job ids he passes along reach only its jobs.
    world.ok("bob", "maestro task kill -t user.bob.t")
    bob = create_engine(role_url(world.db_url, "bob"))
    with bob.begin() as conn:
        n = conn.execute(text(f"SELECT orchestra_task_edit({ids['bob_task']}, 'bob', '{{\"image\": \"evil/x\"}}'"
                              f"::jsonb, ARRAY[{ids['alice_job']}]::bigint[], ARRAY['rm -rf ~']::text[])")).scalar()
    bob.dispose()
    assert n == 0
    with world.owner.connect() as conn:
        assert conn.execute(text("SELECT command FROM jobs WHERE id = :j"), {"j": ids["alice_job"]}).scalar() \
            .startswith("echo new ")
        assert conn.execute(text("SELECT image FROM tasks WHERE id = :t"), {"t": ids["bob_task"]}).scalar() == "evil/x"
    # Alice's own dependencies and task-output datasets pass the policies and column privileges.
    world.ok("alice", "orchestra_registry -d user.alice.t.outputs --from-task user.alice.t")
    out = world.ok("alice", "maestro task create -c user.alice.cfg -d user.alice.data -t user.alice.next "
                            "--containerImage busybox --exec 'echo %DATA %IN %OUT' --after-any user.alice.t").out
    assert "created task user.alice.next" in out
    with world.owner.connect() as conn:
        assert conn.execute(text("SELECT kind FROM task_dependencies")).scalar_one() == "after_any"
        assert conn.execute(text("SELECT source_task_id FROM datasets WHERE name = 'user.alice.t.outputs'")
                            ).scalar_one() == ids["alice_task"]
