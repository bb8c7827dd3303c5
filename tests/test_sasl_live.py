"""Functional accounts on the live relay: SASL over TLS, decided by the directory.

One private chain on loopback for the module: OpenLDAP ``slapd`` (the directory, with
the relay-allow group), Cyrus ``saslauthd -a ldap`` (password by binding as the account,
then ``member`` compared on the group), and Postfix whose main.cf carries the generated
``main.cf.fragment`` (``smtpd_sasl_type = cyrus``) and whose listening smtpd is the
generated submission service. The account passwords are set with the LDAP Password
Modify operation (RFC 3062), as issuing and rotating do. Why these parts:
docs/relay-sasl.md.

``smtpd_delay_reject = yes`` is Postfix's default and the relay keeps it, so the
sender-ownership refusal (``reject_authenticated_sender_login_mismatch``, a sender
restriction) is given in reply to ``RCPT TO``, after ``MAIL FROM`` got 250.
"""

from __future__ import annotations

import base64
import contextlib
import smtplib
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime

import ldap3
import pytest
from django.db import transaction

from requests_app.artifacts_io import write_artifacts_atomically
from requests_app.directory import directory_change_enqueue
from requests_app.models import DirectoryChange
from requests_app.models import RelayRequest
from requests_app.models import RequestState
from requests_app.postfix import FRAGMENT_NAME
from requests_app.postfix import AccountEntry
from requests_app.postfix import RelaySettings
from requests_app.postfix import build_artifacts
from tests.factories import RelayRequestFactory
from tests.support.postfix import require_root
from tests.support.postfix import require_tool
from tests.support.redis import PrivateRedis
from tests.support.sasl import PolicyDaemon
from tests.support.sasl import Saslauthd
from tests.support.sasl import SubmissionRelay
from tests.support.sasl import self_signed_certificate
from tests.support.sasl import submission_options
from tests.support.slapd import BASE_DN
from tests.support.slapd import READER_DN
from tests.support.slapd import READER_PASSWORD
from tests.support.slapd import SlapdInstance
from tests.support.slapd import free_port

pytestmark = [pytest.mark.postfix, pytest.mark.ldap]

RELAY_HOST = "relay.relaydesk.invalid"
SERVICES = f"ou=services,{BASE_DN}"
NOW = datetime(2025, 1, 1, tzinfo=UTC)

# Throw-away secrets of a throw-away directory.
PASSWORDS = {
    "svc-relay": "Relay-pass-7f3a9c",
    "svc-rotate": "Rotate-old-1b2c3d",
    "svc-revoke": "Revoke-pass-4e5f6a",
}
# svc-relay and svc-rotate start in the group; svc-revoke enters it through Relaydesk.
IN_GROUP = ("svc-relay", "svc-rotate")
ACCOUNTS = [
    AccountEntry(1, "svc-relay", "ops", ("billing@example.org", "@alerts.example.org")),
    AccountEntry(2, "svc-rotate", "ops", ("rotate@example.org",)),
    AccountEntry(3, "svc-revoke", "ops", ("revoke@example.org",)),
]


def account_dn(account: str) -> str:
    return f"uid={account},{SERVICES}"


def root_connection(slapd: SlapdInstance) -> ldap3.Connection:
    return ldap3.Connection(
        ldap3.Server(slapd.url, connect_timeout=2), slapd.root_dn, slapd.root_password,
        auto_bind=True,
    )


def set_password(slapd: SlapdInstance, account: str, password: str) -> None:
    """RFC 3062 Password Modify as the directory's root: what issuing and rotating send."""
    conn = root_connection(slapd)
    try:
        assert conn.extend.standard.modify_password(account_dn(account), new_password=password)
    finally:
        conn.unbind()


def group_members(slapd: SlapdInstance) -> set[str]:
    conn = root_connection(slapd)
    try:
        assert conn.search(slapd.group_dn, "(objectClass=*)", ldap3.BASE, attributes=["member"])
        return {str(dn).lower() for dn in conn.entries[0].member.values}
    finally:
        conn.unbind()


