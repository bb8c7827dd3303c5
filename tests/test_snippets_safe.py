"""Snippets stay code the requester can trust, whatever the stored values are.

Hostile values are written past the validators (``queryset.update``, as data from
before a rule change would be), then every snippet is parsed as its language parses
it: Python with ``ast`` (only literals carry request values, no call but the
snippet's own), JavaScript with ``node --check`` and run against a stand-in nodemailer
that records what it was given, the shell line with ``shlex.split``.
"""

from __future__ import annotations

import ast
import json
import shlex
import shutil
import subprocess

import pytest
from django.conf import settings

from requests_app.models import RelayEndpoint
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.snippets import Snippet
from requests_app.snippets import js_string
from requests_app.snippets import python_string
from requests_app.snippets import snippets_for
from tests.conftest import require
from tests.factories import RelayRequestFactory

pytestmark = pytest.mark.django_db

# PostgreSQL cannot store NUL in text or jsonb, so no stored value can carry one there.
_NUL = "" if "postgresql" in settings.DATABASES["default"]["ENGINE"] else "\x00"
HOSTILE_SENDERS = [
    "\"+__import__('os').system('id')+\"@x.org",
    "'+__import__('os').system('id')+'@x.org",
    "a\\\"b\\@x.org",
    "line\nimport os; os.system('id')#@x.org",
    "${process.exit(3)}@x.org",
    "`id`$(id)@x.org",
    "</script><script>alert(1)</script>@x.org",
    f"\u2028\u2029{_NUL}\x7f\u202e@x.org",
    "grüße-😀@x.org",
]
HOSTILE_HOST = "relay.example.org\"; import os; os.system('id'); \""
HOSTILE_ACCOUNT = "svc\"); require('child_process').execSync('id'); (\""


def _hostile_request(team, requester, sender: str, *, tls_mode: str) -> RelayRequest:
    req = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE, account=True,
                              tls_mode=tls_mode)
    RelayRequest.objects.filter(pk=req.pk).update(sender_addresses=[sender],
                                                  account_name=HOSTILE_ACCOUNT)
    return RelayRequest.objects.get(pk=req.pk)


@pytest.fixture
def hostile_endpoint():
    row = RelayEndpoint.objects.create(name="main", host="relay.example.org", is_default=True)
    RelayEndpoint.objects.filter(pk=row.pk).update(host=HOSTILE_HOST)
    return row


def _by_key(snippets: list[Snippet]) -> dict[str, str]:
    return {s.key: s.text for s in snippets}


# Every node type a snippet may contain: statements, names, attribute access, calls and
# constants. No operator (BinOp is how "..."+code+"..." would run), no f-string, no
# lambda, no comprehension.
PY_NODES = (ast.Module, ast.Import, ast.ImportFrom, ast.alias, ast.Assign, ast.Expr,
            ast.With, ast.withitem, ast.Call, ast.keyword, ast.Attribute, ast.Subscript,
            ast.Name, ast.Constant, ast.Load, ast.Store)
