"""The outbox: written by the scheduler's cycle, read and updated by the postman.

`task_ended` runs in the cycle's own transaction, beside the write that ends the task, so a mail is
recorded exactly when its event is (a rolled-back cycle leaves neither). The postman's functions
each run in a short transaction of their own and touch at most `batch` rows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from orchestra.config import Settings
from orchestra.db.models import Outbox, User
from orchestra.notify.compose import compose

log = logging.getLogger("orchestra.notify")

FIRST_RETRY = 60.0  # seconds after a failed try; doubling
MAX_RETRY = 3600.0
GIVE_UP = 86400.0  # a mail not sent within a day is dropped (with a log line)
KEEP_SENT = 7 * 86400.0  # sent rows are kept this long (`what was mailed` for an admin), then removed


@dataclass(frozen=True)
class Due:
    id: int
    to: str
    subject: str
    body: str
    attempts: int


def task_ended(session: Session, settings: Settings, task_id: int, event: str, now: float) -> bool:
    """Record the mail about a task's end (in the caller's transaction); False when none is due
    (notifications off, no address, opted out)."""
    if not settings.notify.enabled:
        return False
    mail = compose(session, task_id, event)
    if mail is None:
        return False
    session.execute(insert(Outbox).values(
        user_id=mail.user_id, task_id=task_id, event=event, subject=mail.subject, body=mail.body,
        created_at=now, attempts=0, next_try_at=now))
    return True


def enqueue(session: Session, settings: Settings, user_id: int, event: str, subject: str, body: str, now: float,
            task_id: int | None = None) -> bool:
    """Any other mail to a user (e.g. retention's notice before removal), in the caller's
    transaction; False (nothing recorded) when notifications are off or the user has no address
    or opted out. `event` is a short word (at most 32 characters) kept on the row."""
    if not settings.notify.enabled:
        return False
    wants = session.execute(select(User.email, User.notify).where(User.id == user_id)).first()
    if wants is None or not wants.email or not wants.notify:
        return False
    session.execute(insert(Outbox).values(
        user_id=user_id, task_id=task_id, event=event[:32], subject=subject, body=body,
        created_at=now, attempts=0, next_try_at=now))
    return True


def backoff(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones."""
    return min(MAX_RETRY, FIRST_RETRY * 2 ** max(0, attempts - 1))


def drop_expired(session: Session, now: float) -> int:
    """Drop unsent mails older than a day, one log line each; remove sent ones past KEEP_SENT."""
    old = session.execute(
        select(Outbox.id, Outbox.subject, Outbox.attempts, Outbox.last_error, User.email)
        .join(User, User.id == Outbox.user_id)
        .where(Outbox.sent_at.is_(None), Outbox.created_at < now - GIVE_UP).limit(1000)).all()
    for row in old:
        log.warning("dropped mail %d to %s (%s) after %d tries over a day; last error: %s",
                    row.id, row.email, row.subject, row.attempts, row.last_error or "none")
    if old:
        session.execute(delete(Outbox).where(Outbox.id.in_([r.id for r in old])))
    sent = session.scalars(select(Outbox.id).where(Outbox.sent_at < now - KEEP_SENT).limit(1000)).all()
    if sent:
        session.execute(delete(Outbox).where(Outbox.id.in_(sent)))
    return len(old)


def claim_due(session: Session, now: float, batch: int) -> list[Due]:
    """Up to `batch` due mails, each pushed back by its back-off before it is tried (a crash while
    sending retries it later rather than never; a mail may then go twice, never zero times).
    A mail whose owner has since removed their address or opted out is dropped."""
    rows = session.execute(
        select(Outbox.id, Outbox.attempts, Outbox.subject, Outbox.body, User.email, User.notify)
        .join(User, User.id == Outbox.user_id)
        .where(Outbox.sent_at.is_(None), Outbox.next_try_at <= now)
        .order_by(Outbox.next_try_at).limit(batch)).all()
    due, gone = [], []
    for row in rows:
        if not row.email or not row.notify:
            gone.append(row.id)
            continue
        tries = row.attempts + 1
        session.execute(update(Outbox).where(Outbox.id == row.id).values(
            attempts=tries, next_try_at=now + backoff(tries)))
        due.append(Due(row.id, row.email, row.subject, row.body, tries))
    if gone:
        session.execute(delete(Outbox).where(Outbox.id.in_(gone)))
    return due


def mark_sent(session: Session, mail_id: int, now: float) -> None:
    session.execute(update(Outbox).where(Outbox.id == mail_id).values(sent_at=now, last_error=None))


def mark_failed(session: Session, mail_id: int, error: str) -> None:
    session.execute(update(Outbox).where(Outbox.id == mail_id).values(last_error=error[:500]))
