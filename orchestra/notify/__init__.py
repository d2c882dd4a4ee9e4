"""E-mail notifications: a task's owner hears when it ends (completed, partial, broken, killed).

Shape: the scheduler's cycle writes one outbox row per task event in the transaction that
records the event (`outbox.task_ended`), so a mail exists exactly when the event does; the
service's postman thread (`postman.Postman`) sends due rows after the cycles with a short SMTP
timeout, retries with back-off and drops a row after a day. SMTP never runs inside a cycle, so a
refusing or hanging mail server cannot slow scheduling. `contact` holds who wants mail where.
"""
