"""What every service call needs: the settings, a database engine, and who is asking."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from orchestra.config import Settings, load_settings
from orchestra.db.engine import connect, is_sqlite
from orchestra.db.models import ChangeCounter, User
from orchestra.errors import PermissionDenied

WAKEUP_CHANNEL = "orchestra_wakeup"


@dataclass
class Context:
    settings: Settings
    engine: Engine

    @property
    def user(self) -> str:
        return self.settings.user

    @property
    def admin(self) -> bool:
        return self.settings.is_admin(self.user)

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
        """The id of a user, created on first use (names come from the OS login)."""
        name = name or self.user
        found = session.scalar(select(User.id).where(User.name == name))
        if found is not None:
            return found
        share = self.settings.user_shares.get(name, 1.0)
        user = User(name=name, share=share, usage=0.0, usage_at=time.time(), created_at=time.time())
        session.add(user)
        session.flush()
        return user.id

    def require_owner(self, owner: str, what: str) -> None:
        if owner != self.user and not self.admin:
            raise PermissionDenied(f"{what} belongs to {owner!r}; only its owner or an admin may change it")

    def wake_scheduler(self, session: Session) -> None:
        """Tell an idle scheduler there is work: a counter it polls, and a NOTIFY on PostgreSQL."""
        session.execute(update(ChangeCounter).where(ChangeCounter.name == "cli").values(value=ChangeCounter.value + 1))
        if not is_sqlite(self.engine):
            session.execute(text(f"NOTIFY {WAKEUP_CHANNEL}"))
