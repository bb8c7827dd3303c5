"""The test-mail tool: the downloaded script and ``manage.py relay_test``, on a live relay.

The script is rendered per request (``relay_test.render_script``) and run as the owners
run it, ``python3 relaydesk-test-<id>.py``, here with the system's ``python3 -I -S``
(no site-packages: standard library only) as a subprocess, against
:class:`~tests.support.relay.LiveRelay` (Postfix with the generated config, the policy
service, postsrsd, Redis, a loopback sink). Clients bind to 127.0.0.2 (allowlisted) or
127.0.0.3 (not) with the script's ``--source-address``; ``--connect-to 127.0.0.1``
reaches the relay while its certificate is verified for its name (``--cafile`` with
the relay's throw-away certificate). Hostile stored values must stay literals in the
script.
"""

from __future__ import annotations

import ast
import io
import os
import py_compile
import runpy
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from requests_app import relay_probe
from requests_app import relay_test as renderer
from requests_app.models import RelayEndpoint
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.relay_backend import AccountEntry
from requests_app.relay_backend import ServerEntry
from requests_app.relay_test import facts_for
from requests_app.relay_test import render_script
from requests_app.sender_policy import sender_allowed
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.factories import member_of
from tests.support.postfix import free_port
from tests.support.relay import LiveRelay
from tests.test_snippets_safe import HOSTILE_ACCOUNT
from tests.test_snippets_safe import HOSTILE_HOST
from tests.test_snippets_safe import HOSTILE_SENDERS

pytestmark = pytest.mark.django_db

PYTHON3 = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
REMOTE = "someone@remote.example"
RELAY_NAME = "relay.example.com"  # LiveRelay's relay_host: its certificate's name
PASSWORD = "correct horse battery"  # noqa: S105 - the test relay's sasldb login


def _server(team, requester, **columns) -> RelayRequest:
    req = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                              ipv4=["127.0.0.2"], ipv6=[], sender_domains=[],
                              sender_addresses=["app@example.org", "app@example.net"])
    if columns:
        RelayRequest.objects.filter(pk=req.pk).update(**columns)
    return RelayRequest.objects.get(pk=req.pk)


def _account(team, requester, tls_mode: str = "starttls") -> RelayRequest:
    return RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE, account=True,
                               account_name="svc-app", tls_mode=tls_mode,
                               sender_addresses=["svc@example.org"], sender_domains=[])


def _write(req: RelayRequest, directory: Path) -> Path:
    script = directory / f"relaydesk-test-{req.pk}.py"
    script.write_text(render_script(req, page_url=f"https://desk.example/requests/{req.pk}/"))
    return script


