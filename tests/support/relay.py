"""A whole relay on loopback, built only from real parts, for the live enforcement tests.

Why all of it: the sender policy and the quotas are enforced by four programs that must
agree on the generated files: Postfix (``main.cf.fragment``, ``master.cf.fragment``, the
access and login maps), our policy service (``python -m requests_app.policyd``, reading
``relay_policy``, counting in Redis), Debian's ``postsrsd`` (the SRS tables the generated
config points at) and the SMTP client that hands the mail on. Each has its own unit tests;
only running them together shows that what a client sends is what the next hop receives.

:class:`LiveRelay` starts, all on 127.0.0.0/8:

* an :class:`~tests.support.smtp.SmtpTestServer` as the next hop (Postfix's
  ``relayhost``), which records every envelope and message the relay delivers;
* a :class:`~tests.support.redis.PrivateRedis` for the policy service's counters;
* ``postsrsd`` in the foreground, with a secret file in the instance directory;
* the policy service as a subprocess of this Python;
* a :class:`~tests.support.postfix.PostfixInstance` whose master.cf is the stock services
  plus the generated ``master.cf.fragment`` and whose main.cf is the base plus the
  generated ``main.cf.fragment`` plus a throw-away self-signed certificate
  (``smtpd_tls_chain_files``), made here with the ``openssl`` command, and Cyrus SASL
  with a ``sasldb`` of the test's logins (``saslpasswd2``), so the submission ports can
  be used as functional accounts use them (Dovecot, the production default, is not a
  test dependency: ``sasl_type`` is a setting, and without any SASL server smtpd exits
  with "no SASL authentication mechanisms" as soon as TLS is up).

The files are rendered by the real renderer (``requests_app.postfix.backend(map_type)``)
from entries the test gives; :meth:`LiveRelay.install` writes them the way config
management does (atomic directory swap, ``postmap`` for indexed map types, then
``postfix reload``). The policy service notices the new ``relay_policy`` by itself.

Clients connect from 127.0.0.2 and the like (``source_address``), addresses that
``lab_networks`` makes renderable. Leaving the ``with`` block stops every process and
removes every directory, also when the test failed. Needs root and the tools; missing
ones skip by hand and fail in CI (``require_tool``/``require_root``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import os
import secrets
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import UTC
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from requests_app.artifacts_io import read_manifest
from requests_app.artifacts_io import write_artifacts_atomically
from requests_app.postfix import FRAGMENT_NAME
from requests_app.postfix import MASTER_FRAGMENT_NAME
from requests_app.postfix import POLICY_NAME
from requests_app.postfix import backend
from requests_app.relay_backend import AccountEntry
from requests_app.relay_backend import Artifacts
from requests_app.relay_backend import RelaySettings
from requests_app.relay_backend import ServerEntry
from tests.support.postfix import PostfixInstance
from tests.support.postfix import free_port
from tests.support.postfix import require_root
from tests.support.postfix import require_tool
from tests.support.postfix import run_tool
from tests.support.redis import PrivateRedis
from tests.support.smtp import ReceivedMessage
from tests.support.smtp import SmtpTestServer

__all__ = ("LiveRelay", "Reply", "client_tls_context")

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Reply:
    """Where a transaction ended: the SMTP stage (``mail``, ``rcpt``, ``data``), the reply
    code and text. ``stage == "data"`` with ``code == 250`` means the relay took it."""

    stage: str
    code: int
    text: str

    @property
    def accepted(self) -> bool:
        return self.stage == "data" and self.code == 250


def client_tls_context() -> ssl.SSLContext:
    """A client context that accepts the relay's throw-away self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _wait_port(port: int, what: str, timeout: float, proc: subprocess.Popen | None = None,
               log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    detail = log.read_text(errors="replace") if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}\n{detail}")


