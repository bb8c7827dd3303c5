"""The OpenAPI schema tells the truth: Schemathesis against a live server finds nothing.

Why a schema-driven tester and not more hand-written API tests: generated clients trust
the schema, so every status code, body shape, enum value and required field the server
can answer must be in it. Schemathesis reads ``/api/schema/``, generates requests from it
(boundary cases of every parameter, random valid and invalid bodies, and stateful
sequences that follow the links it infers, e.g. create a request, then act on its id)
and checks every answer against the schema. A hand-written test only checks the answers
somebody thought of.

The run is the CLI (``st run``), as a person reproduces it (docs/api.md), against
pytest-django's ``live_server`` (a threaded Django server on loopback with the test
database and the test DNS server), with a requester's token and with an approver's at
the same time: the two roles get different answers (403, 404, 409) from the same
operations, and one's writes change what the other sees. Each run's JSON report is read
back: zero server errors, zero schema violations, zero undocumented status codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from requests_app.models import RequestState
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.factories import member_of

# The checks whose failures the issue counts: a 5xx, an answer that does not match its
# documented schema (body, content type, headers), a status code the schema does not name.
CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
)
# Bounded so the whole test stays under 3 minutes on a 2-core machine: the coverage
# phase (every boundary case the schema defines) is fixed; these bound the others.
MAX_EXAMPLES = int(os.environ.get("RELAYDESK_SCHEMATHESIS_EXAMPLES", "5"))
STATEFUL_SCENARIOS = int(os.environ.get("RELAYDESK_SCHEMATHESIS_SCENARIOS", "15"))
SEED = int(os.environ.get("RELAYDESK_SCHEMATHESIS_SEED", "14"))
TIMEOUT = 240
CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
REPORTS = Path(__file__).resolve().parent.parent / "var" / "schemathesis"

# body or path value -> (dictionary, probability of taking a value from it)
BINDINGS = {
    "path.id": ("request_ids", 0.7),
    "body.team": ("teams", 0.9),
    "body.kind": ("kinds", 0.9),
    "body.fqdn": ("fqdns", 0.9),
    "body.ipv4[*]": ("ipv4", 0.9),
    "body.ipv6[*]": ("ipv6", 0.9),
    "body.sender_domains[*]": ("domains", 0.9),
    "body.sender_addresses[*]": ("senders", 0.9),
    "body.contact_email": ("emails", 0.9),
    "body.account_name": ("accounts", 0.7),
    "body.purpose": ("texts", 0.8),
    "body.use_case": ("texts", 0.8),
    "body.chat_channel": ("texts", 0.5),
    "body.dkim_selector": ("selectors", 0.8),
}


def st_command() -> list[str]:
    """The Schemathesis CLI of this interpreter's environment."""
    st = Path(sys.executable).with_name("st")
    return [str(st)] if st.exists() else [sys.executable, "-m", "schemathesis.cli"]


def write_config(name: str, request_ids: list[int], team: str) -> Path:
    """tests/schemathesis.toml plus this run's bounds, ids and team (ids differ per run)."""
    bindings = "\n".join(f'"{key}" = {{ dictionary = "{dictionary}", probability = {p} }}'
                         for key, (dictionary, p) in BINDINGS.items())
    config = REPORTS / f"{name}.toml"
    config.write_text(
        CONFIG.read_text()
        + f"\n[generation]\nmax-examples = {MAX_EXAMPLES}\n"
        + f"\n[phases.stateful.generation]\nmax-examples = {STATEFUL_SCENARIOS}\n"
        + f"\n[dictionaries.request_ids]\nvalues = {json.dumps(request_ids)}\n"
        + f"[dictionaries.teams]\nvalues = {json.dumps([team])}\n"
        + f"\n[parameters]\n{bindings}\n"
    )
    return config


def st_run(base_url: str, token: str, name: str, config: Path) -> list[str]:
    """The command line of one run with ``token``; its JSON report goes to REPORTS."""
    return [
        *st_command(), "--config-file", str(config), "--no-color",
        "run", f"{base_url}/api/schema/",
        "--header", f"Authorization: Token {token}",
        # One connection per request: on a kept-alive connection the test server's
        # small writes wait for delayed ACKs (about 40 ms a request instead of 10).
        "--header", "Connection: close",
        "--checks", ",".join(CHECKS),
        "--seed", str(SEED),
        "--workers", "1",
        "--report", "json", "--report-json-path", str(REPORTS / f"{name}.json"),
    ]


