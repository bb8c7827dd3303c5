"""Before approval, a server request's owners see what the relay will do with each sender
they declared (unchanged, rewritten to the SRS form, or refused with 553), on the request
page and as comment lines in the server snippets, by the relay's own rule
(``sender_policy.outcome``); and the snippets follow ``RELAY_REQUIRE_TLS``."""

from __future__ import annotations

import ast
import shutil
import subprocess

import pytest
from django.test import Client

from requests_app.models import ApprovedSenderDomain
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.snippets import sender_preview
from requests_app.snippets import snippets_for
from tests.conftest import require
from tests.factories import RelayRequestFactory

pytestmark = pytest.mark.django_db

SRS_DOMAIN = "srs.relay.example.org"
SRS_OTHER = f"SRS0=HHHH=TT=other.net=alerts@{SRS_DOMAIN}"


@pytest.fixture(autouse=True)
def _sender_settings(settings):
    settings.RELAY_APPROVED_SENDER_DOMAINS = ["example.org"]
    settings.RELAY_REWRITE_DOMAIN = SRS_DOMAIN
    settings.RELAY_HOST = "smtp-relay.example.org"


def server(team, requester, state=S.DRAFT, **fields) -> RelayRequest:
    """A server request declaring an approved sender, an unapproved one and a domain."""
    fields.setdefault("sender_addresses", ["noreply@example.org", "alerts@other.net"])
    fields.setdefault("sender_domains", ["example.org"])
    return RelayRequestFactory(team=team, created_by=requester, state=state, **fields)


def page_of(user, req) -> str:
    client = Client()
    client.force_login(user)
    return client.get(req.get_absolute_url()).content.decode()


def by_key(req) -> dict[str, str]:
    return {s.key: s.text for s in snippets_for(req)}


def test_a_draft_shows_unchanged_and_rewritten_senders_in_rewrite_mode(team, requester,
                                                                        settings):
    settings.RELAY_SENDER_MODE = "rewrite"
    # given a draft (never checked, never approved)
    req = server(team, requester)
    # when its owner opens it
    page = page_of(requester, req)
    # then each declared sender has its fate, and the rewritten one its SRS address
    assert "Senders on the relay" in page
    assert ('<tr class="sender-unchanged"><td><code>noreply@example.org</code></td>'
            in page)
    assert '<tr class="sender-rewritten"><td><code>alerts@other.net</code></td>' in page
    assert f"<code>{SRS_OTHER}</code>" in page
    assert "other.net is not an approved sender domain" in page
    assert f"rewritten to the SRS form under <code>{SRS_DOMAIN}</code>" in page
    assert "refused (553 5.7.1)" not in page


def test_reject_mode_shows_the_same_sender_refused(team, requester, settings):
    settings.RELAY_SENDER_MODE = "reject"
    req = server(team, requester, state=S.PENDING_APPROVAL, check_verdict="pass")
    page = page_of(requester, req)
    assert '<tr class="sender-refused"><td><code>alerts@other.net</code></td>' in page
    assert "refused (553 5.7.1)" in page and "SRS0=" not in page
    assert '<tr class="sender-unchanged"><td><code>noreply@example.org</code></td>' in page


def test_a_domain_approved_in_the_admin_counts_like_the_settings(team, requester,
                                                                  settings):
    settings.RELAY_SENDER_MODE = "reject"
    # given other.net approved in the admin list only
    ApprovedSenderDomain.objects.create(domain="other.net")
    req = server(team, requester)
    # then its sender passes unchanged, on the page and in the preview
    outcomes = {o.sender: o.verdict for o in sender_preview(req).outcomes}
    assert outcomes == {"noreply@example.org": "unchanged", "alerts@other.net": "unchanged",
                        "@example.org": "unchanged"}
    assert "other.net" in sender_preview(req).approved_domains
    assert "sender-refused" not in page_of(requester, req)


def test_accounts_get_no_sender_preview(team, requester):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE, account=True)
    assert sender_preview(req) is None
    assert "Senders on the relay" not in page_of(requester, req)
    assert all("What the relay does with the senders" not in t for t in by_key(req).values())


