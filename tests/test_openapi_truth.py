"""The OpenAPI schema tells the truth: Schemathesis against a live server finds nothing.

Why a schema-driven tester and not more hand-written API tests: generated clients trust
the schema, so every status code, body shape, enum value and required field the server
can answer must be in it. Schemathesis reads ``/api/schema/``, generates requests from it
(valid and invalid ones, and sequences that follow the links from a created request to
its actions) and checks every answer against the schema. A hand-written test only checks
the answers somebody thought of.

The run is the CLI (``st run``), as a person would reproduce it (docs/api.md), against
pytest-django's ``live_server`` (a threaded Django server on loopback with the test
database), once with a requester's token and once with an approver's: the two roles get
different answers (403, 404, 409) from the same operations. Its JSON report is read
back: zero server errors, zero schema violations, zero undocumented status codes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rest_framework.authtoken.models import Token

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
# Bounded so both runs together stay well under 3 minutes on a 2-core machine.
MAX_EXAMPLES = int(os.environ.get("RELAYDESK_SCHEMATHESIS_EXAMPLES", "10"))
SEED = int(os.environ.get("RELAYDESK_SCHEMATHESIS_SEED", "14"))
CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
REPORTS = Path(__file__).resolve().parent.parent / "var" / "schemathesis"


def st_command() -> list[str]:
    """The Schemathesis CLI of this interpreter's environment."""
    st = Path(sys.executable).with_name("st")
    return [str(st)] if st.exists() else [sys.executable, "-m", "schemathesis.cli"]


def run_schemathesis(base_url: str, token: str, name: str) -> dict[str, Any]:
    """One CLI run with ``token``; returns its JSON report (and prints its output)."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    report = REPORTS / f"{name}.json"
    report.unlink(missing_ok=True)
    command = [
        *st_command(), "--config-file", str(CONFIG), "--no-color",
        "run", f"{base_url}/api/schema/",
        "--header", f"Authorization: Token {token}",
        # One connection per request: on a kept-alive connection the test server's
        # small writes wait for delayed ACKs (about 40 ms a request instead of 10).
        "--header", "Connection: close",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--report", "json", "--report-json-path", str(report),
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
    print(result.stdout[-20000:], result.stderr[-5000:], sep="\n")
    print(f"{name}: {time.monotonic() - started:.1f} s; reproduce: "
          f"{' '.join(c if 'Token' not in c else repr(c) for c in command)}")
    assert report.exists(), result.stderr
    return json.loads(report.read_text())


@pytest.fixture
def tokens(transactional_db: Any) -> dict[str, str]:
    """A requester and an approver of another team, and requests in the states the
    actions act on, so generated ids and the links reach real rows."""
    team = TeamFactory(slug="payments", name="Payments")
    requester = member_of(team, username="alice")
    approver = ApproverFactory(username="bob")
    for state in (RequestState.DRAFT, RequestState.PENDING_APPROVAL, RequestState.ACTIVE,
                  RequestState.NEEDS_CHANGES):
        RelayRequestFactory(team=team, created_by=requester, state=state)
    return {"requester": Token.objects.create(user=requester).key,
            "approver": Token.objects.create(user=approver).key}


@pytest.mark.timeout(400)
@pytest.mark.parametrize("role", ["requester", "approver"])
def test_schemathesis_finds_no_server_error_schema_violation_or_undocumented_status(
    live_server: Any, tokens: dict[str, str], role: str
) -> None:
    assert shutil.which(st_command()[0]) or st_command()[0] == sys.executable
    # 127.0.0.1, not "localhost": the server listens on IPv4 only, and each new
    # connection would try ::1 first.
    base_url = live_server.url.replace("//localhost:", "//127.0.0.1:")
    report = run_schemathesis(base_url, tokens[role], role)
    assert report["complete"], report
    assert report["operations"]["tested"] > 0
    assert report["errors"] == [], report["errors"]
    assert report["failures"] == [], json.dumps(report["failures"], indent=1)