@pytest.fixture
def world(transactional_db: Any) -> dict[str, Any]:
    """A requester and an approver of another team, and requests in the states the
    actions act on, so generated ids reach real rows (the dictionary ``request_ids``)."""
    team = TeamFactory(slug="payments", name="Payments")
    requester = member_of(team, username="alice")
    approver = ApproverFactory(username="bob")
    ids = [RelayRequestFactory(team=team, created_by=requester, state=state).pk
           for state in (RequestState.DRAFT, RequestState.PENDING_APPROVAL,
                         RequestState.ACTIVE, RequestState.NEEDS_CHANGES,
                         RequestState.PROVISIONING_FAILED)]
    return {"team": team.slug, "ids": ids,
            "tokens": {"requester": Token.objects.create(user=requester).key,
                       "approver": Token.objects.create(user=approver).key}}


@pytest.mark.timeout(TIMEOUT + 60)
def test_schemathesis_finds_no_server_error_schema_violation_or_undocumented_status(
    live_server: Any, world: dict[str, Any]
) -> None:
    # 127.0.0.1, not "localhost": the server listens on IPv4 only, and each new
    # connection would try ::1 first.
    base_url = live_server.url.replace("//localhost:", "//127.0.0.1:")
    REPORTS.mkdir(parents=True, exist_ok=True)
    runs: dict[str, tuple[list[str], subprocess.Popen[str]]] = {}
    started = time.monotonic()
    for role, token in world["tokens"].items():
        (REPORTS / f"{role}.json").unlink(missing_ok=True)
        command = st_run(base_url, token, role, write_config(role, world["ids"], world["team"]))
        runs[role] = command, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
    reports: dict[str, dict[str, Any]] = {}
    for role, (command, process) in runs.items():
        output, _ = process.communicate(timeout=TIMEOUT)
        print(f"===== {role} ({time.monotonic() - started:.0f} s) =====\n{output[-30000:]}")
        print("reproduce (with this test's server and database):", " ".join(command))
        report = REPORTS / f"{role}.json"
        assert report.exists(), output[-3000:]
        reports[role] = json.loads(report.read_text())

    for role, report in reports.items():
        assert report["complete"], (role, report["stop_reason"])
        assert report["operations"]["tested"] == report["operations"]["total"] > 20, role
        assert report["errors"] == [], (role, report["errors"])
        assert report["failures"] == [], (role, json.dumps(report["failures"], indent=1))
        assert report["exit_code"] == 0, role


def test_schema_names_every_error_answer_an_action_gives(transactional_db: Any) -> None:
    """The rules of api/schema.py, read back: an action on one request may answer 400,
    401, 403, 404, 409 and 415 with the documented bodies; a required comment is
    required; the audit trail is an array; the create field is ``team``."""
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    reject = schema["paths"]["/api/requests/{id}/reject/"]["post"]
    assert {"200", "400", "401", "403", "404", "409", "415"} <= set(reject["responses"])
    assert reject["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    body = reject["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema["components"]["schemas"][body.rsplit("/", 1)[1]]["required"] == ["comment"]
    submit = schema["paths"]["/api/requests/{id}/submit/"]["post"]
    body = submit["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert "required" not in schema["components"]["schemas"][body.rsplit("/", 1)[1]]
    events = schema["paths"]["/api/requests/{id}/events/"]["get"]
    assert events["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "array"
    create = schema["components"]["schemas"]["RelayRequestRequest"]
    assert "team" in create["required"] and "team_slug" not in create["properties"]
    listing = schema["paths"]["/api/requests/"]["get"]
    assert {"state", "kind", "team", "drifted", "production_pending"} <= {
        p["name"] for p in listing["parameters"]}


def test_api_docs_page_serves_swagger_ui_from_our_static_files(transactional_db: Any) -> None:
    response = APIClient().get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "/api/schema/" in page
    assert "//cdn" not in page and "https://" not in page
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")


def test_an_unknown_api_path_is_a_json_404(transactional_db: Any) -> None:
    response = APIClient().get("/api/requests/not-a-number/events/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}


def test_every_page_header_links_to_the_api_docs(transactional_db: Any) -> None:
    client = Client()
    client.force_login(member_of(TeamFactory(slug="payments"), username="alice"))
    page = client.get("/requests/").content.decode()
    assert 'href="/api/docs/"' in page
