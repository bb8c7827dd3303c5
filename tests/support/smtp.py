"""A real SMTP server on loopback that records what it receives, for mail tests.

Why not ``locmem``: the outbox promises that mail survives an SMTP outage and is sent
exactly once. Only a server that can really refuse connections (stopped) and come back
on the same address (restarted) shows that the app's retries, its envelope sender and
its headers work over the wire. aiosmtpd runs in a thread of the test process; a
Celery worker subprocess reaches it at ``127.0.0.1:<port>``.

Use::

    with SmtpTestServer() as smtp:
        ...                       # EMAIL_HOST=smtp.host, EMAIL_PORT=smtp.port
        smtp.stop()               # connections are refused from now on
        smtp.start()              # back, same port
        [msg] = smtp.messages     # envelope sender, recipients, parsed message
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller

__all__ = ["ReceivedMessage", "SmtpTestServer", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ReceivedMessage:
    """One accepted DATA transaction: the envelope as sent, and the message as parsed."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage

    def part(self, content_type: str) -> str:
        """The decoded body of the first part of ``content_type``, with ``\n`` line ends.

        SMTP carries CRLF; tests compare with text as the templates write it.
        """
        for part in self.message.walk():
            if part.get_content_type() == content_type and not part.is_multipart():
                return str(part.get_content()).replace("\r\n", "\n")
        raise KeyError(content_type)


class _Recorder:
    """aiosmtpd handler: keeps every message, and refuses the recipients it is told to."""

    def __init__(self, server: SmtpTestServer) -> None:
        self._server = server

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self._server.refuse_recipients:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        raw = bytes(envelope.original_content or envelope.content)
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(parsed, EmailMessage)
        with self._server._lock:
            self._server._messages.append(
                ReceivedMessage(
                    mail_from=envelope.mail_from,
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    raw=raw,
                    message=parsed,
                )
            )
        return "250 2.0.0 accepted"


class SmtpTestServer:
    """An aiosmtpd server bound to 127.0.0.1 on one fixed port for its whole life.

    The port is chosen once, so ``stop()`` then ``start()`` brings the server back where
    the app (and a worker subprocess configured by environment) expects it. What was
    received survives restarts; ``clear()`` forgets it.
    """

    host = "127.0.0.1"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port(self.host)
        self.refuse_recipients: set[str] = set()
        self._messages: list[ReceivedMessage] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot: the server thread may append while a test reads."""
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def start(self) -> None:
        # aiosmtpd logs every SMTP command at INFO; that buries the test's own output.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        if self._controller is not None:
            return
        controller = Controller(
            _Recorder(self), hostname=self.host, port=self.port, ready_timeout=5.0
        )
        controller.start()  # asyncio sets SO_REUSEADDR: the same port binds right away
        self._controller = controller

    def stop(self) -> None:
        """Close the listening socket: new connections are refused (ECONNREFUSED)."""
        if self._controller is None:
            return
        self._controller.stop()
        self._controller = None

    def __enter__(self) -> SmtpTestServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
