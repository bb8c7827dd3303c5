"""Every configuration snippet is a program its language accepts, for every variant.

The snippets are copied into settings files and scripts as they are: one that does not
compile (a missing import, ``await`` at the top of a CommonJS file) fails the owner at
the worst moment. So for both kinds, both TLS modes, ``RELAY_REQUIRE_TLS`` on and off
and both credential modes, each Python snippet is compiled, the Django one is executed
(it must import what it uses), and each JavaScript one passes ``node --check`` and runs
as a CommonJS file against a stand-in ``nodemailer`` module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from requests_app.models import RequestState as S
from requests_app.snippets import ISSUED_PASSWORD_PLACEHOLDER
from requests_app.snippets import PASSWORD_PLACEHOLDER
from requests_app.snippets import comment_text
from requests_app.snippets import snippets_for
from tests.conftest import require
from tests.factories import RelayRequestFactory

pytestmark = pytest.mark.django_db

VARIANTS = [
    pytest.param((kind, tls, require_tls, mode),
                 id=f"{kind}-{tls}-tls{int(require_tls)}-{mode}")
    for kind in ("server", "account")
    for tls in ("starttls", "smtps")
    for require_tls in (False, True)
    for mode in ("directory", "issue")
]

# A stand-in for the real module: records what the snippet hands it, resolves sendMail.
STUB_NODEMAILER = """
module.exports = {
  createTransport(options) {
    return {
      sendMail(mail) {
        process.stdout.write(JSON.stringify({transport: options, mail}) + "\\n");
        return Promise.resolve({messageId: "<stub@example.org>"});
      },
    };
  },
};
"""


def _request(team, requester, kind: str, tls: str):
    if kind == "account":
        return RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                                   account=True, account_name="svc-invoices", tls_mode=tls)
    return RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE)


@pytest.fixture
def snippets(request, settings, team, requester):
    kind, tls, require_tls, mode = request.param
    settings.RELAY_HOST = "smtp-relay.example.org"
    settings.RELAY_REQUIRE_TLS = require_tls
    settings.RELAY_ACCOUNT_CREDENTIALS = mode
    settings.DIRECTORY_PASSWORD_HELP = "Use the self-service page\nhttps://id.example.org/pw"
    req = _request(team, requester, kind, tls)
    return kind, mode, {s.key: s for s in snippets_for(req)}


@pytest.mark.parametrize("snippets", VARIANTS, indirect=True)
def test_python_snippets_compile_and_django_settings_execute(snippets):
    kind, _mode, by_key = snippets
    for key in ("django", "smtplib"):
        # compiles as a module (syntax, no top-level return/await)
        compile(by_key[key].text, f"<{key}>", "exec")
    # the Django settings run on their own: whatever they read, they import
    namespace: dict[str, object] = {}
    env = {"RELAY_PASSWORD": "not-a-real-password"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        exec(compile(by_key["django"].text, "<django>", "exec"), namespace)  # noqa: S102
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert namespace["EMAIL_HOST"] == "smtp-relay.example.org"
    if kind == "account":
        assert namespace["EMAIL_HOST_USER"] == "svc-invoices"
        assert namespace["EMAIL_HOST_PASSWORD"] == "not-a-real-password"
    else:
        assert "EMAIL_HOST_USER" not in namespace


@pytest.mark.parametrize("snippets", VARIANTS, indirect=True)
def test_nodemailer_snippet_is_commonjs_that_node_checks_and_runs(snippets, tmp_path):
    node = shutil.which("node")
    require(node is not None, "node is not installed")
    kind, _mode, by_key = snippets
    script = tmp_path / "send.js"
    script.write_text(by_key["nodemailer"].text)
    stub = tmp_path / "node_modules" / "nodemailer"
    stub.mkdir(parents=True)
    (stub / "index.js").write_text(STUB_NODEMAILER)

    checked = subprocess.run([node, "--check", str(script)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr
    # run as a CommonJS file (a top-level await after require would be a SyntaxError)
    ran = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env={"PATH": os.environ.get("PATH", ""),
                                            "RELAY_PASSWORD": "pw"})
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout.splitlines()[0])
    assert ran.stdout.splitlines()[1] == "sent <stub@example.org>"
    assert seen["transport"]["host"] == "smtp-relay.example.org"
    if kind == "account":
        assert seen["transport"]["auth"] == {"user": "svc-invoices", "pass": "pw"}
    else:
        assert "auth" not in seen["transport"]


@pytest.mark.parametrize("snippets", [v for v in VARIANTS if v.values[0][0] == "account"],
                         indirect=True)
def test_account_snippets_name_the_account_and_say_where_the_password_comes_from(snippets):
    _kind, mode, by_key = snippets
    if mode == "issue":
        where = "Password: from the one-time link in your activation mail"
        placeholder = ISSUED_PASSWORD_PLACEHOLDER
    else:
        # the operator's help text, flattened onto one comment line
        where = ("Password: set in the directory: Use the self-service page "
                 "https://id.example.org/pw")
        placeholder = PASSWORD_PLACEHOLDER
    for key in ("sasl_passwd", "django", "smtplib", "nodemailer"):
        assert where in by_key[key].text, key
        assert "svc-invoices" in by_key[key].text, key
    assert f"svc-invoices:{placeholder}" in by_key["sasl_passwd"].text


def test_comment_text_cannot_end_a_comment():
    # a help text with line breaks and JavaScript line terminators stays on one line
    text = comment_text("a\nb\r\nc\u2028d\u2029e \u00e9")
    assert "\n" not in text and "\r" not in text and text.isascii()
    assert text.startswith("a b c")