def _run(script: Path, *args: str, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess:
    """The script as the owners run it; only the environment's PATH (and ``env``)."""
    return subprocess.run(
        [PYTHON3, "-I", "-S", str(script), *args], capture_output=True, text=True,
        timeout=90, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        stdin=subprocess.DEVNULL)


# ------------------------------------------------------------------ the script as a file


def test_script_is_ascii_stdlib_only_and_compiles(team, requester, tmp_path):
    for req in (_server(team, requester), _account(team, requester, "smtps")):
        # when the script of a request is rendered
        text = render_script(req)
        # then it is ASCII, compiles, and imports only standard library modules
        assert text.isascii()
        script = tmp_path / f"s{req.pk}.py"
        script.write_text(text)
        py_compile.compile(str(script), doraise=True)
        ast.parse(text, feature_version=(3, 8))  # the oldest Python the docs promise
        imported = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, ast.unparse(node)
                imported.add((node.module or "").split(".")[0])
        assert imported <= set(sys.stdlib_module_names), imported - set(
            sys.stdlib_module_names)


def _shape(text: str) -> str:
    """The script's syntax tree with every constant replaced by its type: its code alone."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            node.value = type(node.value).__name__
    return ast.dump(tree)


@pytest.mark.parametrize("sender", HOSTILE_SENDERS)
def test_hostile_values_stay_literals_in_the_script(team, requester, tmp_path, sender):
    # given a request and an endpoint whose stored values were never validated
    RelayEndpoint.objects.create(name="main", host="relay.example.org", is_default=True)
    benign = _account(team, requester)
    RelayRequest.objects.filter(pk=benign.pk).update(sender_domains=["x.org"])
    benign_text = render_script(RelayRequest.objects.get(pk=benign.pk))
    RelayEndpoint.objects.update(host=HOSTILE_HOST)
    req = _account(team, requester)
    RelayRequest.objects.filter(pk=req.pk).update(
        sender_addresses=[sender], sender_domains=["x.org\nimport os"],
        account_name=HOSTILE_ACCOUNT)
    req = RelayRequest.objects.get(pk=req.pk)
    # when its script is rendered
    text = render_script(req)
    script = tmp_path / "hostile.py"
    script.write_text(text)
    # then it compiles, its code is the benign script's code (only strings differ)
    py_compile.compile(str(script), doraise=True)
    assert text.isascii()
    assert _shape(text) == _shape(benign_text)
    # and its facts evaluate to exactly the stored values
    namespace = runpy.run_path(str(script), run_name="relaydesk_test_script")
    facts = namespace["FACTS"]
    assert (facts.host, facts.account, facts.default_sender) == (
        HOSTILE_HOST, HOSTILE_ACCOUNT, sender)
    assert facts.senders == (sender, "@x.org\nimport os")
    # and it runs (here: prints its help)
    result = _run(script, "--help")
    assert result.returncode == 0 and "--source-address" in result.stdout, result


def test_the_script_carries_the_relays_sender_rule(team, requester, tmp_path):
    # given a rendered script, loaded without running it
    script = _write(_server(team, requester), tmp_path)
    rule = runpy.run_path(str(script), run_name="relaydesk_test_script")["sender_allowed"]
    declared = ("app@example.org", "@alerts.example.org", "app@example.net")
    approved = ("example.org",)
    # then its copy answers as the relay's rule on every case
    for sender in ("", "app@example.org", "APP@Example.org", "x@alerts.example.org",
                   "x@sub.alerts.example.org", "app@example.net", "stranger@example.org",
                   "no-at-sign", "app@example.org.evil"):
        assert rule(sender, declared, approved) == sender_allowed(sender, declared, approved)


def test_the_password_is_never_an_option(team, requester, tmp_path):
    script = _write(_account(team, requester), tmp_path)
    # when someone tries to pass it on the command line
    result = _run(script, "--to", REMOTE, "--password", "hunter2")
    # then the script refuses the option (usage), and the file holds no password field
    assert result.returncode == 2 and "--password" in result.stderr, result
    assert "hunter2" not in script.read_text()


def test_connection_refused_names_host_port_and_firewall(team, requester, tmp_path):
    # given the endpoint's port has nothing listening (a free loopback port)
    port = free_port()
    RelayEndpoint.objects.create(name="main", host="127.0.0.1", submission_port=port,
                                 is_default=True)
    script = _write(_server(team, requester), tmp_path)
    # when the owners run the script
    result = _run(script, "--to", REMOTE)
    # then it stops at the connection with exit 4 and says host, port and firewall
    assert result.returncode == relay_probe.EXIT["connect"], result
    assert f"Connection refused by 127.0.0.1 (127.0.0.1) port {port}" in result.stdout
    assert "firewall" in result.stdout and f"TCP port {port}" in result.stdout


def test_a_name_that_does_not_resolve_is_explained(team, requester, monkeypatch):
    def no_such_name(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    out = io.StringIO()
    facts = facts_for(_server(team, requester))
    status = relay_probe.run(facts, ["--to", REMOTE], out=out)
    assert status == relay_probe.EXIT["dns"]
    assert f"{facts.host} does not resolve" in out.getvalue()
    assert "resolv.conf" in out.getvalue()


@pytest.mark.parametrize(
    ("reply", "stage", "exit_key", "phrase"),
    [
        ("450 4.7.1 Sending quota of request #7 reached (200 messages per 24 hours, "
         "sandbox): retry later, or ask for production access in Relaydesk", "data",
         "quota", "ask for production access"),
        ("530 5.7.0 Must issue a STARTTLS command first", "mail", "tls",
         "requires TLS"),
        ("451 4.3.0 Quota store unavailable", "data", "temporary", "policy service"),
    ],
)
def test_relay_answers_are_explained_with_their_remedy(team, requester, reply, stage,
                                                       exit_key, phrase):
    # the relay's own texts for the answers the live tests below do not provoke
    facts = facts_for(_server(team, requester))
    args = relay_probe.parser(facts).parse_args(["--to", REMOTE])
    probe = relay_probe.Probe(facts, args, io.StringIO(), {}, input)
    failure = probe.explain(stage, int(reply[:3]), reply)
    assert failure.exit_key == exit_key
    assert phrase in failure.why + failure.remedy, failure.why + failure.remedy


# ----------------------------------------------------------------------- the download


def test_owners_and_approvers_download_the_script(client, team, requester, approver):
    req = _server(team, requester)
    url = reverse("requests:relay_test_script", args=[req.pk])
    for user in (requester, approver):
        client.force_login(user)
        response = client.get(url)
        assert response.status_code == 200
        assert response["Content-Disposition"] == (
            f'attachment; filename="relaydesk-test-{req.pk}.py"')
        body = response.content.decode("ascii")
        assert f"request_id={req.pk}," in body
        assert f"/requests/{req.pk}/" in body  # the page link the remedies point to
    # and the request page links to it from the snippets
    client.force_login(requester)
    assert url in client.get(reverse("requests:detail", args=[req.pk])).content.decode()


def test_outsiders_and_unapproved_requests_get_no_script(client, team, requester, auditor):
    req = _server(team, requester)
    url = reverse("requests:relay_test_script", args=[req.pk])
    client.force_login(member_of(TeamFactory()))
    assert client.get(url).status_code == 404  # cannot see the request at all
    client.force_login(auditor)
    assert client.get(url).status_code == 403  # sees it, does not configure it
    draft = RelayRequestFactory(team=team, created_by=requester)
    client.force_login(requester)
    assert client.get(reverse("requests:relay_test_script", args=[draft.pk])
                      ).status_code == 404


# -------------------------------------------------------------------- the live relay

APPROVED = ("example.org",)
APP = ServerEntry(1, "app.example.org", "ops", ("127.0.0.2",),
                  senders=("app@example.org", "app@example.net"), production=True,
                  daily_volume=1000)
SVC = AccountEntry(2, "svc-app", "ops", ("svc@example.org",), production=True,
                   daily_volume=1000)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveRelay]:
    with LiveRelay(sender_mode="reject", approved_sender_domains=APPROVED,
                   logins={"svc-app": PASSWORD}) as relay:
        relay.start([APP], [SVC])
        yield relay


@pytest.fixture
def endpoint(live, settings) -> list[str]:
    """The request's endpoint is the live relay; the options that reach it from here."""
    settings.RELAY_SENDER_MODE = "reject"
    settings.RELAY_APPROVED_SENDER_DOMAINS = list(APPROVED)
    settings.RELAY_REQUIRE_TLS = False
    RelayEndpoint.objects.create(name="live", host=RELAY_NAME, is_default=True,
                                 submission_port=live.submission_port,
                                 smtps_port=live.smtps_port)
    return ["--connect-to", live.postfix.host,
            "--cafile", str(live.secrets_dir / "cert.pem")]


def _arrived(live: LiveRelay, output: str, timeout: float = 20):
    """The message the sink got for the script run that printed ``output``."""
    subject = next(line.partition(": ")[2] for line in output.splitlines()
                   if line.startswith("Subject: "))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := live.received(subject):
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"{subject!r} did not arrive\n{live.logs()}")


