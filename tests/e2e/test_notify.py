"""E-mail notifications against a real SMTP server the test starts (aiosmtpd), on both databases:
a task's end reaches its owner's mailbox (one mail per task event, with counts, reasons and log
tails), opt-out and a missing address send nothing, a refusing server is retried with back-off and
the mail dropped after a day, a hanging server does not hold up the cycles, and nobody but the
user (or an admin) changes their address."""
from __future__ import annotations

import email
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError

from orchestra.db.models import Outbox, User
from orchestra.notify.postman import Postman
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import cycles_until, make_inputs, run_scheduler, task_status
from tests.helpers import ADMIN, Cli


@dataclass
class Mailbox:
    """What the test's SMTP server received; `answer` makes it refuse (e.g. "451 try later")."""

    messages: list[tuple[list[str], Message]] = field(default_factory=list)
    answer: str | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        if self.answer:
            return self.answer
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.original_content)))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


class HangingServer:
    """Accepts connections and never says a word (no SMTP greeting): a client waits for its timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        """Stop listening (shutdown wakes the blocked accept), then drop every held connection."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def enable_notify(env: dict[str, str], port: int, timeout: float = 5) -> None:
    with open(env["ORCHESTRA_CONFIG"], "a") as config:
        config.write(f'\n[notify]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
                     f'from_address = "orchestra@lab.example.org"\ntimeout = {timeout}\n')


def register(cli: Cli, storage: Path, user: str, n: int) -> None:
    configs, data = make_inputs(storage / user, n)
    cli.ok(f"orchestra_registry.py -d user.{user}.data -p {data} --cluster LPS", user=user)
    cli.ok(f"orchestra_registry.py -d user.{user}.configs -p {configs}/ --cluster LPS", user=user)


def create(cli: Cli, user: str, name: str, command: str, extra: str = "--bypass") -> None:
    cli.ok(f"maestro task create -c user.{user}.configs -d user.{user}.data -t user.{user}.{name} "
           f"--containerImage img --exec '{command}' {extra}", user=user)


def outbox(ctx: Context) -> list[Outbox]:
    with ctx.transaction() as session:
        return list(session.scalars(select(Outbox).order_by(Outbox.id)))


PARTIAL = 'case %IN in *c0003*) echo cannot open %IN >&2; exit 7;; esac; echo ok %DATA %OUT'


def test_a_task_end_reaches_its_owners_mailbox(cli: Cli, storage: Path, env: dict[str, str],
                                               mailbox: tuple[Mailbox, int]) -> None:
    """Through the real service (`scheduler run --until-idle`): one mail per task event, to the
    owner only, with counts, the failure's reason and log tail, and the commands to look further."""
    box, port = mailbox
    enable_notify(env, port)
    assert "alice@example.org" in cli.ok("maestro user email alice@example.org").out
    register(cli, storage, "alice", 5)
    register(cli, storage, "bob", 2)  # bob has no address: no mail
    create(cli, "alice", "part", PARTIAL)
    create(cli, "alice", "scouts", "echo scout cannot start >&2; exit 3; %DATA %IN %OUT", extra="")
    create(cli, "bob", "fine", "echo %DATA %IN %OUT")
    result = run_scheduler("--until-idle", "--interval", "1")
    assert result.returncode == 0, result.stderr
    assert sorted(to for to, _ in box.messages) == [["alice@example.org"]] * 2, [m["Subject"] for _, m in box.messages]
    mails = {m["Subject"]: m for _, m in box.messages}
    partial = mails["[orchestra] task user.alice.part partial (4/5 succeeded)"]
    body = partial.get_payload(decode=True).decode()
    assert partial["From"] == "orchestra@lab.example.org" and partial["To"] == "alice@example.org"
    assert "succeeded  4" in body and "failed     1" in body
    assert "1 job(s) failed after all retries" in body  # the task's reason
    assert "failed: exit code 7" in body and "cannot open" in body  # the failure and its log tail
    assert "maestro task show -t user.alice.part" in body and "maestro job logs " in body
    broken = next(m for s, m in mails.items() if s.startswith("[orchestra] task user.alice.scouts broken"))
    text_ = broken.get_payload(decode=True).decode()
    assert "its scouts failed (exit code 3)" in text_ and "scout cannot start" in text_ and "maestro task retry" in text_
    ctx = Context.from_env()
    rows = outbox(ctx)
    assert [(r.event, r.sent_at is not None, r.attempts) for r in rows] == [("partial", True, 1), ("broken", True, 1)] \
        or sorted((r.event, r.sent_at is not None) for r in rows) == [("broken", True), ("partial", True)]
    # More cycles and postman passes: no second mail about the same events.
    cycles_until(ctx, lambda: True).lease.release()
    Postman(ctx).run_once()
    assert len(box.messages) == 2 and len(outbox(ctx)) == 2
    ctx.engine.dispose()