def seed_accounts(slapd: SlapdInstance, accounts: tuple[str, ...], in_group: tuple[str, ...]
                  ) -> None:
    conn = root_connection(slapd)
    try:
        for account in accounts:
            assert conn.add(account_dn(account), ["account", "simpleSecurityObject"],
                            {"uid": account, "userPassword": "unset"}), conn.result
        if in_group:
            assert conn.modify(slapd.group_dn, {"member": [
                (ldap3.MODIFY_ADD, [account_dn(a) for a in in_group])]}), conn.result
    finally:
        conn.unbind()
    for account in accounts:
        set_password(slapd, account, PASSWORDS.get(account, "Cache-pass-9d8e7f"))


@dataclass
class Live:
    slapd: SlapdInstance
    saslauthd: Saslauthd
    relay: SubmissionRelay
    policyd: PolicyDaemon | None

    def diagnostics(self) -> str:
        policyd = self.policyd.log() if self.policyd is not None else "(not used)"
        return (f"--- maillog ---\n{self.relay.log()}\n"
                f"--- saslauthd ---\n{self.saslauthd.log_tail()}\n--- policyd ---\n{policyd}")


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    require_tool("postfix")
    require_root()
    with contextlib.ExitStack() as stack:
        slapd = stack.enter_context(SlapdInstance())
        saslauthd = stack.enter_context(Saslauthd(
            ldap_url=slapd.url,
            bind_dn=READER_DN,  # may read entries and the group, never a userPassword
            bind_password=READER_PASSWORD,
            search_base=SERVICES,
            group_dn=slapd.group_dn,
        ))
        seed_accounts(slapd, tuple(PASSWORDS), IN_GROUP)
        key, cert = self_signed_certificate(saslauthd.root, RELAY_HOST)
        relay = stack.enter_context(
            SubmissionRelay(tls_key=key, tls_cert=cert, smtpd_conf=saslauthd.smtpd_conf())
        )
        policy_port = free_port()
        settings = RelaySettings(
            relay_host=RELAY_HOST,
            map_directory=str(relay.map_dir),
            sasl_type="cyrus",
            sasl_path="smtpd",  # the Cyrus application name: smtpd.conf
            # What the organisation of issue 13 asks for: encrypted submission only.
            require_tls=True,
            # Accounts are judged by sender_login_maps in either mode; "reject" needs
            # no postsrsd (rewrite mode's recipient_canonical_maps would).
            sender_mode="reject",
            policy_service=f"127.0.0.1:{policy_port}",
        )
        artifacts = build_artifacts([], ACCOUNTS, settings, version=1, generated_at=NOW)
        assert artifacts.skipped == []
        write_artifacts_atomically(relay.map_dir, artifacts)
        fragment = artifacts[FRAGMENT_NAME].decode()
        policyd = None
        if "check_policy_service" in fragment:
            redis = stack.enter_context(PrivateRedis())
            policyd = PolicyDaemon(policy_file=relay.map_dir / "relay_policy", port=policy_port,
                                   redis_url=redis.url, log_path=relay.root / "policyd.log")
            stack.callback(policyd.stop)
            policyd.start()
        relay.options = submission_options(artifacts, settings.submission_port)
        relay.start(fragment)
        yield Live(slapd, saslauthd, relay, policyd)


# --- SMTP client -------------------------------------------------------------------------


def _tls_context() -> ssl.SSLContext:
    # The certificate is a throw-away self-signed one; what is tested is that AUTH needs TLS.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(live: Live) -> smtplib.SMTP:
    client = smtplib.SMTP(live.relay.host, live.relay.port, timeout=20)
    client.ehlo("client.example.org")
    return client


def connect_tls(live: Live) -> smtplib.SMTP:
    client = connect(live)
    code, _ = client.starttls(context=_tls_context())
    assert code == 220
    client.ehlo("client.example.org")
    return client