@pytest.mark.postfix
def test_script_from_the_allowlisted_address_passes_and_the_mail_arrives(
        live, endpoint, team, requester, tmp_path):
    req = _server(team, requester)
    script = _write(req, tmp_path)
    # when the owners run it on the server (bound to its allowlisted 127.0.0.2)
    result = _run(script, "--to", REMOTE, "--source-address", "127.0.0.2", *endpoint)
    # then every step passes, TLS verified for the relay's name, and the sink has the mail
    assert result.returncode == 0, (result.stdout, result.stderr, live.logs())
    assert "STARTTLS, TLSv1." in result.stdout
    assert f"certificate verified for {RELAY_NAME}" in result.stdout
    assert "PASSED" in result.stdout
    got = _arrived(live, result.stdout)
    assert got.mail_from == "app@example.org"
    assert got.rcpt_tos == (REMOTE,)
    assert got.message["X-Relaydesk-Test"]


@pytest.mark.postfix
def test_script_from_an_address_not_allowlisted_explains_the_554(
        live, endpoint, team, requester, tmp_path):
    req = _server(team, requester)
    script = _write(req, tmp_path)
    # when it runs from an address the request does not list
    result = _run(script, "--to", REMOTE, "--source-address", "127.0.0.3", *endpoint)
    # then it exits 8 with the relay's 554 and which addresses the request lists
    assert result.returncode == relay_probe.EXIT["denied"], (result.stdout, result.stderr)
    assert "FAILED: The relay answered 554 5.7.1" in result.stdout
    assert "Relay access denied" in result.stdout
    assert (f"This host's address is not allowlisted: this connection came from "
            f"127.0.0.3, and request #{req.pk} lists 127.0.0.2.") in result.stdout
    assert "Remedy: Run the test on the server the request is for." in result.stdout


