"""The relay's sender policy, SRS, TLS and quotas, proven on a live relay built from real parts.

Each fixture starts one :class:`~tests.support.relay.LiveRelay` (Postfix with the
generated ``main.cf.fragment``/``master.cf.fragment``/maps, the policy service reading the
generated ``relay_policy``, postsrsd, Redis) relaying to a loopback SMTP sink, and the
tests read what the sink received: the envelope and headers the next hop really sees.
Every file is rendered by ``requests_app.postfix.backend(map_type).build`` from entries;
nothing here writes relay configuration by hand.

Needs root and Debian's postfix, postfix-lmdb, postsrsd, sasl2-bin, redis-server and
openssl; skips without them, fails under ``RELAYDESK_REQUIRE_TOOLS=1`` (CI).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC
from datetime import datetime
from pathlib import Path

import pytest

from requests_app.artifacts_io import write_artifacts_atomically
from requests_app.postfix import ACCESS_MAP_NAME
from requests_app.postfix import INDEXED_ACCESS_MAP_NAME
from requests_app.postfix import IPV6_ACCESS_MAP_NAME
from requests_app.postfix import LOGIN_MAP_NAME
from requests_app.postfix import backend
from requests_app.relay_backend import AccountEntry
from requests_app.relay_backend import ServerEntry
from tests.support.postfix import run_tool
from tests.support.relay import LiveRelay
from tests.support.relay import client_tls_context

pytestmark = pytest.mark.postfix

APPROVED = ("example.org",)
# 127.0.0.2: production, may send as app@example.org, anything @alerts.example.org, and
# app@example.net (declared, but example.net is not an approved domain).
APP = ServerEntry(1, "app.example.org", "ops", ("127.0.0.2",),
                  senders=("app@example.org", "@alerts.example.org", "app@example.net"),
                  production=True, daily_volume=1000)
# 127.0.0.5: a sandboxed entry, for the quota.
BATCH = ServerEntry(2, "batch.example.org", "ops", ("127.0.0.5",),
                    senders=("batch@example.org",))
SANDBOX_DAILY = 3
# A functional account: submission ports, SASL login, its own sender.
SVC = AccountEntry(3, "svc-app", "ops", ("svc@example.org",), production=True,
                   daily_volume=1000)
LOGINS = {"svc-app": "correct horse battery"}
REMOTE = "someone@remote.example"


def _rcpt(relay: LiveRelay, source: str, sender: str = "app@example.org") -> tuple[int, str]:
    """MAIL and RCPT from ``source``, then RSET: whether the relay would take the mail."""
    with relay.connect(source) as client:
        client.ehlo("client.example.org")
        assert client.mail(sender)[0] == 250
        code, text = client.rcpt(REMOTE)
        client.rset()
    return code, text.decode(errors="replace")


# ------------------------------------------------------------------- rewrite mode (SRS)


@pytest.fixture(scope="module")
def relay() -> Iterator[LiveRelay]:
    # The per-second sandbox window is set out of the way: this relay tests the daily one.
    with LiveRelay(sender_mode="rewrite", approved_sender_domains=APPROVED,
                   sandbox_daily=SANDBOX_DAILY, sandbox_per_second=100) as live:
        live.start([APP, BATCH])
        yield live


@pytest.mark.parametrize("sender", ["app@example.org", "news@alerts.example.org"])
def test_declared_sender_on_an_approved_domain_arrives_unchanged(relay, sender):
    # when 127.0.0.2 sends as a sender its entry declared, on an approved domain
    subject = f"unchanged {sender}"
    reply = relay.send(sender, REMOTE, subject)
    # then the next hop sees the envelope sender and the From header as sent
    assert reply.accepted, reply
    [got] = relay.wait_for(subject)
    assert got.mail_from == sender
    assert got.message["From"] == sender
    assert got.rcpt_tos == (REMOTE,)


@pytest.mark.parametrize(
    ("sender", "why"),
    [("stranger@example.org", "undeclared"), ("app@example.net", "unapproved domain")],
)
def test_sender_outside_the_policy_is_rewritten_under_the_rewrite_domain(relay, sender, why):
    # when 127.0.0.2 sends as a sender its entry may not use as is
    subject = f"rewritten {sender}"
    reply = relay.send(sender, REMOTE, subject)
    # then the mail is taken, and the next hop sees SRS in the envelope and in From
    assert reply.accepted, (why, reply)
    [got] = relay.wait_for(subject)
    local, _, domain = sender.partition("@")
    srs_tail = f"={domain}={local}@{relay.rewrite_domain}"
    assert got.mail_from.startswith("SRS0=") and got.mail_from.endswith(srs_tail), (
        why, "envelope sender", got.mail_from)
    from_header = str(got.message["From"])
    assert from_header.startswith("SRS0=") and from_header.endswith(srs_tail), (
        why, "From header", from_header)
    assert got.rcpt_tos == (REMOTE,)


def test_null_sender_passes_unchanged(relay):
    # when the allowlisted server sends its own bounce (MAIL FROM:<>)
    subject = "null sender"
    reply = relay.send("", REMOTE, subject)
    # then it is neither refused nor rewritten
    assert reply.accepted, reply
    [got] = relay.wait_for(subject)
    assert got.mail_from == "<>"  # aiosmtpd's spelling of the null sender


def test_bounce_to_a_rewritten_address_reaches_the_original_sender(relay):
    # given a rewritten message as the remote side saw it
    subject = "bounce me"
    assert relay.send("stranger@example.org", REMOTE, subject).accepted
    [sent] = relay.wait_for(subject)
    srs_address = sent.mail_from
    assert srs_address.endswith(f"@{relay.rewrite_domain}")
    # when a remote MX (not allowlisted) bounces to that address
    notice = "bounce of bounce me"
    reply = relay.send("", srs_address, notice, source="127.0.0.3")
    # then the relay takes it and hands it on addressed to the original sender
    assert reply.accepted, reply
    [bounce] = relay.wait_for(notice)
    assert bounce.rcpt_tos == ("stranger@example.org",)
    assert bounce.mail_from == "<>"  # aiosmtpd's spelling of the null sender


def test_an_address_at_the_rewrite_domain_that_is_not_rewritten_is_refused(relay):
    # when a remote host sends to a made-up address at the rewrite domain
    reply = relay.send("", f"someone@{relay.rewrite_domain}", "not srs", source="127.0.0.3")
    # then the relay refuses the recipient instead of relaying it on
    assert not reply.accepted and reply.code == 550, reply
    assert "5.1.1" in reply.text, reply


def test_client_not_on_the_allowlist_is_denied_relay_access(relay):
    # when an address no entry lists tries to relay, even as an approved sender
    code, text = _rcpt(relay, "127.0.0.3")
    # then Postfix refuses it before the policy service is asked
    assert code == 554 and "Relay access denied" in text, (code, text)


def test_sandbox_quota_refuses_at_end_of_data_until_production_is_granted(relay):
    # when the sandboxed entry sends one message more than its daily sandbox limit
    subject = "quota"
    replies = [relay.send("batch@example.org", REMOTE, subject, source="127.0.0.5")
               for _ in range(SANDBOX_DAILY + 1)]
    # then the last is deferred at end of data, naming the request, and exactly the
    # allowed number reaches the next hop (the refused one was never queued)
    assert all(reply.accepted for reply in replies[:SANDBOX_DAILY]), replies
    refused = replies[SANDBOX_DAILY]
    assert (refused.stage, refused.code) == ("data", 450), refused
    assert refused.text.startswith("4.7.1 ") and "#2" in refused.text, refused
    relay.wait_for(subject, SANDBOX_DAILY)
    relay.settled()
    assert len(relay.received(subject)) == SANDBOX_DAILY

    # when the entry is granted production and the files are installed again
    production = ServerEntry(2, "batch.example.org", "ops", ("127.0.0.5",),
                             senders=("batch@example.org",), production=True,
                             daily_volume=50)
    relay.install([APP, production])
    # then, once the policy service has read the new relay_policy (it checks at most once
    # a second), the same client sends again; a refused try is not counted
    after = "quota after production"
    deadline = time.monotonic() + 15
    while not (reply := relay.send("batch@example.org", REMOTE, after,
                                   source="127.0.0.5")).accepted:
        assert reply.code == 450 and time.monotonic() < deadline, (reply, relay.logs())
        time.sleep(0.3)
    relay.wait_for(after)


# -------------------------------------------------------------------------- reject mode


@pytest.fixture(scope="module")
def reject_relay() -> Iterator[LiveRelay]:
    with LiveRelay(sender_mode="reject", approved_sender_domains=APPROVED) as live:
        live.start([APP])
        yield live


@pytest.mark.parametrize("sender", ["stranger@example.org", "app@example.net"])
def test_reject_mode_refuses_the_sender_naming_the_approved_domains(reject_relay, sender):
    # when 127.0.0.2 sends as a sender outside its policy
    subject = f"refused {sender}"
    reply = reject_relay.send(sender, REMOTE, subject)
    # then RCPT gets 553 5.7.1 with the approved domains, and nothing reaches the sink
    assert (reply.stage, reply.code) == ("rcpt", 553), reply
    assert reply.text.startswith("5.7.1 ") and "example.org" in reply.text, reply
    # while a declared sender on an approved domain still passes, unchanged
    assert reject_relay.send("app@example.org", REMOTE, f"{subject} control").accepted
    [control] = reject_relay.wait_for(f"{subject} control")
    assert control.mail_from == "app@example.org"
    reject_relay.settled()
    assert reject_relay.received(subject) == []


def test_quota_store_outage_defers_instead_of_passing(reject_relay):
    # given Redis, where the quota counters live, is down
    reject_relay.redis.stop()
    try:
        # when the allowlisted client sends
        subject = "during redis outage"
        reply = reject_relay.send("app@example.org", REMOTE, subject)
    finally:
        reject_relay.redis.start()
    # then the message is deferred at end of data (the client retries), never let through
    assert (reply.stage, reply.code) == ("data", 451), reply
    assert reply.text.startswith("4.3.0"), reply
    reject_relay.settled()
    assert reject_relay.received(subject) == []
    # and once Redis is back the same mail goes through
    assert reject_relay.send("app@example.org", REMOTE, f"{subject} retried").accepted


def test_policy_service_outage_defers_instead_of_passing(reject_relay):
    # given the policy service is down
    reject_relay.stop_policyd()
    try:
        # when the allowlisted client sends
        subject = "during policy outage"
        reply = reject_relay.send("app@example.org", REMOTE, subject)
    finally:
        reject_relay.start_policyd()
    # then Postfix defers it with its configured default action, never lets it through
    assert reply.code == 451 and reply.text.startswith("4.3.5"), reply
    reject_relay.settled()
    assert reject_relay.received(subject) == []
    # and once the service is back the same mail goes through
    assert reject_relay.send("app@example.org", REMOTE, f"{subject} retried").accepted


# --------------------------------------------------------------------------- TLS required


@pytest.fixture(scope="module")
def tls_relay() -> Iterator[LiveRelay]:
    with LiveRelay(require_tls=True, approved_sender_domains=APPROVED, logins=LOGINS) as live:
        live.start([APP], [SVC])
        yield live


def test_required_tls_refuses_plain_mail_and_accepts_it_after_starttls(tls_relay):
    # when the allowlisted client sends MAIL without TLS, on port 25 and on 587
    for port in (tls_relay.smtp_port, tls_relay.submission_port):
        with tls_relay.connect(port=port) as client:
            client.ehlo("client.example.org")
            assert client.has_extn("starttls")
            code, text = client.mail("app@example.org")
        # then it is refused until it starts TLS
        assert code == 530 and text.startswith(b"5.7.0"), (port, code, text)
    # when it starts TLS first (the relay's certificate is a throw-away one)
    subject = "after starttls"
    reply = tls_relay.send("app@example.org", REMOTE, subject, starttls=True)
    # then the mail is taken and arrives
    assert reply.accepted, reply
    [got] = tls_relay.wait_for(subject)
    assert got.mail_from == "app@example.org"


def test_implicit_tls_port_serves_an_authenticated_account(tls_relay):
    # given a TLS connection to the smtps port (no STARTTLS: the session starts in TLS)
    with tls_relay.connect(port=tls_relay.smtps_port, implicit_tls=True) as client:
        client.ehlo("client.example.org")
        # then AUTH is offered
        assert client.has_extn("auth")
    # and a client on no allowlist cannot relay there without it
    with tls_relay.connect("127.0.0.3", port=tls_relay.smtps_port, implicit_tls=True) as client:
        client.ehlo("client.example.org")
        assert client.mail("app@example.org")[0] == 250
        code, text = client.rcpt(REMOTE)
    assert code == 554 and b"Relay access denied" in text, (code, text)
    # when the functional account logs in and sends as its own sender
    subject = "smtps account"
    reply = tls_relay.send("svc@example.org", REMOTE, subject, port=tls_relay.smtps_port,
                           implicit_tls=True, login="svc-app")
    # then it arrives unchanged
    assert reply.accepted, reply
    [got] = tls_relay.wait_for(subject)
    assert got.mail_from == "svc@example.org"


def test_generated_config_gives_postconf_no_warning(tls_relay):
    # when Postfix's own checker reads the installed main.cf and master.cf
    config = str(tls_relay.postfix.config_dir)
    main = run_tool("postconf", "-c", config, "-n")
    master = run_tool("postconf", "-c", config, "-M")
    # then nothing is unknown, unused or malformed
    assert (main.returncode, main.stderr) == (0, ""), main.stderr
    assert (master.returncode, master.stderr) == (0, ""), master.stderr
    assert f"127.0.0.1:{tls_relay.smtps_port}" in master.stdout


def test_plain_connection_without_tls_never_sees_auth(tls_relay):
    with tls_relay.connect(port=tls_relay.submission_port) as client:
        client.ehlo("client.example.org")
        assert not client.has_extn("auth")
        client.starttls(context=client_tls_context())
        client.ehlo("client.example.org")
        assert client.has_extn("auth")


# ------------------------------------------------------------------------------ map types


ACTIVE = ServerEntry(11, "kept.example.org", "ops", ("127.0.0.2", "2001:db8::2"),
                     senders=("app@example.org",))
REVOKED = ServerEntry(12, "gone.example.org", "ops", ("127.0.0.4", "2001:db8::4"),
                      senders=("app@example.org",))
ACCOUNTS = (
    AccountEntry(21, "svc-kept", "ops", ("kept@example.org", "@kept.example.org")),
    AccountEntry(22, "svc-shared", "ops", ("kept@example.org",)),
)
REVOKED_ACCOUNT = AccountEntry(23, "svc-gone", "ops", ("gone@example.org",))
LAB = ("127.0.0.0/8", "2001:db8::/32")


@pytest.fixture(scope="module", params=["hash", "lmdb"])
def indexed_relay(request) -> Iterator[LiveRelay]:
    with LiveRelay(map_type=request.param, lab_networks=LAB,
                   approved_sender_domains=APPROVED) as live:
        live.start([ACTIVE, REVOKED], [*ACCOUNTS, REVOKED_ACCOUNT])
        yield live


def _cidr_twin(live: LiveRelay, servers, accounts, directory: Path) -> Path:
    """The same entries rendered with RELAY_MAP_TYPE=cidr, installed in ``directory``."""
    artifacts = backend("cidr").build(servers, accounts, live.settings, version=1,
                                      generated_at=datetime.now(UTC))
    write_artifacts_atomically(directory, artifacts)
    return directory


def test_indexed_map_answers_as_the_cidr_map_and_follows_revocation(indexed_relay, tmp_path):
    live, kind = indexed_relay, indexed_relay.map_type
    addresses = ("127.0.0.2", "2001:db8::2", "127.0.0.4", "2001:db8::4", "127.0.0.9")
    senders = ("kept@example.org", "x@kept.example.org", "gone@example.org",
               "nobody@example.org")

    def access(address: str) -> tuple[int, str, str]:
        """What smtpd_relay_restrictions gets for ``address`` under the indexed type: the
        indexed map, then the IPv6 cidr file (the two check_client_access lines in order;
        IPv6 stays cidr because indexed tables also match truncated IPv6 keys)."""
        result = live.postmap("-q", address, f"{kind}:{live.map_dir / INDEXED_ACCESS_MAP_NAME}")
        if result.returncode == 1:
            result = live.postmap("-q", address, f"cidr:{live.map_dir / IPV6_ACCESS_MAP_NAME}")
        return result.returncode, result.stdout, result.stderr

    def answers(servers, accounts):
        cidr = _cidr_twin(live, servers, accounts, tmp_path / f"cidr-{len(servers)}")
        for address in addresses:
            theirs = live.postmap("-q", address, f"cidr:{cidr / ACCESS_MAP_NAME}")
            assert access(address) == (
                theirs.returncode, theirs.stdout, theirs.stderr), (kind, address)
        for sender in senders:
            ours = live.postmap("-q", sender, f"{kind}:{live.map_dir / LOGIN_MAP_NAME}")
            theirs = live.postmap("-q", sender, f"texthash:{cidr / LOGIN_MAP_NAME}")
            assert (ours.returncode, ours.stdout, ours.stderr) == (
                theirs.returncode, theirs.stdout, theirs.stderr), (kind, sender)

    # given both entries installed: the indexed maps answer as the cidr/texthash ones
    answers([ACTIVE, REVOKED], [*ACCOUNTS, REVOKED_ACCOUNT])
    assert access("127.0.0.4")[:2] == (0, "OK\n")
    assert access("2001:db8::4")[:2] == (0, "OK\n")
    # and the live relay lets both addresses relay
    assert _rcpt(live, "127.0.0.2")[0] == 250, live.logs()
    assert _rcpt(live, "127.0.0.4")[0] == 250, live.logs()

    # when one server entry and one account are revoked (install: postmap, reload)
    live.install([ACTIVE], list(ACCOUNTS))
    # then the maps still agree, the revoked keys are gone
    answers([ACTIVE], list(ACCOUNTS))
    assert access("127.0.0.4")[0] == 1
    assert access("2001:db8::4")[0] == 1
    # and the live relay denies the revoked address (smtpd processes of the old
    # generation finish first, hence the wait) while the kept one still relays
    deadline = time.monotonic() + 15
    while (answer := _rcpt(live, "127.0.0.4"))[0] == 250 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answer[0] == 554 and "Relay access denied" in answer[1], (answer, live.logs())
    assert _rcpt(live, "127.0.0.2")[0] == 250, live.logs()