def auth_plain(client: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """``AUTH PLAIN`` once (smtplib's ``login`` would retry with LOGIN after a 535)."""
    client.user, client.password = user, password
    try:
        return client.auth("PLAIN", client.auth_plain)
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code, exc.smtp_error


def login_code(live: Live, user: str, password: str) -> int:
    with connect_tls(live) as client:
        return auth_plain(client, user, password)[0]


def wait_for_log(live: Live, text: str, timeout: float = 5.0) -> str:
    """The maillog once it contains ``text`` (postlogd writes it a moment later)."""
    deadline = time.monotonic() + timeout
    while text not in (log := live.relay.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


# --- TLS before AUTH ---------------------------------------------------------------------


def test_auth_is_offered_only_after_starttls(live):
    # given a client that has not started TLS
    with connect(live) as client:
        # then STARTTLS is offered and AUTH is not
        assert client.has_extn("starttls")
        assert not client.has_extn("auth"), client.esmtp_features
        # when it tries AUTH anyway, with a right password
        credentials = base64.b64encode(f"\0svc-relay\0{PASSWORDS['svc-relay']}".encode())
        code, message = client.docmd("AUTH", "PLAIN " + credentials.decode())
        # then the relay does not even look at it: 530 "Must issue a STARTTLS command
        # first" (require_tls), or 503 "authentication not enabled" (TLS optional)
        assert code in (503, 530), message
        # and with require_tls, mail in clear text is refused outright
        assert client.mail("billing@example.org")[0] == 530

    # when the client starts TLS
    with connect_tls(live) as client:
        # then AUTH is offered with exactly the mechanisms saslauthd can check
        assert client.has_extn("auth")
        assert sorted(client.esmtp_features["auth"].split()) == ["LOGIN", "PLAIN"]


def test_directory_password_gives_235_after_starttls(live):
    # given an account in the relay-allow group with its directory password
    with connect_tls(live) as client:
        # when it authenticates over TLS
        code, message = auth_plain(client, "svc-relay", PASSWORDS["svc-relay"])
        # then
        assert code == 235, (message, live.diagnostics())
    # and neither the relay's nor saslauthd's log holds the password
    assert PASSWORDS["svc-relay"] not in live.relay.log()
    assert PASSWORDS["svc-relay"] not in live.saslauthd.log_tail(10_000)


def test_login_mechanism_works_too(live):
    # Outlook-era clients and some libraries only speak AUTH LOGIN.
    with connect_tls(live) as client:
        client.user, client.password = "svc-relay", PASSWORDS["svc-relay"]
        assert client.auth("LOGIN", client.auth_login, initial_response_ok=False)[0] == 235


def test_tls_without_auth_cannot_relay(live):
    # given a client that started TLS but did not authenticate
    with connect_tls(live) as client:
        assert client.mail("billing@example.org")[0] == 250
        # when it tries to relay
        code, message = client.rcpt("someone@remote.example")
    # then the submission service refuses it
    assert code == 554, message
    assert b"access denied" in message.lower()


# --- sender ownership --------------------------------------------------------------------


def test_sender_not_listed_for_the_login_gets_553_listed_sender_250(live):
    with connect_tls(live) as client:
        assert auth_plain(client, "svc-relay", PASSWORDS["svc-relay"])[0] == 235

        # when the account sends as a listed address and as an address of its listed domain
        for sender in ("billing@example.org", "ops@alerts.example.org"):
            assert client.mail(sender)[0] == 250
            code, message = client.rcpt("someone@remote.example")
            # then the relay accepts them
            assert code == 250, (sender, message, live.diagnostics())
            client.rset()
        assert client.mail("billing@example.org")[0] == 250
        assert client.rcpt("someone@remote.example")[0] == 250
        code, message = client.data(b"Subject: live\r\n\r\nproof\r\n")
        assert code == 250, (message, live.diagnostics())
        # and the maillog ties the message to the login (who sent what)
        queue_id = message.decode().rsplit(" ", 1)[-1]
        line = f"{queue_id}: client=unknown[127.0.0.1], sasl_method=PLAIN, sasl_username=svc-relay"
        assert line in wait_for_log(live, line), live.diagnostics()

        # when it sends as another account's sender, and as a sender nobody listed
        refused = {}
        for sender in ("rotate@example.org", "ceo@example.org", "x@sub.alerts.example.org"):
            client.rset()
            assert client.mail(sender)[0] == 250
            refused[sender] = client.rcpt("someone@remote.example")
    # then each is refused with 553 5.7.1, naming sender and login
    for sender, (code, message) in refused.items():
        assert code == 553, (sender, message)
        assert message.startswith(b"5.7.1 <" + sender.encode() + b">"), message
        assert b"not owned by user svc-relay" in message


# --- passwords ---------------------------------------------------------------------------


def test_wrong_password_gets_535(live):
    with connect_tls(live) as client:
        code, message = auth_plain(client, "svc-relay", PASSWORDS["svc-relay"] + "x")
        assert code == 535, (message, live.diagnostics())
        assert message.startswith(b"5.7.8")
        # and a refused session cannot relay either
        assert client.mail("billing@example.org")[0] == 250
        assert client.rcpt("someone@remote.example")[0] == 554
    assert login_code(live, "svc-nobody", PASSWORDS["svc-relay"]) == 535


def test_after_rotation_old_password_535_new_password_235(live):
    # given an account that logs in with its current password
    old, new = PASSWORDS["svc-rotate"], "Rotate-new-5a6b7c"
    assert login_code(live, "svc-rotate", old) == 235, live.diagnostics()

    # when its password is rotated in the directory (Password Modify, RFC 3062)
    set_password(live.slapd, "svc-rotate", new)

    # then at once (saslauthd runs without a credential cache) old 535, new 235
    assert login_code(live, "svc-rotate", old) == 535
    assert login_code(live, "svc-rotate", new) == 235


# --- group membership decides ------------------------------------------------------------


@pytest.mark.django_db
def test_group_membership_decides_with_the_right_password(
    live, settings, team, requester, django_capture_on_commit_callbacks
):
    # given Relaydesk provisions the test directory, as the least-privileged provisioner
    settings.DIRECTORY_URL = f"{live.slapd.url}/"
    settings.DIRECTORY_BIND_DN = live.slapd.bind_dn
    settings.DIRECTORY_BIND_PASSWORD = live.slapd.bind_password
    settings.DIRECTORY_RELAY_GROUP_DN = live.slapd.group_dn
    settings.DIRECTORY_ACCOUNT_DN_TEMPLATE = live.slapd.account_dn_template
    settings.DIRECTORY_TIMEOUT_SECONDS = 2.0
    request = RelayRequestFactory(account=True, account_name="svc-revoke", team=team,
                                  created_by=requester, state=RequestState.PROVISIONING)
    password = PASSWORDS["svc-revoke"]
    member = account_dn("svc-revoke").lower()
    # and the account exists with that password but is not in the relay-allow group yet
    assert member not in group_members(live.slapd)
    assert login_code(live, "svc-revoke", password) == 535

    # when Relaydesk adds it to the group (approval)
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        added = directory_change_enqueue(request=request, action=DirectoryChange.Action.ADD)
    added.refresh_from_db()
    assert added.status == DirectoryChange.Status.DONE, added.last_error
    # then the same password is accepted
    assert member in group_members(live.slapd)
    assert login_code(live, "svc-revoke", password) == 235, live.diagnostics()

    # when the request is revoked and Relaydesk removes the account from the group
    RelayRequest.objects.filter(pk=request.pk).update(state=RequestState.REVOKED)
    request.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        removed = directory_change_enqueue(request=request, action=DirectoryChange.Action.REMOVE)
    removed.refresh_from_db()
    assert removed.status == DirectoryChange.Status.DONE, removed.last_error

    # then the account is no longer in the group, and the right password gets 535
    assert member not in group_members(live.slapd)
    assert login_code(live, "svc-revoke", password) == 535
    assert live.saslauthd.check("svc-revoke", password) is False


def test_saslauthd_credential_cache_would_keep_a_removed_account_working(live):
    # Why the relay runs saslauthd without -c (Debian's default has it): shown, not claimed.
    seed_accounts(live.slapd, ("svc-cache",), ("svc-cache",))
    password = "Cache-pass-9d8e7f"
    with Saslauthd(
        ldap_url=live.slapd.url,
        bind_dn=READER_DN,
        bind_password=READER_PASSWORD,
        search_base=SERVICES,
        group_dn=live.slapd.group_dn,
        cache=True,
    ) as cached:
        # given the account logged in once through a caching saslauthd
        assert cached.check("svc-cache", password)
        # when it leaves the relay-allow group
        conn = root_connection(live.slapd)
        assert conn.modify(live.slapd.group_dn, {"member": [
            (ldap3.MODIFY_DELETE, [account_dn("svc-cache")])]})
        conn.unbind()
        # then the caching daemon still says yes; the relay's (no cache) says no
        assert cached.check("svc-cache", password) is True
        assert live.saslauthd.check("svc-cache", password) is False
