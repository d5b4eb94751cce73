"""Sending verification codes: by SMTP when CHATSVC_SMTP_URL is set, to the log otherwise.

smtplib blocks, so each mail is sent in a worker thread. ``smtp://`` connects
in plain text and upgrades with STARTTLS whenever the server offers it;
``smtps://`` speaks TLS from the first byte (implicit TLS, usually port 465).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from chatsvc.config import Config
from chatsvc.errors import ChatError

log = logging.getLogger(__name__)

SMTP_TIMEOUT_SECONDS = 15.0
DEFAULT_PORTS = {"smtp": 25, "smtps": 465}


class MailUnavailable(ChatError):
    """The code could not be handed to the mail server."""

    status = 503


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to deliver: parsed from an ``smtp[s]://[user:pass@]host[:port]`` URL."""

    host: str
    port: int
    implicit_tls: bool
    username: str | None
    password: str | None


def parse_smtp_url(url: str) -> SmtpTarget:
    """The SMTP server an URL names; ValueError if it is not an smtp:// or smtps:// URL with a host."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("CHATSVC_SMTP_URL must look like smtp://user:pass@host:port or smtps://...")
    return SmtpTarget(
        host=parts.hostname,
        port=parts.port or DEFAULT_PORTS[scheme],
        implicit_tls=scheme == "smtps",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def code_message(sender: str, address: str, subject: str, code: str, ttl_minutes: int) -> EmailMessage:
    """The mail that carries a code."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = address
    message["Subject"] = subject
    message.set_content(
        f"Your chatsvc verification code is {code}\n\nIt is valid for {ttl_minutes} minutes. "
        "If you did not ask for it, ignore this mail.\n"
    )
    return message


def _deliver(target: SmtpTarget, message: EmailMessage) -> None:
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if target.implicit_tls:
        smtp = smtplib.SMTP_SSL(target.host, target.port, timeout=SMTP_TIMEOUT_SECONDS, context=context)
    else:
        smtp = smtplib.SMTP(target.host, target.port, timeout=SMTP_TIMEOUT_SECONDS)
    with smtp:
        smtp.ehlo()
        if not target.implicit_tls and smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
        if target.username is not None:
            smtp.login(target.username, target.password or "")
        smtp.send_message(message)


async def send_code(config: Config, address: str, subject: str, code: str, ttl_minutes: int) -> None:
    """Deliver a code to an address, or log it when no SMTP server is configured.

    Raises MailUnavailable (503) when the mail server cannot be reached or
    refuses the mail; the cause is logged with its traceback.
    """
    if config.smtp_url is None:
        # No mail server: whoever runs the service reads the code here.
        log.info("verification code for %s (%s): %s", address, subject, code)
        return
    try:
        message = code_message(config.mail_from, address, subject, code, ttl_minutes)
        target = parse_smtp_url(config.smtp_url)
        await asyncio.get_running_loop().run_in_executor(None, _deliver, target, message)
    except (OSError, smtplib.SMTPException, ValueError):
        log.exception("could not send a verification code to %s", address)
        raise MailUnavailable("Could not send the verification code, please try again later") from None
    log.info("sent a verification code to %s (%s)", address, subject)