@pytest.mark.postfix
@pytest.mark.parametrize(
    ("sender", "reason"),
    [("app@example.net", "example.net is not an approved sender domain (approved: "
                         "example.org)"),
     ("stranger@example.org", "stranger@example.org is not declared on request #{pk} "
                              "(declared: app@example.org, app@example.net)")],
)
def test_unapproved_sender_in_reject_mode_explains_the_553(
        live, endpoint, team, requester, tmp_path, sender, reason):
    req = _server(team, requester)
    script = _write(req, tmp_path)
    result = _run(script, "--to", REMOTE, "--from", sender, "--source-address", "127.0.0.2",
                  *endpoint)
    # then the sender step warns, the relay's 553 is explained, exit 7, nothing is sent
    assert result.returncode == relay_probe.EXIT["sender"], (result.stdout, live.logs())
    assert "FAILED: The relay answered 553 5.7.1" in result.stdout
    assert f"Why: Unapproved domain or not declared: {reason.format(pk=req.pk)}." in (
        result.stdout)
    assert "the relay will refuse it (553)" in result.stdout


@pytest.mark.postfix
@pytest.mark.parametrize("tls_mode", ["starttls", "smtps"])
def test_account_with_the_right_password_passes(live, endpoint, team, requester, tmp_path,
                                                tls_mode):
    req = _account(team, requester, tls_mode)
    script = _write(req, tmp_path)
    # when the application host runs it with the password in the environment
    result = _run(script, "--to", REMOTE, *endpoint, env={"RELAY_PASSWORD": PASSWORD})
    # then it logs in over TLS of the request's mode and the mail arrives
    assert result.returncode == 0, (result.stdout, result.stderr, live.logs())
    assert "logged in as svc-app" in result.stdout
    assert ("implicit TLS" if tls_mode == "smtps" else "STARTTLS") in result.stdout
    assert PASSWORD not in result.stdout
    assert _arrived(live, result.stdout).mail_from == "svc@example.org"


@pytest.mark.postfix
def test_account_with_a_wrong_password_explains_the_535(live, endpoint, team, requester,
                                                        tmp_path):
    script = _write(_account(team, requester), tmp_path)
    result = _run(script, "--to", REMOTE, *endpoint, env={"RELAY_PASSWORD": "wrong"})
    assert result.returncode == relay_probe.EXIT["auth"], (result.stdout, live.logs())
    assert "FAILED: Login as svc-app refused: 535 5.7.8" in result.stdout
    assert "Wrong password, or the account is not (or no longer) in the relay group" in (
        result.stdout)
    # and without a password and no terminal it asks for the environment variable
    result = _run(script, "--to", REMOTE, "--no-prompt", *endpoint)
    assert result.returncode == relay_probe.EXIT["usage"], result.stdout
    assert "RELAY_PASSWORD is not set" in result.stdout


@pytest.mark.postfix
def test_manage_py_relay_test_runs_the_same_checks(live, endpoint, team, requester):
    req = _server(team, requester)
    out = io.StringIO()
    # from the allowlisted address: passes
    call_command("relay_test", str(req.pk), "--to", REMOTE, "--source-address", "127.0.0.2",
                 *endpoint, stdout=out)
    assert "PASSED" in out.getvalue()
    _arrived(live, out.getvalue())
    # from the relay host's own address: the explained 554 and the tool's exit status
    out = io.StringIO()
    with pytest.raises(CommandError) as refused:
        call_command("relay_test", str(req.pk), "--to", REMOTE, "--source-address",
                     "127.0.0.3", *endpoint, stdout=out)
    assert refused.value.returncode == relay_probe.EXIT["denied"]
    assert f"request #{req.pk} lists 127.0.0.2" in out.getvalue()


def test_messages_are_written_in_the_downloaders_language_and_broken_ones_left_out(
        team, requester, monkeypatch, tmp_path):
    # given a language whose translation of two messages keeps and breaks the placeholders
    table = {
        "PASSED: the relay took the test mail for {to}; look for it in that mailbox.":
            "BESTANDEN: {to}",
        "FAILED: {what}": "FEHLGESCHLAGEN: {was}",
    }
    monkeypatch.setattr(renderer, "gettext", lambda message: table.get(message, message))
    script = _write(_server(team, requester), tmp_path)
    # when the script is loaded
    translations = runpy.run_path(str(script), run_name="x")["TRANSLATIONS"]
    # then it carries the good translation and not the one that would fail at .format()
    assert translations == {
        "PASSED: the relay took the test mail for {to}; look for it in that mailbox.":
            "BESTANDEN: {to}"}


@pytest.mark.postfix
def test_a_non_ascii_address_is_explained_not_a_traceback(live, endpoint, team, requester,
                                                          tmp_path):
    script = _write(_server(team, requester), tmp_path)
    result = _run(script, "--to", "empfänger@bücher.example", "--source-address",
                  "127.0.0.2", *endpoint)
    assert result.returncode == relay_probe.EXIT["usage"], (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "punycode, xn--" in result.stdout
