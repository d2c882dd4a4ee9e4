"""The service's postman: a thread that sends due outbox rows after the cycles.

Why a thread rather than a time budget after each cycle: one SMTP step against a hanging server
waits up to `[notify] timeout`, and no budget smaller than that can both try the server and keep
the cycle on time. In its own thread, a refusing or hanging server delays only the mails: the
loop `nudge`s the postman after a cycle that ended tasks, and the postman also wakes every
`every` seconds for retries. Each pass: drop what is a day old, claim up to `batch` due rows
(pushed back by their back-off before the try), send each, record the outcome.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session

from orchestra.errors import OrchestraError
from orchestra.notify import outbox, smtp
from orchestra.services.context import Context

log = logging.getLogger("orchestra.notify")


class Postman:
    """Sends the outbox; `run_once` is one pass (tests, `--once`), `start`/`stop` the thread."""

    def __init__(self, ctx: Context, clock: Callable[[], float] = time.time, every: float = 30.0) -> None:
        self.ctx = ctx
        self.config = ctx.settings.notify
        self.clock = clock
        self.every = every
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.sent = 0

    def run_once(self) -> int:
        """One pass; returns the number of mails sent. Never raises: a database or SMTP fault is
        logged and the next pass tries again."""
        try:
            with Session(self.ctx.engine) as session, session.begin():
                outbox.drop_expired(session, self.clock())
                due = outbox.claim_due(session, self.clock(), self.config.batch)
            sent = 0
            for mail in due:
                try:
                    smtp.send(self.config, mail.to, mail.subject, mail.body)
                except OrchestraError as exc:
                    log.warning("mail %d to %s not sent (try %d): %s; retrying in %.0f s", mail.id, mail.to,
                                mail.attempts, exc, outbox.backoff(mail.attempts))
                    with Session(self.ctx.engine) as session, session.begin():
                        outbox.mark_failed(session, mail.id, str(exc))
                    continue
                with Session(self.ctx.engine) as session, session.begin():
                    outbox.mark_sent(session, mail.id, self.clock())
                sent += 1
            self.sent += sent
            return sent
        except Exception as exc:  # noqa: BLE001 - the postman must outlive any fault; the cycle never sees it
            log.warning("postman pass failed: %s", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
            return 0
        finally:
            self.passes += 1

    def nudge(self) -> None:
        """Something may be due (a cycle ended tasks): pass now rather than at the next `every`."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="orchestra-postman", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._wake.wait(self.every)
            self._wake.clear()
        self.run_once()  # a last pass after the stop: the mails of the last cycle go before the service ends

    def stop(self, grace: float = 5.0) -> None:
        """One last pass, then stop; waits at most `grace` seconds (the thread is a daemon, so a
        hanging server never keeps the service from exiting; what is unsent stays due)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(grace)