def test_opt_out_and_no_address_send_nothing(cli: Cli, storage: Path, env: dict[str, str],
                                             mailbox: tuple[Mailbox, int]) -> None:
    box, port = mailbox
    enable_notify(env, port)
    cli.ok("maestro user email alice@example.org")
    assert "notices off" in cli.ok("maestro user notify off").out
    register(cli, storage, "alice", 2)
    register(cli, storage, "bob", 2)
    create(cli, "alice", "quiet", "echo %DATA %IN %OUT")
    create(cli, "bob", "nomail", "echo %DATA %IN %OUT")
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: task_status(ctx, "user.alice.quiet") == "completed"
                             and task_status(ctx, "user.bob.nomail") == "completed")
    assert Postman(ctx).run_once() == 0 and outbox(ctx) == [] and box.messages == []
    # Back on: the next task's end is mailed.
    assert "notices on" in cli.ok("maestro user notify on").out
    create(cli, "alice", "loud", "echo %DATA %IN %OUT")
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.loud") == "completed", scheduler=scheduler)
    scheduler.lease.release()
    assert Postman(ctx).run_once() == 1
    assert [m["Subject"] for _, m in box.messages] == ["[orchestra] task user.alice.loud completed (2/2 succeeded)"]
    ctx.engine.dispose()


@pytest.mark.parametrize("answer", ["451 4.3.0 try again later", "554 5.7.1 refused"])
def test_a_refusing_server_is_retried_with_backoff_then_the_mail_is_dropped_after_a_day(
        cli: Cli, storage: Path, env: dict[str, str], mailbox: tuple[Mailbox, int], answer: str,
        caplog: pytest.LogCaptureFixture) -> None:
    box, port = mailbox
    box.answer = answer
    enable_notify(env, port)
    cli.ok("maestro user email alice@example.org")
    register(cli, storage, "alice", 2)
    create(cli, "alice", "a", "echo %DATA %IN %OUT")
    create(cli, "alice", "b", "echo %DATA %IN %OUT")
    ctx = Context.from_env()
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.a") == "completed"
                 and task_status(ctx, "user.alice.b") == "completed").lease.release()
    now = [outbox(ctx)[-1].created_at]
    postman = Postman(ctx, clock=lambda: now[0])
    assert postman.run_once() == 0
    first = outbox(ctx)
    assert [(r.attempts, r.sent_at) for r in first] == [(1, None), (1, None)]
    assert all(answer.split()[0] in (r.last_error or "") for r in first)
    assert {r.next_try_at - now[0] for r in first} == {60.0}  # the first back-off
    postman.run_once()  # nothing due yet: no new try
    assert [r.attempts for r in outbox(ctx)] == [1, 1]
    now[0] += 61
    postman.run_once()
    assert [(r.attempts, r.next_try_at - now[0]) for r in outbox(ctx)] == [(2, 120.0), (2, 120.0)]  # doubled
    # The server accepts again: mail "a" goes at its next try; "b" is kept failing until a day has passed.
    box.answer = None
    with ctx.transaction() as session:
        session.execute(Outbox.__table__.update().where(Outbox.id == first[1].id).values(next_try_at=now[0] + 10**6))
    now[0] += 121
    assert postman.run_once() == 1 and len(box.messages) == 1
    now[0] = first[1].created_at + 86400 + 1
    with caplog.at_level(logging.WARNING, logger="orchestra.notify"):
        postman.run_once()
    assert [r.id for r in outbox(ctx)] == [first[0].id]  # the sent one stays on record, "b" is gone
    assert f"dropped mail {first[1].id} to alice@example.org" in caplog.text and "after 2 tries over a day" in caplog.text
    ctx.engine.dispose()


