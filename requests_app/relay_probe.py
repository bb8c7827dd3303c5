"""Relaydesk test-mail tool: check the path to the relay step by step and send a test mail.

Run it on the machine that will send through the relay (the server named on the request,
or the host of the application that logs in with the functional account):

    python3 relaydesk-test-<id>.py --to you@example.org

It needs nothing but Python 3.8 or later (standard library only). The checks, in order:

1. DNS: the relay's name resolves from this host.
2. Connection: a TCP connection to the relay's port opens and the relay greets.
3. TLS: STARTTLS on the submission port (587 or 25), or implicit TLS on the smtps port
   (465); the relay's certificate is verified against this host's trust store.
4. Login (functional accounts only): SMTP AUTH with the account's password, read from
   the environment variable ``RELAY_PASSWORD`` or asked for at a prompt. Never pass a
   password on the command line (other users see it in the process list) and never
   write it into this file.
5. Sender: the sender (``--from``) against what the request declared and the relay's
   sender policy.
6. Test mail: MAIL, RCPT and DATA to the recipient given with ``--to``.

Every failure is explained with its remedy, and the exit status says where it stopped:
0 the relay took the test mail; 2 usage (or no password); 3 DNS; 4 connection; 5 TLS
(also a 530 "TLS required"); 6 login (535); 7 sender refused (553); 8 relay access
denied (554: this host is not allowlisted); 9 sending quota reached (450 4.7.1);
10 any other refusal; 11 any other temporary failure.

Why one file: the tool is this module, with the request's facts written into it
(``requests_app.relay_test`` renders it, ``manage.py relay_test`` runs the same code on
the relay side), so the script and the admin's command can never disagree. The sender
rule below is the relay's own (``requests_app.sender_policy``); the downloaded script
carries a copy of its source.
"""

from __future__ import annotations

import argparse
import getpass
import os
import smtplib
import socket
import ssl
import sys
import uuid
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import TextIO

# relaydesk:rule-begin (the downloaded script carries the rule's source here)
from .sender_policy import sender_allowed

# relaydesk:rule-end

__all__ = ("EXIT", "Facts", "add_options", "check", "main", "run")

#: The exit status of each outcome (documented in docs/test-mail.md and above).
EXIT = {
    "ok": 0,
    "usage": 2,
    "dns": 3,
    "connect": 4,
    "tls": 5,
    "auth": 6,
    "sender": 7,
    "denied": 8,
    "quota": 9,
    "refused": 10,
    "temporary": 11,
}

STEPS = 6


@dataclass(frozen=True)
class Facts:
    """What the tool knows about one request, written into the script when it is rendered."""

    request_id: int
    kind: str  # "server" (allowlisted by address) or "account" (logs in)
    subject: str  # the server's FQDN or the account name
    host: str
    port: int
    implicit_tls: bool  # True: TLS from the first byte (smtps, 465); else STARTTLS
    require_tls: bool  # STARTTLS must succeed (accounts always, servers if the relay says)
    account: str  # the login ("" for servers)
    addresses: tuple[str, ...]  # the allowlisted addresses of a server request
    senders: tuple[str, ...]  # declared senders: user@domain or @domain
    approved: tuple[str, ...]  # approved sender domains (servers)
    sender_mode: str  # "rewrite" or "reject": what the relay does with other senders
    tier: str  # "sandbox" or "production" when the script was made
    default_sender: str
    page: str = ""  # the request's page in Relaydesk
    password_env: str = "RELAY_PASSWORD"

    @property
    def logs_in(self) -> bool:
        return bool(self.account)


# relaydesk:facts-begin (the downloaded script has the request's facts here)
FACTS: Facts | None = None
TRANSLATIONS: dict[str, str] = {}
# relaydesk:facts-end


def _(text: str) -> str:
    """The message in the language the script was downloaded in (English otherwise)."""
    return TRANSLATIONS.get(text, text)


class Failure(Exception):
    """A step failed: what happened, why, what to do, and the exit status."""

    def __init__(self, exit_key: str, what: str, why: str, remedy: str) -> None:
        super().__init__(what)
        self.exit_key, self.what, self.why, self.remedy = exit_key, what, why, remedy