PY_CALLS = {"EmailMessage", "msg.set_content", "ssl.create_default_context", "smtplib.SMTP",
            "smtplib.SMTP_SSL", "smtp.starttls", "smtp.login", "smtp.send_message"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return type(node).__name__


def _python_facts(text: str) -> tuple[set[str], set[str]]:
    """The calls and the string constants of a snippet; fails on any other construct."""
    tree = ast.parse(text)
    calls, strings = set(), set()
    for node in ast.walk(tree):
        assert isinstance(node, PY_NODES), (type(node).__name__, text)
        if isinstance(node, ast.Call):
            calls.add(_dotted(node.func))
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
    return calls, strings


@pytest.mark.parametrize("sender", HOSTILE_SENDERS)
@pytest.mark.parametrize("tls_mode", ["starttls", "smtps"])
def test_python_snippets_carry_hostile_values_only_as_literals(
    team, requester, hostile_endpoint, sender, tls_mode
):
    # given an entry whose stored values were never validated
    req = _hostile_request(team, requester, sender, tls_mode=tls_mode)
    # when its snippets are rendered
    snippets = _by_key(snippets_for(req))
    # then each Python snippet parses, calls only its own functions, and holds the
    # values as exactly the strings stored
    for key in ("django", "smtplib"):
        calls, strings = _python_facts(snippets[key])
        assert calls <= PY_CALLS, (key, calls)
        assert {sender, HOSTILE_HOST, HOSTILE_ACCOUNT} <= strings, (key, strings)
    assert snippets["smtplib"].isascii() and snippets["django"].isascii()


@pytest.mark.parametrize("sender", HOSTILE_SENDERS)
def test_nodemailer_snippet_parses_and_hands_nodemailer_exactly_the_values(
    team, requester, hostile_endpoint, sender, tmp_path
):
    node = shutil.which("node")
    require(node is not None, "node is not installed")
    # given an entry with hostile values and its rendered nodemailer snippet
    req = _hostile_request(team, requester, sender, tls_mode="starttls")
    text = _by_key(snippets_for(req))["nodemailer"]
    script = tmp_path / "snippet.js"
    script.write_text(text)
    # when node checks its syntax
    checked = subprocess.run([node, "--check", str(script)], capture_output=True, text=True,
                             timeout=60)
    # and runs it against a stand-in nodemailer that records what it receives
    harness = tmp_path / "harness.js"
    harness.write_text(
        "const vm = require('vm'); const fs = require('fs'); const seen = {};\n"
        "const nodemailer = {createTransport(options) { seen.transport = options;\n"
        "  return {sendMail(mail) { seen.mail = mail;\n"
        "    return {then(ok) { ok({messageId: 'm'}); }}; }}; }};\n"
        "const sandbox = {require: (name) => name === 'nodemailer' ? nodemailer : null,\n"
        "  process: {env: {RELAY_PASSWORD: 'pw'}}, console: {log() {}}};\n"
        f"vm.runInNewContext(fs.readFileSync({json.dumps(str(script))}, 'utf8'), sandbox);\n"
        "process.stdout.write(JSON.stringify(seen));\n"
    )
    ran = subprocess.run([node, str(harness)], capture_output=True, text=True, timeout=60)
    # then it is valid JavaScript that passes the stored strings through unchanged
    assert checked.returncode == 0, checked.stderr
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    assert seen["transport"]["host"] == HOSTILE_HOST
    assert seen["transport"]["auth"] == {"user": HOSTILE_ACCOUNT, "pass": "pw"}
    assert seen["mail"]["from"] == sender
    assert seen["mail"]["text"] == f"Hello through {HOSTILE_HOST}"
    assert text.isascii() and "</script" not in text.lower()


def test_shell_line_splits_into_the_intended_words(team, requester, hostile_endpoint):
    # given an entry and a relay host with quotes, spaces and a command substitution
    RelayEndpoint.objects.filter(pk=hostile_endpoint.pk).update(host="$(id)'`x` ;\nrm -rf")
    req = _hostile_request(team, requester, HOSTILE_SENDERS[0], tls_mode="smtps")
    # when the connectivity test is rendered
    text = _by_key(snippets_for(req))["test"]
    command = text.split("\n", 1)[1].rsplit("\n# then", 1)[0]
    # then the shell sees one argument holding exactly host:port, nothing to run
    assert shlex.split(command) == [
        "openssl", "s_client", "-connect", "$(id)'`x` ;\nrm -rf:465", "-quiet"]


def test_postfix_files_leave_out_values_postfix_cannot_take(team, requester,
                                                             hostile_endpoint):
    # given a relay host and an account name with spaces, quotes and newlines
    req = _hostile_request(team, requester, HOSTILE_SENDERS[3], tls_mode="starttls")
    # when the Postfix snippets are rendered
    snippets = _by_key(snippets_for(req))
    # then neither value reaches the files: each line is a comment or "name = value"
    for key in ("postfix", "sasl_passwd"):
        assert "import os" not in snippets[key] and "execSync" not in snippets[key]
        for line in snippets[key].splitlines():
            assert line.startswith("#") or " = " in line, (key, line)
    assert "relayhost not shown" in snippets["postfix"]
    assert "entry not shown" in snippets["sasl_passwd"]


def test_valid_values_render_as_before(team, requester, settings):
    # given a validated account on the default endpoint
    settings.RELAY_HOST = "smtp-relay.example.org"
    req = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE, account=True,
                              account_name="svc-ssl", tls_mode="smtps")
    # when its snippets are rendered
    snippets = _by_key(snippets_for(req))
    # then every file reads as a person would write it
    assert "relayhost = [smtp-relay.example.org]:465" in snippets["postfix"]
    assert "[smtp-relay.example.org]:465 svc-ssl:<password from the directory>" in \
        snippets["sasl_passwd"]
    assert 'EMAIL_HOST = "smtp-relay.example.org"' in snippets["django"]
    assert 'smtp.login("svc-ssl", os.environ["RELAY_PASSWORD"])' in snippets["smtplib"]
    assert 'host: "smtp-relay.example.org",' in snippets["nodemailer"]
    assert "openssl s_client -connect smtp-relay.example.org:465 -quiet" in snippets["test"]


LITERAL_VALUES = ["", "plain", "a\"b\\c", "\n\r\t\x00\x1f\x7f", "\u2028\u2029\u202e",
                  "😀 ü \U0010ffff", "</script>", "${x}`y`"]


def test_python_literals_evaluate_to_the_value():
    # when values are encoded for Python
    literals = [python_string(v) for v in LITERAL_VALUES]
    # then Python reads back exactly each value from an ASCII-only literal
    assert all(literal.isascii() for literal in literals)
    assert [ast.literal_eval(literal) for literal in literals] == LITERAL_VALUES


def test_javascript_literals_evaluate_to_the_value(tmp_path):
    node = shutil.which("node")
    require(node is not None, "node is not installed")
    # when values are encoded for JavaScript and node evaluates them
    literals = [js_string(v) for v in LITERAL_VALUES]
    script = tmp_path / "literals.js"
    script.write_text("process.stdout.write(JSON.stringify([" + ", ".join(literals) + "]));")
    ran = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60)
    # then node reads back exactly each value from an ASCII-only literal
    assert ran.returncode == 0, ran.stderr
    assert all(literal.isascii() and "<" not in literal for literal in literals)
    assert json.loads(ran.stdout) == LITERAL_VALUES
