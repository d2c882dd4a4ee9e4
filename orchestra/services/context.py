"""What every service call needs: the settings, a database engine, and who is asking."""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, event, insert, text, update
from sqlalchemy.orm import Session

from orchestra.config import Settings, load_settings
from orchestra.db.engine import connect, is_sqlite
from orchestra.db.models import AuditEntry, ChangeCounter
from orchestra.errors import PermissionDenied
from orchestra.security.identity import Identity, resolve
from orchestra.security.privileged import ensure_user

WAKEUP_CHANNEL = "orchestra_wakeup"
WAKE_SOCKET = "scheduler.wake"  # in ORCHESTRA_HOME: the SQLite scheduler's Unix datagram socket (owner only)


def wake_socket_path(settings: Settings) -> Path:
    """Where an idle SQLite scheduler listens for wake-ups (scheduler/loop.py `Waker`)."""
    return settings.home / WAKE_SOCKET


def send_wake(path: Path) -> None:
    """One byte to the scheduler's wake socket: best effort. No scheduler, a socket left by a
    dead one, a path too long for a socket address, no permission, a full buffer: ignored (the
    change counter that the scheduler polls still says it)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"w", str(path))
    except OSError:
        pass


@dataclass
class Context:
    settings: Settings
    engine: Engine
    _identity: Identity | None = field(default=None, repr=False)

    @property
    def identity(self) -> Identity:
        """Who is asking (resolved once, from the database's authenticated role on PostgreSQL)."""
        if self._identity is None:
            from_env = self.settings.sources.get("user") == "env ORCHESTRA_USER"
            self._identity = resolve(self.engine, self.settings.user if from_env else None)
        return self._identity

    @property
    def user(self) -> str:
        return self.identity.user

    @property
    def admin(self) -> bool:
        return self.identity.admin

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Context:
        settings = load_settings(env)
        return cls.from_settings(settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> Context:
        return cls(settings, connect(settings.database_url))

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed on success, rolled back (database untouched) on any error."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def user_id(self, session: Session, name: str | None = None) -> int:
        """The id of a user, created on first use (with the config's share on SQLite)."""
        name = name or self.user
        return ensure_user(session, name, self.settings.user_shares.get(name, 1.0))

    def audit(self, session: Session, action: str, target: str) -> None:
        """Record who did what for whom, in the caller's transaction."""
        session.execute(insert(AuditEntry).values(
            at=time.time(), actor=self.identity.actor, acted_for=self.user, action=action, target=target))

    def require_owner(self, owner: str, what: str) -> None:
        if owner != self.user and not self.admin:
            raise PermissionDenied(f"{what} belongs to {owner!r}; only its owner or an admin may change it")

    def wake_scheduler(self, session: Session) -> None:
        """Tell an idle scheduler there is work: a counter it polls, and a NOTIFY on PostgreSQL;
        on SQLite also a byte to its wake socket once the transaction has committed (so the
        scheduler wakes at once instead of at its next poll, and finds the change committed)."""
        session.execute(update(ChangeCounter).where(ChangeCounter.name == "cli").values(value=ChangeCounter.value + 1))
        if not is_sqlite(self.engine):
            session.execute(text(f"NOTIFY {WAKEUP_CHANNEL}"))
            return
        path = wake_socket_path(self.settings)
        event.listen(session, "after_commit", lambda _session: send_wake(path), once=True)