def test_a_hanging_server_does_not_hold_up_the_cycles(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    """The postman thread waits on a server that never answers while the scheduler's cycles go on:
    a second task runs to its end meanwhile; the mail is retried later."""
    hanging = HangingServer()
    enable_notify(env, hanging.port, timeout=600)
    cli.ok("maestro user email alice@example.org")
    register(cli, storage, "alice", 2)
    create(cli, "alice", "first", "echo %DATA %IN %OUT")
    ctx = Context.from_env()
    postman = Postman(ctx, every=3600)
    postman.start()
    try:
        scheduler = cycles_until(ctx, lambda: task_status(ctx, "user.alice.first") == "completed")
        postman.nudge()
        cycles_until(ctx, lambda: len(hanging.accepted) == 1, scheduler=scheduler)  # the postman is stuck in it
        cycles_before = 0
        create(cli, "alice", "second", "echo %DATA %IN %OUT")

        def second_done() -> bool:
            nonlocal cycles_before
            cycles_before += 1
            return task_status(ctx, "user.alice.second") == "completed"
        cycles_until(ctx, second_done, scheduler=scheduler)
        assert cycles_before > 1 and postman.sent == 0 and len(hanging.accepted) == 1
        scheduler.lease.release()
    finally:
        hanging.close()  # the postman's wait ends with an error: the mail is retried later
        postman.stop(grace=60)
    rows = outbox(ctx)
    assert [(r.event, r.sent_at) for r in rows] == [("completed", None), ("completed", None)]
    assert rows[0].attempts == 1 and rows[0].last_error
    ctx.engine.dispose()


def test_only_the_user_or_an_admin_changes_an_address(cli: Cli, env: dict[str, str]) -> None:
    cli.ok("maestro user email alice@example.org")
    result = cli("maestro user email --user alice evil@example.org", user="bob")
    assert result.code != 0 and "only alice or an admin" in result.err and "Traceback" not in result.err
    result = cli("maestro user notify off --user alice", user="bob")
    assert result.code != 0 and "only alice or an admin" in result.err
    bad = cli("maestro user email 'x@example.org, boss@example.org'")
    assert bad.code != 0 and "is not an e-mail address" in bad.err and len(bad.err.strip().splitlines()) == 1
    assert "bob@example.org" in cli.ok("orchestra user set bob --email bob@example.org", user=ADMIN).out
    assert cli("orchestra user set bob --email nope", user=ADMIN).code != 0
    assert "notices off" in cli.ok("orchestra user set alice --no-notify", user=ADMIN).out
    ctx = Context.from_env()
    with ctx.transaction() as session:
        got = dict((n, (e, o)) for n, e, o in session.execute(select(User.name, User.email, User.notify)))
    assert got["alice"] == ("alice@example.org", False) and got["bob"] == ("bob@example.org", True)
    assert "e-mail none" in cli.ok("maestro user email --clear").out
    ctx.engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_refuses_bob_writing_alices_address_or_reading_her_mail(db_url: str, env: dict[str, str],
                                                                          cli: Cli) -> None:
    owner = create_engine(db_url)
    with owner.begin() as conn:
        for role in ("alice", "bob"):
            conn.execute(text("SELECT orchestra_add_user(:r, false, false, :p)"), {"r": role, "p": f"pw-{role}"})
        alice = conn.execute(text("SELECT id FROM users WHERE name = 'alice'")).scalar_one()
        conn.execute(text("INSERT INTO outbox (user_id, event, subject, body, created_at, attempts, next_try_at) "
                          "VALUES (:u, 'completed', 's', 'secret body', 0, 0, 0)"), {"u": alice})
    from sqlalchemy.engine import make_url

    def as_role(role: str) -> Any:
        return create_engine(make_url(db_url).set(username=role, password=f"pw-{role}"))

    bob, alice_engine = as_role("bob"), as_role("alice")
    for sql in ("SELECT orchestra_set_contact('alice', 'evil@example.org', NULL)",
                "UPDATE users SET email = 'evil@example.org' WHERE name = 'alice'",
                "UPDATE users SET notify = false WHERE name = 'alice'",
                "INSERT INTO outbox (user_id, event, subject, body, created_at, attempts, next_try_at) "
                f"VALUES ({alice}, 'x', 's', 'b', 0, 0, 0)",
                "SELECT orchestra_set_contact('bob', 'a@b.org>, <c@d.org', NULL)"):
        with pytest.raises(DBAPIError), bob.begin() as conn:
            conn.execute(text(sql))
    with bob.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox")).scalar() == 0  # alice's mail is hers
    with alice_engine.begin() as conn:
        assert conn.execute(text("SELECT body FROM outbox")).scalars().all() == ["secret body"]
        conn.execute(text("SELECT orchestra_set_contact('alice', 'alice@example.org', false)"))
    with owner.connect() as conn:
        assert conn.execute(text("SELECT email, notify FROM users WHERE name = 'alice'")).one() == (
            "alice@example.org", False)
    bad = cli("orchestra user add dana --email 'dana@example.org>'", user=ADMIN)  # refused before the role is made
    assert bad.code != 0 and "is not an e-mail address" in bad.err
    with owner.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_roles WHERE rolname = 'dana'")).scalar() == 0
    cli.ok("orchestra user add dana --email dana@example.org", user=ADMIN)
    with owner.connect() as conn:
        assert conn.execute(text("SELECT email FROM users WHERE name = 'dana'")).scalar() == "dana@example.org"
        conn.execute(text("DROP ROLE dana"))
        conn.commit()
    for engine in (owner, bob, alice_engine):
        engine.dispose()


def test_notify_settings_are_checked(tmp_path: Path) -> None:
    from orchestra.config import load_settings
    from orchestra.errors import OrchestraError

    config = tmp_path / "o.toml"
    for bad, words in (("ssl = true\nstarttls = true", "exclude each other"),
                       ('password_file = "/a"\npassword_env = "B"', "one way"),
                       ("port = 0", "notify.port"), ('from_address = "a, b@c"', "from_address")):
        config.write_text(f"[notify]\n{bad}\n")
        with pytest.raises(OrchestraError, match=words):
            load_settings({"ORCHESTRA_CONFIG": str(config), "ORCHESTRA_HOME": str(tmp_path)})
    config.write_text('[notify]\nenabled = true\nhost = "smtp.example.org"\nport = 587\nstarttls = true\n')
    notify = load_settings({"ORCHESTRA_CONFIG": str(config), "ORCHESTRA_HOME": str(tmp_path)}).notify
    assert (notify.enabled, notify.host, notify.port, notify.starttls, notify.ssl) == (True, "smtp.example.org", 587, True, False)
    assert load_settings({"ORCHESTRA_HOME": str(tmp_path)}).notify.enabled is False  # off by default


def test_a_task_killed_before_any_job_ran_is_mailed_once(cli: Cli, storage: Path, env: dict[str, str],
                                                         mailbox: tuple[Mailbox, int]) -> None:
    """A kill that ends a task at once (none of its jobs ran: no request for the scheduler to finish)
    is still mailed, by the next full cycle, and only once however many cycles follow."""
    box, port = mailbox
    enable_notify(env, port)
    cli.ok("maestro user email alice@example.org")
    register(cli, storage, "alice", 3)
    create(cli, "alice", "early", "echo %DATA %IN %OUT")
    cli.ok("maestro task kill -t user.alice.early")  # before any scheduler ran: nothing started
    ctx = Context.from_env()
    assert task_status(ctx, "user.alice.early") == "killed"
    scheduler = cycles_until(ctx, lambda: len(outbox(ctx)) >= 1)
    for _ in range(3):
        scheduler.cycle()
    assert [r.event for r in outbox(ctx)] == ["killed"]
    Postman(ctx).run_once()
    [(to, mail)] = box.messages
    assert to == ["alice@example.org"] and mail["Subject"].startswith("[orchestra] task user.alice.early killed")
    scheduler.lease.release()
    scheduler.close()
    ctx.engine.dispose()
