"""Send one mail over SMTP with `[notify]`'s settings (plain, STARTTLS or SSL; optional login).

Every network step is bounded by `timeout`: a server that hangs costs the postman that long, and
never the scheduler's cycle (the postman is its own thread). Errors come back as one line.
"""
from __future__ import annotations

import os
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from orchestra.config import NotifyConfig
from orchestra.errors import OrchestraError


def password(config: NotifyConfig) -> str | None:
    """The SMTP password from `password_file` or `password_env` (None: no login password)."""
    if config.password_file:
        try:
            with open(config.password_file, encoding="utf-8") as handle:
                return handle.readline().rstrip("\n")
        except OSError as exc:
            raise OrchestraError(f"[notify] password_file {config.password_file}: {exc.strerror}; "
                                 "make it readable by the scheduler's account") from None
    if config.password_env:
        value = os.environ.get(config.password_env)
        if not value:
            raise OrchestraError(f"[notify] password_env {config.password_env} is not set or empty; set it")
        return value
    return None


def message(config: NotifyConfig, to: str, subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = config.from_address
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=config.from_address.rsplit("@", 1)[-1])
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to the robot
    msg.set_content(body)
    return msg


def send(config: NotifyConfig, to: str, subject: str, body: str) -> None:
    """Deliver one mail; raises OrchestraError with the server's or network's one-line reason."""
    context = ssl.create_default_context()
    try:
        if config.ssl:
            client: smtplib.SMTP = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout, context=context)
        else:
            client = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        with client:
            if config.starttls:
                client.starttls(context=context)
            if config.user:
                client.login(config.user, password(config) or "")
            client.send_message(message(config, to, subject, body))
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise OrchestraError(f"SMTP {config.host}:{config.port} answered {exc.smtp_code} {text}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise OrchestraError(f"SMTP {config.host}:{config.port} refused {to}: {exc.recipients}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise OrchestraError(f"SMTP {config.host}:{config.port}: {exc or type(exc).__name__}") from None