class _Session(smtplib.SMTP):
    """An SMTP session over a socket this tool opened itself, so that connecting, TLS
    and the greeting are separate steps with their own explanations; ``host`` stays the
    relay's name, which STARTTLS verifies the certificate against."""

    def __init__(self, sock: socket.socket, host: str, port: int, timeout: float,
                 local_hostname: str) -> None:
        self._ready = sock
        super().__init__(host, port, local_hostname=local_hostname, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return self._ready


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}"


def _listing(values: Sequence[str]) -> str:
    return ", ".join(values) if values else _("none")


class Probe:
    """One run of the checks against one relay endpoint."""

    def __init__(self, facts: Facts, args: argparse.Namespace, out: TextIO,
                 environ: dict[str, str], prompt: Callable[[str], str]) -> None:
        self.facts, self.args, self.out = facts, args, out
        self.environ, self.prompt = environ, prompt
        self.host = args.host or facts.host
        self.port = args.port or facts.port
        self.implicit_tls = facts.implicit_tls if args.port is None else args.port == 465
        if args.implicit_tls is not None:
            self.implicit_tls = args.implicit_tls
        self.sender = args.sender if args.sender is not None else facts.default_sender
        self.local_address = ""
        self.session: _Session | None = None
        self.encrypted = False

    def say(self, text: str) -> None:
        self.out.write(text + "\n")

    def step(self, number: int, name: str, text: str) -> None:
        self.say(f"[{number}/{STEPS}] {name}: {text}")

    # -- 1. DNS ------------------------------------------------------------------------

    def resolve(self) -> list[str]:
        if self.args.connect_to:
            self.step(1, _("DNS"), _("skipped, connecting to {address} as asked "
                                     "(--connect-to)").format(address=self.args.connect_to))
            return [self.args.connect_to]
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise Failure(
                "dns", _("{host} does not resolve from this host ({error}).").format(
                    host=self.host, error=exc),
                _("The relay's name must be found in DNS by this host's resolver."),
                _("Check this host's DNS resolver (/etc/resolv.conf, a split-horizon DNS "
                  "or a VPN may be needed for internal names) and the spelling of the "
                  "relay's name; to test one address of the relay, pass --connect-to "
                  "ADDRESS.")) from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self.step(1, _("DNS"), _("{host} resolves to {addresses}").format(
            host=self.host, addresses=", ".join(addresses)))
        return addresses

    # -- 2. connection -----------------------------------------------------------------

    def connect(self, addresses: list[str]) -> socket.socket:
        source = (self.args.source_address, 0) if self.args.source_address else None
        errors: list[tuple[str, OSError]] = []
        for address in addresses:
            try:
                sock = socket.create_connection((address, self.port), self.args.timeout,
                                                source_address=source)
            except OSError as exc:
                errors.append((address, exc))
                continue
            self.local_address = str(sock.getsockname()[0])
            self.step(2, _("Connection"), _(
                "TCP connection to {address} port {port} opened from {local}").format(
                    address=address, port=self.port, local=self.local_address))
            return sock
        address, error = errors[-1]
        where = _("{host} ({address}) port {port}").format(
            host=self.host, address=address, port=self.port)
        if isinstance(error, ConnectionRefusedError):
            raise Failure(
                "connect", _("Connection refused by {where}.").format(where=where),
                _("The relay host answered, but nothing accepts connections on port "
                  "{port} there, or a firewall rejects them.").format(port=self.port),
                _("Check the host and port against your settings on the request page "
                  "(587 STARTTLS, 465 implicit TLS); ask your network team whether a "
                  "firewall between this host and the relay rejects TCP port {port}."
                  ).format(port=self.port))
        if isinstance(error, (socket.timeout, TimeoutError)):
            raise Failure(
                "connect", _("No answer from {where} within {seconds} seconds.").format(
                    where=where, seconds=self.args.timeout),
                _("Packets to the relay are dropped on the way: typically a firewall "
                  "(this host's, the network's or the relay's) that does not allow TCP "
                  "port {port}.").format(port=self.port),
                _("Ask your network team to open TCP port {port} from this host's "
                  "address to {host}.").format(port=self.port, host=self.host))
        raise Failure(
            "connect", _("Cannot connect to {where}: {error}.").format(
                where=where, error=error),
            _("The operating system refused the connection before the relay was "
              "reached (no route, network unreachable, or --source-address is not an "
              "address of this host)."),
            _("Check this host's network configuration and routes to {host}; without "
              "--source-address the system picks the source address itself.").format(
                  host=self.host))

    # -- 3. TLS ------------------------------------------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.args.cafile)
        if self.args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _tls_failure(self, exc: Exception) -> Failure:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return Failure(
                "tls", _("The relay's certificate was not accepted: {error}.").format(
                    error=exc.verify_message or exc),
                _("This host does not trust the certificate authority that signed the "
                  "relay's certificate, or the certificate is not for {host}.").format(
                      host=self.host),
                _("Install your organisation's CA certificate in this host's trust store "
                  "(or pass --cafile FILE), and use the relay's name, not an address, as "
                  "the host. --insecure skips the check, for diagnosis only."))
        return Failure(
            "tls", _("The TLS handshake with {host} failed: {error}.").format(
                host=self.host, error=exc),
            _("TLS could not be agreed on: an old TLS library on this host, a device in "
              "between that intercepts TLS, or a port that does not speak TLS "
              "({mode}).").format(mode=_("implicit TLS") if self.implicit_tls
                                  else "STARTTLS"),
            _("Check that the port matches the TLS mode (465 implicit TLS, 587 or 25 "
              "STARTTLS) and that this host's OpenSSL supports TLS 1.2 or later."))

    def wrap_implicit(self, sock: socket.socket) -> socket.socket:
        try:
            wrapped = self.tls_context().wrap_socket(sock, server_hostname=self.host)
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            sock.close()
            raise self._tls_failure(exc) from None
        self.encrypted = True
        return wrapped

    def greet(self, sock: socket.socket) -> _Session:
        name = self.args.ehlo or (self.facts.subject if not self.facts.logs_in
                                  else socket.gethostname()) or "localhost"
        try:
            session = _Session(sock, self.host, self.port, self.args.timeout, name)
        except smtplib.SMTPConnectError as exc:
            raise Failure(
                "refused" if 500 <= exc.smtp_code < 600 else "temporary",
                _("The relay refused the connection: {reply}.").format(
                    reply=_reply(exc.smtp_code, exc.smtp_error)),
                _("The relay does not talk to this client at all (its greeting is a "
                  "refusal); a 4xx greeting means it is busy or shutting down."),
                _("Retry later for a 4xx; for a 5xx send this output to the relay's "
                  "administrators.")) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise self._no_greeting(exc) from None
        self.session = session
        try:
            code, text = session.ehlo()
        except (OSError, smtplib.SMTPException) as exc:
            raise self._no_greeting(exc) from None
        if code != 250:
            raise Failure("refused", _("The relay refused EHLO: {reply}.").format(
                reply=_reply(code, text)), _("The relay did not accept this host's "
                                             "greeting name ({name}).").format(name=name),
                _("Pass the host's fully qualified name with --ehlo NAME."))
        return session

    def _no_greeting(self, exc: Exception) -> Failure:
        if self.implicit_tls:
            why = _("The connection opened but the relay said nothing usable.")
        else:
            why = _("The connection opened but no SMTP greeting came: if port {port} "
                    "expects implicit TLS (465), use --implicit-tls.").format(port=self.port)
        return Failure("connect", _("No SMTP greeting from {host} port {port}: {error}."
                                    ).format(host=self.host, port=self.port, error=exc),
                       why, _("Check the port against your settings on the request page."))

    def starttls(self, session: _Session) -> None:
        if self.implicit_tls:
            self.step(3, "TLS", _("implicit TLS, {version}, certificate {checked}").format(
                version=session.sock.version(), checked=self._checked()))
            return
        if not session.has_extn("starttls"):
            if self.facts.require_tls:
                raise Failure(
                    "tls", _("{host} port {port} does not offer STARTTLS.").format(
                        host=self.host, port=self.port),
                    _("The relay requires TLS here, so this is not the relay's "
                      "submission port, or a device in between removes STARTTLS."),
                    _("Use the port from the request page; ask your network team "
                      "whether a firewall inspects SMTP (it must leave STARTTLS alone)."))
            self.step(3, "TLS", _("not offered on port {port}; going on without TLS "
                                  "(this relay does not require it)").format(port=self.port))
            return
        try:
            code, text = session.starttls(context=self.tls_context())
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise self._tls_failure(exc) from None
        except smtplib.SMTPResponseException as exc:
            raise Failure("tls", _("The relay refused STARTTLS: {reply}.").format(
                reply=_reply(exc.smtp_code, exc.smtp_error)),
                _("The relay could not start TLS (its certificate or key may be "
                  "missing)."), _("Send this output to the relay's administrators.")
            ) from None
        self.encrypted = True
        session.ehlo()
        self.step(3, "TLS", _("STARTTLS, {version}, certificate {checked}").format(
            version=session.sock.version(), checked=self._checked()))

    def _checked(self) -> str:
        if self.args.insecure:
            return _("NOT verified (--insecure)")
        return _("verified for {host}").format(host=self.host)

    # -- 4. login ----------------------------------------------------------------------

    def password(self) -> str:
        name = self.facts.password_env
        value = self.environ.get(name, "")
        if value:
            return value
        if self.args.no_prompt:
            raise Failure(
                "usage", _("No password: {name} is not set.").format(name=name),
                _("The account's password is read from the environment or a prompt, "
                  "never from the command line or this file."),
                _("Set {name} in the environment of this command, or run it in a "
                  "terminal to be asked.").format(name=name))
        try:
            value = self.prompt(_("Password for {account}: ").format(
                account=self.facts.account))
        except (EOFError, OSError):
            value = ""
        if not value:
            raise Failure(
                "usage", _("No password given for {account}.").format(
                    account=self.facts.account),
                _("The account's password is read from the environment or a prompt, "
                  "never from the command line or this file."),
                _("Set {name} in the environment of this command, or type the password "
                  "at the prompt.").format(name=name))
        return value

    def login(self, session: _Session) -> None:
        if not self.facts.logs_in:
            self.step(4, _("Login"), _("not needed: request #{id} is allowlisted by its "
                                       "addresses ({addresses})").format(
                id=self.facts.request_id, addresses=_listing(self.facts.addresses)))
            return
        if not session.has_extn("auth"):
            raise Failure(
                "auth", _("The relay does not offer AUTH on this connection."),
                _("The relay offers login only over TLS and only on its submission "
                  "ports (587, 465).") if self.encrypted else _(
                    "The relay offers login only after TLS, and this session is not "
                    "encrypted."),
                _("Use the port and TLS mode from the request page."))
        password = self.password()
        try:
            session.login(self.facts.account, password)
        except smtplib.SMTPAuthenticationError as exc:
            raise Failure(
                "auth", _("Login as {account} refused: {reply}.").format(
                    account=self.facts.account, reply=_reply(exc.smtp_code, exc.smtp_error)),
                _("Wrong password, or the account is not (or no longer) in the relay "
                  "group, so the relay does not know it."),
                _("Check the password (an issued one comes from the one-time link; after "
                  "a rotation only the new one works). If it is right, see on request "
                  "#{id} whether the account is active and its directory change is "
                  "done.").format(id=self.facts.request_id)) from None
        except smtplib.SMTPException as exc:
            raise Failure("auth", _("Login as {account} failed: {error}.").format(
                account=self.facts.account, error=exc),
                _("The relay and this tool found no common login method."),
                _("Send this output to the relay's administrators.")) from None
        self.step(4, _("Login"), _("logged in as {account}").format(
            account=self.facts.account))

    # -- 5. sender ---------------------------------------------------------------------

    def sender_verdict(self) -> tuple[bool, str]:
        """Whether the relay takes the sender as is, and the sentence saying why."""
        facts, sender = self.facts, self.sender
        domain = sender.rpartition("@")[2].lower()
        if facts.logs_in:
            # The login map: an account sends only as its declared senders.
            ok = sender_allowed(sender, facts.senders, (domain,))
            return ok, (_("{sender} is declared for account {account}").format(
                sender=sender, account=facts.account) if ok else _(
                "{sender} is not declared for account {account} (declared: {declared})"
            ).format(sender=sender, account=facts.account,
                     declared=_listing(facts.senders)))
        if sender_allowed(sender, facts.senders, facts.approved):
            return True, _("{sender} is declared on request #{id}, on an approved "
                           "domain").format(sender=sender, id=facts.request_id)
        if not sender_allowed(sender, facts.senders, (domain,)):
            reason = _("{sender} is not declared on request #{id} (declared: {declared})"
                       ).format(sender=sender, id=facts.request_id,
                                declared=_listing(facts.senders))
        else:
            reason = _("{domain} is not an approved sender domain (approved: {approved})"
                       ).format(domain=domain, approved=_listing(facts.approved))
        return False, reason

    def check_sender(self) -> None:
        ok, reason = self.sender_verdict()
        if ok:
            self.step(5, _("Sender"), reason)
        elif self.facts.logs_in or self.facts.sender_mode == "reject":
            self.step(5, _("Sender"), _("{reason}: the relay will refuse it (553); "
                                        "sending anyway to show its answer").format(
                reason=reason))
        else:
            self.step(5, _("Sender"), _("{reason}: the relay will rewrite it (SRS), so "
                                        "recipients see an address at the relay's "
                                        "rewrite domain").format(reason=reason))

    # -- 6. test mail ------------------------------------------------------------------

    def message(self, token: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender or "<>"
        message["To"] = self.args.to
        message["Subject"] = f"Relaydesk test mail for request #{self.facts.request_id} " \
                             f"({token})"
        message["Date"] = formatdate(localtime=True)
        domain = self.sender.rpartition("@")[2] or "relaydesk.invalid"
        message["Message-ID"] = f"<relaydesk-test.{token}@{domain}>"
        message["X-Relaydesk-Test"] = token
        message.set_content(
            f"This is a test mail sent by the Relaydesk test-mail tool for request "
            f"#{self.facts.request_id} ({self.facts.subject}) through {self.host} port "
            f"{self.port}, from {self.local_address}.\n")
        return message

    def send(self, session: _Session) -> None:
        token = uuid.uuid4().hex[:12]
        message = self.message(token)
        stage = "mail"
        try:
            code, text = session.mail(self.sender)
            if code == 250:
                stage = "rcpt"
                code, text = session.rcpt(self.args.to)
            if code in (250, 251):
                stage = "data"
                code, text = session.data(message.as_bytes())
        except UnicodeEncodeError:
            raise Failure(
                "usage", _("{sender} or {to} is not plain ASCII.").format(
                    sender=self.sender, to=self.args.to),
                _("The relay takes ASCII addresses only (no SMTPUTF8)."),
                _("Write the domain in its ASCII (punycode, xn--) form.")) from None
        except smtplib.SMTPServerDisconnected as exc:
            raise Failure("temporary", _("The relay closed the connection: {error}.").format(
                error=exc), _("The relay hung up during the transaction (a timeout, or a "
                              "restart)."), _("Run the test again.")) from None
        if code == 250 and stage == "data":
            self.step(6, _("Test mail"), _("the relay took it ({reply})").format(
                reply=_reply(code, text)))
            self.say(_("Subject: {subject}").format(subject=message["Subject"]))
            return
        with_reply = _reply(code, text)
        raise self.explain(stage, code, with_reply)

    def explain(self, stage: str, code: int, reply: str) -> Failure:
        """The failure for a refusal at ``stage`` (mail, rcpt, data): what the relay meant."""
        facts, text = self.facts, reply.lower()
        answered = _("The relay answered {reply} (at {stage}).").format(
            reply=reply, stage=stage.upper())
        page = _(" on the request page ({page})").format(page=facts.page) if facts.page \
            else ""
        if code == 530 or (code == 554 and "tls" in text):
            return Failure(
                "tls", answered,
                _("The relay requires TLS before it takes mail, and this session is not "
                  "encrypted."),
                _("Configure the sender to use STARTTLS (or implicit TLS on 465), as the "
                  "settings{page} show.").format(page=page))
        if code == 554 and "relay access denied" in text:
            if facts.logs_in:
                return Failure(
                    "denied", answered,
                    _("The relay does not let this session relay: it did not count the "
                      "login of {account}.").format(account=facts.account),
                    _("Check on request #{id} that the account is active and in the "
                      "relay group.").format(id=facts.request_id))
            return Failure(
                "denied", answered,
                _("This host's address is not allowlisted: this connection came from "
                  "{local}, and request #{id} lists {addresses}.").format(
                    local=self.local_address or _("an unknown address"),
                    id=facts.request_id, addresses=_listing(facts.addresses)),
                _("Run the test on the server the request is for. If the server's "
                  "address changed (or it sends through NAT), edit or renew request "
                  "#{id} with the address the relay sees; if the request was approved "
                  "only now, the relay may not have loaded it yet: retry in a few "
                  "minutes.").format(id=facts.request_id))
        if code == 553 or (code == 550 and "sender" in text):
            ok, reason = self.sender_verdict()
            if "not owned" in text or facts.logs_in:
                why = _("The account may send only as the senders its request declared: "
                        "{reason}.").format(reason=reason)
            elif ok:
                why = _("The relay refuses this sender although request #{id} declares "
                        "it: the relay's policy changed since this script was made."
                        ).format(id=facts.request_id)
            else:
                why = _("Unapproved domain or not declared: {reason}.").format(
                    reason=reason)
            return Failure(
                "sender", answered, why,
                _("Send as a declared sender (--from ADDRESS), or declare this sender on "
                  "a new or renewed request; a domain must be an approved sender domain "
                  "first (ask the relay's administrators)."))
        if code in (450, 451, 452) and "4.7.1" in text:
            sandbox = "sandbox" in text or (facts.tier == "sandbox"
                                            and "production" not in text)
            return Failure(
                "quota", answered,
                _("The sending quota of request #{id} is used up for now.").format(
                    id=facts.request_id),
                _("Retry later. This request is in the sandbox (a small daily quota): ask "
                  "for production access{page}.").format(page=page) if sandbox else _(
                    "Retry later, or ask for a higher volume on a renewed request."))
        if code == 451 and "4.3." in text:
            return Failure(
                "temporary", answered,
                _("The relay's policy service or quota store is unavailable; the relay "
                  "defers rather than passing mail unchecked."),
                _("Retry in a few minutes; if it persists, send this output to the "
                  "relay's administrators."))
        if stage == "rcpt" and code >= 500:
            return Failure(
                "refused", answered,
                _("The relay refused the recipient {to}.").format(to=self.args.to),
                _("Check the address given with --to."))
        if 400 <= code < 500:
            return Failure("temporary", answered, _("A temporary refusal."),
                           _("Retry later; if it persists, send this output to the "
                             "relay's administrators."))
        return Failure("refused", answered, _("A permanent refusal."),
                       _("Send this output to the relay's administrators."))

    # -- all steps ---------------------------------------------------------------------

    def run(self) -> int:
        facts = self.facts
        self.say(_("Relaydesk test for request #{id} ({kind} {subject}) via {host} port "
                   "{port}").format(id=facts.request_id, kind=facts.kind,
                                    subject=facts.subject, host=self.host, port=self.port))
        try:
            if self.args.sender is None and not facts.default_sender:
                raise Failure(
                    "usage", _("Request #{id} declares no sender address.").format(
                        id=facts.request_id),
                    _("The test mail needs a sender the request may use."),
                    _("Pass --from ADDRESS (an address at a declared sender domain)."))
            sock = self.connect(self.resolve())
            if self.implicit_tls:
                sock = self.wrap_implicit(sock)
            session = self.greet(sock)
            self.starttls(session)
            self.login(session)
            self.check_sender()
            self.send(session)
        except Failure as failure:
            self.say(_("FAILED: {what}").format(what=failure.what))
            self.say(_("Why: {why}").format(why=failure.why))
            self.say(_("Remedy: {remedy}").format(remedy=failure.remedy))
            return EXIT[failure.exit_key]
        finally:
            if self.session is not None:
                try:
                    self.session.quit()
                except (OSError, smtplib.SMTPException):
                    self.session.close()
        self.say(_("PASSED: the relay took the test mail for {to}; look for it in that "
                   "mailbox.").format(to=self.args.to))
        return EXIT["ok"]


def add_options(out: argparse.ArgumentParser) -> None:
    """The options, shared by the script and ``manage.py relay_test``; only non-secret
    values (the password never is an option: other users see command lines)."""
    out.add_argument("--to", required=True, metavar="ADDRESS",
                     help="recipient of the test mail (a mailbox you can read)")
    out.add_argument("--from", dest="sender", metavar="ADDRESS",
                     help="envelope sender and From (default: the request's first "
                          "declared sender)")
    out.add_argument("--host", help="relay host name (default: the request's endpoint)")
    out.add_argument("--port", type=int, help="relay port (default: the request's)")
    tls = out.add_mutually_exclusive_group()
    tls.add_argument("--implicit-tls", dest="implicit_tls", action="store_true",
                     default=None, help="TLS from the first byte (as on port 465)")
    tls.add_argument("--starttls", dest="implicit_tls", action="store_false",
                     help="STARTTLS after the greeting (as on ports 587 and 25)")
    out.add_argument("--connect-to", metavar="ADDRESS",
                     help="connect to this address instead of resolving the host (the "
                          "certificate is still checked for the host name)")
    out.add_argument("--source-address", metavar="ADDRESS",
                     help="bind the connection to this local address (a host with "
                          "several addresses must send from its allowlisted one)")
    out.add_argument("--cafile", metavar="FILE",
                     help="trust the CA certificates in FILE for the relay's certificate")
    out.add_argument("--insecure", action="store_true",
                     help="do not verify the relay's certificate (diagnosis only)")
    out.add_argument("--ehlo", metavar="NAME", help="name to greet the relay with")
    out.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                     help="network timeout (default 20)")
    out.add_argument("--no-prompt", action="store_true",
                     help="never ask for the password (fail if RELAY_PASSWORD is unset)")