@pytest.mark.parametrize(("mode", "other_line"), [
    ("rewrite", f'"alerts@other.net": From and Return-Path become "{SRS_OTHER}"'),
    ("reject", '"alerts@other.net": refused by the relay (553 5.7.1)'),
])
def test_server_snippets_carry_the_preview_as_comments(team, requester, settings, mode,
                                                       other_line):
    settings.RELAY_SENDER_MODE = mode
    req = server(team, requester, state=S.ACTIVE, check_verdict="pass")
    snippets = by_key(req)
    for key, mark in (("postfix", "#"), ("django", "#"), ("smtplib", "#"),
                      ("nodemailer", "//")):
        text = snippets[key]
        assert f'{mark}   "noreply@example.org": sent unchanged' in text, key
        assert f"{mark}   {other_line}" in text, key
    # the Python snippets are still Python, and the preview added no code to them
    for key in ("django", "smtplib"):
        code_lines = [line for line in snippets[key].splitlines()
                      if line.strip() and not line.lstrip().startswith("#")]
        assert ast.dump(ast.parse(snippets[key])) == ast.dump(ast.parse("\n".join(code_lines)))


HOSTILE = "a\nimport os; os.system('id')#\u2028x@other.net"


def _calls(text: str) -> set[str]:
    """The dotted names of every function a Python snippet calls."""
    def dotted(node: ast.AST) -> str:
        if isinstance(node, ast.Attribute):
            return f"{dotted(node.value)}.{node.attr}"
        return node.id if isinstance(node, ast.Name) else type(node).__name__
    return {dotted(n.func) for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)}


def test_a_hostile_sender_stays_inside_its_comment(team, requester, settings, tmp_path):
    settings.RELAY_SENDER_MODE = "rewrite"
    # given a sender written past the validators with a newline and a U+2028
    req = server(team, requester, state=S.ACTIVE)
    RelayRequest.objects.filter(pk=req.pk).update(sender_addresses=[HOSTILE])
    req.refresh_from_db()
    snippets = by_key(req)
    # then every snippet stays ASCII and its preview lines stay comments
    for key, text in snippets.items():
        assert text.isascii(), key
        assert not any(line.startswith("import os;") for line in text.splitlines()), key
    assert "#   \"a\\x0aimport os; os.system('id')#\\u2028x@other.net\": From and " \
        "Return-Path become" in snippets["smtplib"]
    # Python calls nothing the injected text asks for
    assert "os.system" not in _calls(snippets["django"]) | _calls(snippets["smtplib"])
    # main.cf has only comments and "name = value" lines
    for line in snippets["postfix"].splitlines():
        assert not line or line.startswith("#") or " = " in line, line
    # and node reads the nodemailer snippet as valid JavaScript
    node = shutil.which("node")
    require(node is not None, "node is not installed")
    script = tmp_path / "snippet.js"
    script.write_text(snippets["nodemailer"])
    checked = subprocess.run([node, "--check", str(script)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(("require_tls", "level"), [(True, "encrypt"), (False, "may")])
def test_server_snippets_follow_relay_require_tls(team, requester, settings, require_tls,
                                                  level, tmp_path):
    settings.RELAY_REQUIRE_TLS = require_tls
    req = server(team, requester, state=S.ACTIVE)
    snippets = by_key(req)
    # then Postfix encrypts or may, and the program snippets insist on STARTTLS
    assert f"\nsmtp_tls_security_level = {level}\n" in snippets["postfix"]
    assert ("530 5.7.0" in snippets["postfix"]) is require_tls
    assert "EMAIL_USE_TLS = True" in snippets["django"]
    assert "smtp.starttls(context=context)" in snippets["smtplib"]
    assert "requireTLS: true," in snippets["nodemailer"]
    compile(snippets["django"], "django", "exec")
    compile(snippets["smtplib"], "smtplib", "exec")
    node = shutil.which("node")
    require(node is not None, "node is not installed")
    script = tmp_path / "snippet.js"
    script.write_text(snippets["nodemailer"])
    checked = subprocess.run([node, "--check", str(script)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr


def test_accounts_always_encrypt(team, requester, settings):
    settings.RELAY_REQUIRE_TLS = False
    req = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE, account=True)
    assert "smtp_tls_security_level = encrypt" in by_key(req)["postfix"]
