"""What every service call needs: the settings, a database engine, and who is asking."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine, insert, text, update
from sqlalchemy.orm import Session

from orchestra.config import Settings, load_settings
from orchestra.db.engine import connect, is_sqlite
from orchestra.db.models import AuditEntry, ChangeCounter
from orchestra.errors import PermissionDenied
from orchestra.security.identity import Identity, resolve
from orchestra.security.privileged import ensure_user

WAKEUP_CHANNEL = "orchestra_wakeup"


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
        """Tell an idle scheduler there is work: a counter it polls, and a NOTIFY on PostgreSQL."""
        session.execute(update(ChangeCounter).where(ChangeCounter.name == "cli").values(value=ChangeCounter.value + 1))
        if not is_sqlite(self.engine):
            session.execute(text(f"NOTIFY {WAKEUP_CHANNEL}"))