def parser(facts: Facts) -> argparse.ArgumentParser:
    """The script's command line."""
    out = argparse.ArgumentParser(
        description=f"Relaydesk test-mail tool for request #{facts.request_id}: checks "
                    "DNS, connection, TLS, login and sender, then sends a test mail and "
                    "explains any failure.",
        epilog="The password of a functional account is read from the environment "
               "variable RELAY_PASSWORD or asked for; never put it on the command line. "
               "Exit status: 0 ok, 2 usage, 3 DNS, 4 connection, 5 TLS, 6 login, "
               "7 sender, 8 not allowlisted, 9 quota, 10 refused, 11 temporary.")
    add_options(out)
    return out


def check(facts: Facts, args: argparse.Namespace, out: TextIO | None = None,
          environ: dict[str, str] | None = None,
          prompt: Callable[[str], str] = getpass.getpass) -> int:
    """Run every check with parsed options (``add_options``); the exit status."""
    stream = out if out is not None else sys.stdout
    env = dict(os.environ) if environ is None else environ
    return Probe(facts, args, stream, env, prompt).run()


def run(facts: Facts, argv: Sequence[str], out: TextIO | None = None,
        environ: dict[str, str] | None = None,
        prompt: Callable[[str], str] = getpass.getpass) -> int:
    """Parse ``argv``, run every check against the relay and return the exit status."""
    args = parser(facts).parse_args(list(argv))
    return check(facts, args, out, environ, prompt)


def main(argv: Sequence[str] | None = None) -> int:
    """The downloaded script's entry point."""
    if FACTS is None:
        sys.stderr.write("This is the template of the test-mail tool: download the script "
                         "from the request page, or run manage.py relay_test.\n")
        return EXIT["usage"]
    return run(FACTS, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