def _stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class LiveRelay:
    """A private relay (Postfix + policy service + postsrsd + Redis) and its next hop.

    ``settings`` overrides fields of the :class:`RelaySettings` the files are rendered
    with (``sender_mode``, ``require_tls``, ``sandbox_daily``, ``approved_sender_domains``
    …); the ports, the map directory and the loopback service addresses are the
    harness's. ``map_type`` is ``RELAY_MAP_TYPE``.
    """

    def __init__(self, *, map_type: str = "cidr", logins: dict[str, str] | None = None,
                 **settings: Any) -> None:
        self.map_type = map_type
        self.logins = dict(logins or {})
        self.backend = backend(map_type)
        self.sink = SmtpTestServer()
        self.redis = PrivateRedis()
        self.smtp_port, self.submission_port, self.smtps_port = (free_port() for _ in "abc")
        self.reinject_port, self.policy_port = free_port(), free_port()
        self.srs_forward_port, self.srs_reverse_port = free_port(), free_port()
        self.postfix = PostfixInstance(port=self.smtp_port,
                                       relay_to=(self.sink.host, self.sink.port))
        self.root = self.postfix.root
        self.map_dir = self.postfix.map_dir
        self.secrets_dir = self.root / "secrets"
        fields: dict[str, Any] = {
            "relay_host": "relay.example.com",
            "map_directory": str(self.map_dir),
            "lab_networks": ("127.0.0.0/8",),
            "approved_sender_domains": ("example.org",),
            "listen_address": "127.0.0.1",
            "sasl_type": "cyrus",
            "sasl_path": "smtpd",
            "smtp_port": self.smtp_port,
            "submission_port": self.submission_port,
            "smtps_port": self.smtps_port,
            "reinject_port": self.reinject_port,
            "policy_service": f"127.0.0.1:{self.policy_port}",
            "srs_forward": f"127.0.0.1:{self.srs_forward_port}",
            "srs_reverse": f"127.0.0.1:{self.srs_reverse_port}",
        }
        fields.update(settings)
        self.settings = RelaySettings(**fields)
        # The instance's myhostname: Cyrus SASL's default realm.
        self.postfix_hostname = "relay.relaydesk.invalid"
        self.rewrite_domain = self.settings.rewrite_domain or f"srs.{self.settings.relay_host}"
        self.version = 0
        self.artifacts: Artifacts | None = None
        self.postsrsd: subprocess.Popen | None = None
        self.policyd: subprocess.Popen | None = None
        self.policyd_log = self.root / "policyd.log"
        self.postsrsd_log = self.root / "postsrsd.log"

    # -- files ---------------------------------------------------------------------------

    def render(self, servers: Iterable[ServerEntry], accounts: Iterable[AccountEntry] = (),
               ) -> Artifacts:
        """The artefacts of the next version, from the real renderer."""
        self.version += 1
        return self.backend.build(servers, accounts, self.settings, version=self.version,
                                  generated_at=datetime.now(UTC))

    def install(self, servers: Iterable[ServerEntry], accounts: Iterable[AccountEntry] = (),
                ) -> Artifacts:
        """Render and install as config management does; reload a running Postfix.

        The directory is swapped whole (``write_artifacts_atomically``), so the indexed
        maps are built again after every install: ``postmap`` for each ``TYPE:FILE`` the
        manifest lists (``MANIFEST.json`` "postmap"), as the relay's install step does.
        """
        artifacts = self.render(servers, accounts)
        assert not artifacts.skipped, artifacts.skipped
        write_artifacts_atomically(self.map_dir, artifacts)
        manifest = read_manifest(self.map_dir) or {}
        for target in manifest.get("postmap", []):
            kind, _, name = target.partition(":")
            result = self.postmap(f"{kind}:{self.map_dir / name}")
            assert (result.returncode, result.stderr) == (0, ""), result
        self.artifacts = artifacts
        if self.postfix.running:
            self.postfix.reload()
        return artifacts

    def postmap(self, *args: str) -> subprocess.CompletedProcess:
        """``postmap -c <instance config> ARGS`` (the instance's main.cf, or a minimal one)."""
        config = self.postfix.config_dir
        if not (config / "main.cf").exists():
            config.mkdir(parents=True, exist_ok=True)
            (config / "main.cf").write_text("compatibility_level = 3.6\n")
        return run_tool("postmap", "-c", str(config), *args)

    def fragment(self, name: str) -> str:
        assert self.artifacts is not None, "install() first"
        return self.artifacts[name].decode("ascii")

    def _make_certificate(self) -> str:
        """A throw-away self-signed key and certificate; the main.cf line that uses them."""
        require_tool("openssl")
        key, cert = self.secrets_dir / "key.pem", self.secrets_dir / "cert.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={self.settings.relay_host}"],
            check=True, capture_output=True, timeout=60,
        )
        return f"smtpd_tls_chain_files = {key}, {cert}\n"

    def _make_sasldb(self) -> None:
        """Cyrus SASL config and a sasldb with ``logins``.

        Debian's Postfix reads ``$config_directory/sasl/<smtpd_sasl_path>.conf`` (it
        ignores ``cyrus_sasl_config_path``); smtpd opens the database after dropping
        privileges, hence group ``postfix``.
        """
        saslpasswd2 = require_tool("saslpasswd2")
        sasl_dir = self.root / "sasl"
        sasl_dir.mkdir(mode=0o755)
        database = sasl_dir / "sasldb2"
        conf_dir = self.postfix.config_dir / "sasl"
        conf_dir.mkdir(parents=True, exist_ok=True)
        (conf_dir / f"{self.settings.sasl_path}.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {database}\n"
            "mech_list: PLAIN LOGIN\n")
        for login, password in sorted(self.logins.items()) or [("nobody-test", "x")]:
            subprocess.run(
                [saslpasswd2, "-p", "-c", "-f", str(database), "-u", self.postfix_hostname,
                 login], input=password.encode(), check=True, capture_output=True, timeout=30)
        postfix_gid = grp.getgrnam("postfix").gr_gid
        os.chown(database, 0, postfix_gid)
        database.chmod(0o640)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, servers: Iterable[ServerEntry], accounts: Iterable[AccountEntry] = (),
              ) -> LiveRelay:
        """Install the files for ``servers``/``accounts`` and start every part."""
        require_tool("postfix")
        require_tool("postmap")
        require_root()
        postsrsd = require_tool("postsrsd")
        self.secrets_dir.mkdir(mode=0o700, parents=True)
        self.install(servers, accounts)
        self.postfix.extra_main_cf = self._make_certificate()
        self._make_sasldb()

        self.sink.start()
        self.redis.__enter__()

        secret = self.secrets_dir / "postsrsd.secret"
        secret.write_text(secrets.token_urlsafe(32) + "\n")
        secret.chmod(0o600)
        with self.postsrsd_log.open("wb") as log:
            self.postsrsd = subprocess.Popen(
                [postsrsd, "-s", str(secret), "-d", self.rewrite_domain, "-l", "127.0.0.1",
                 "-4", "-f", str(self.srs_forward_port), "-r", str(self.srs_reverse_port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.start_policyd()
        _wait_port(self.srs_forward_port, "postsrsd", 15, self.postsrsd, self.postsrsd_log)
        _wait_port(self.srs_reverse_port, "postsrsd", 15, self.postsrsd, self.postsrsd_log)

        self.postfix.start(self.fragment(FRAGMENT_NAME),
                           master_cf_fragment=self.fragment(MASTER_FRAGMENT_NAME))
        for port in (self.submission_port, self.smtps_port):
            _wait_port(port, "smtpd", 15, log=self.postfix.log_file)
        return self

    def start_policyd(self) -> None:
        """Start the policy service on its port (again, after :meth:`stop_policyd`)."""
        with self.policyd_log.open("ab") as log:
            self.policyd = subprocess.Popen(
                [sys.executable, "-m", "requests_app.policyd",
                 "--policy", str(self.map_dir / POLICY_NAME),
                 "--listen", f"127.0.0.1:{self.policy_port}", "--redis", self.redis.url],
                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        _wait_port(self.policy_port, "policyd", 30, self.policyd, self.policyd_log)

    def stop_policyd(self) -> None:
        """Stop the policy service (an outage; Postfix must defer, never pass)."""
        _stop_process(self.policyd)
        self.policyd = None

    def close(self) -> None:
        """Stop every process (Postfix first: it talks to the others) and remove the dirs."""
        try:
            self.postfix.close()
        finally:
            _stop_process(self.policyd)
            _stop_process(self.postsrsd)
            self.redis.__exit__(None, None, None)
            self.sink.stop()
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LiveRelay:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def logs(self) -> str:
        """Every part's log, for assertion messages."""
        parts = [("maillog", self.postfix.log()), ]
        for name, path in (("policyd", self.policyd_log), ("postsrsd", self.postsrsd_log)):
            parts.append((name, path.read_text(errors="replace") if path.exists() else ""))
        return "\n".join(f"--- {name} ---\n{text}" for name, text in parts)

    # -- clients -------------------------------------------------------------------------

    def connect(self, source: str = "127.0.0.2", *, port: int | None = None,
                implicit_tls: bool = False) -> smtplib.SMTP:
        """An SMTP client from ``source`` (a loopback address) to one of the relay's ports."""
        port = port or self.smtp_port
        if implicit_tls:
            return smtplib.SMTP_SSL(self.postfix.host, port, source_address=(source, 0),
                                    timeout=20, context=client_tls_context())
        return smtplib.SMTP(self.postfix.host, port, source_address=(source, 0), timeout=20)

    @staticmethod
    def message(sender: str, recipient: str, subject: str, *, from_header: str | None = None,
                ) -> EmailMessage:
        message = EmailMessage()
        message["From"] = from_header if from_header is not None else (sender or "postmaster@x")
        message["To"] = recipient
        message["Subject"] = subject
        message["Message-ID"] = f"<{secrets.token_hex(8)}@client.example.org>"
        message.set_content(f"{subject}\n")
        return message

    @staticmethod
    def transact(client: smtplib.SMTP, sender: str, recipients: Iterable[str],
                 message: EmailMessage) -> Reply:
        """MAIL, RCPT…, DATA on an open session; the first refusal or the DATA reply.

        One refusal ends the transaction (``RSET``), so the session can be reused.
        """
        code, text = client.mail(sender)
        if code != 250:
            client.rset()
            return Reply("mail", code, text.decode(errors="replace"))
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            if code != 250:
                client.rset()
                return Reply("rcpt", code, text.decode(errors="replace"))
        code, text = client.data(message.as_bytes())
        if code != 250:
            client.rset()
        return Reply("data", code, text.decode(errors="replace"))

    def send(self, sender: str, recipient: str, subject: str, *, source: str = "127.0.0.2",
             from_header: str | None = None, starttls: bool = False, port: int | None = None,
             implicit_tls: bool = False, login: str | None = None) -> Reply:
        """One message on a fresh connection from ``source``; returns where it ended.

        ``login`` authenticates (after TLS) with the password given to the harness.
        """
        with self.connect(source, port=port, implicit_tls=implicit_tls) as client:
            client.ehlo("client.example.org")
            if starttls:
                client.starttls(context=client_tls_context())
                client.ehlo("client.example.org")
            if login is not None:
                client.login(login, self.logins[login])
            message = self.message(sender, recipient, subject, from_header=from_header)
            return self.transact(client, sender, [recipient], message)

    # -- what arrived --------------------------------------------------------------------

    def received(self, subject: str) -> list[ReceivedMessage]:
        """Messages the next hop got whose Subject is ``subject``."""
        return [m for m in self.sink.messages if m.message["Subject"] == subject]

    def wait_for(self, subject: str, count: int = 1, timeout: float = 20) -> list[ReceivedMessage]:
        """Wait until the next hop has ``count`` messages with ``subject``; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.received(subject)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"{len(self.received(subject))} of {count} messages {subject!r} arrived\n"
            f"{self.logs()}")

    def settled(self, timeout: float = 20) -> None:
        """Wait until Postfix's queue is empty: nothing it accepted can still arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.postfix.queue_empty():
                return
            time.sleep(0.1)
        raise AssertionError(f"the queue did not drain\n{self.logs()}")
