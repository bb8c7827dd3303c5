"""The embedded default (SQLite in a file) takes concurrent writes without a 500.

The real application runs in pytest-django's live server: a threaded WSGI server in
this process, one thread and one database connection per HTTP request, on the test
database file. Threads fire their requests at the same moment (a barrier); approving
also runs the provisioning task (Celery is eager in the tests), so the config build's
writes race the other approvals too. Before ``transaction_mode=IMMEDIATE`` most of
these requests failed with "database is locked".
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token

from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.models import content_fingerprint
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory

pytestmark = pytest.mark.django_db(transaction=True)

PARALLEL = 8


def _call(base: str, method: str, path: str, token: str, body: dict[str, Any]) -> tuple[int, str]:
    req = urllib.request.Request(
        base + path, method=method, data=json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _fire_together(calls: list[tuple[str, str, str, dict[str, Any]]],
                   base: str) -> list[tuple[int, str]]:
    """Run every call in its own thread, released at the same instant."""
    barrier = threading.Barrier(len(calls))
    results: list[tuple[int, str] | None] = [None] * len(calls)

    def run(i: int, method: str, path: str, token: str, body: dict[str, Any]) -> None:
        barrier.wait()
        try:
            results[i] = _call(base, method, path, token, body)
        except Exception as exc:  # noqa: BLE001 - a dropped connection is a result too
            results[i] = (0, repr(exc))

    threads = [threading.Thread(target=run, args=(i, *c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None for r in results), "a request never returned"
    return results  # type: ignore[return-value]


def _checked(request: RelayRequest) -> RelayRequest:
    """Mark the passing verdict as computed on the request's current content."""
    RelayRequest.objects.filter(pk=request.pk).update(
        checked_fingerprint=content_fingerprint(request))
    return request


def _approvers(n: int) -> list[str]:
    return [Token.objects.create(user=ApproverFactory()).key for _ in range(n)]


def test_default_sqlite_takes_immediate_transactions_with_a_busy_timeout():
    if connection.vendor != "sqlite":
        pytest.skip("the SQLite options of the embedded default")
    # given the embedded default's connection
    options = connection.settings_dict["OPTIONS"]
    # then transactions take the write lock at BEGIN and wait for it, in WAL mode
    assert options["transaction_mode"] == "IMMEDIATE"
    assert options["timeout"] >= 5
    with connection.cursor() as cursor:
        assert cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cursor.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_eight_approvers_on_one_request_one_wins_the_others_get_409(
    live_server, team, requester
):
    # given one request awaiting approval and eight independent approvers
    req = _checked(RelayRequestFactory(team=team, created_by=requester,
                                       state=S.PENDING_APPROVAL, check_verdict="pass"))
    tokens = _approvers(PARALLEL)
    # when all of them approve at the same instant
    results = _fire_together(
        [("POST", f"/api/requests/{req.pk}/approve/", t, {"comment": "ok"}) for t in tokens],
        live_server.url,
    )
    # then there is no 500: exactly one approval, and seven "already decided" conflicts
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [409] * (PARALLEL - 1), results
    assert all("already decided" in body.lower() for status, body in results if status == 409)
    req.refresh_from_db()
    assert req.state in (S.PROVISIONING, S.ACTIVE)
    assert RequestEvent.objects.filter(request=req, type="transition",
                                       from_state=S.PENDING_APPROVAL).count() == 1


def test_approvals_and_edits_of_different_requests_at_once_all_succeed(
    live_server, team, requester
):
    # given eight requests awaiting approval, four drafts and their requester
    pending = [_checked(RelayRequestFactory(
        team=team, created_by=requester, fqdn=f"app{i}.example.org",
        state=S.PENDING_APPROVAL, check_verdict="pass")) for i in range(PARALLEL)]
    drafts = [RelayRequestFactory(team=team, created_by=requester) for _ in range(4)]
    tokens = _approvers(PARALLEL)
    owner = Token.objects.create(user=requester).key
    # when eight approvals and four edits hit the server at the same instant
    calls = [("POST", f"/api/requests/{r.pk}/approve/", t, {"comment": "ok"})
             for r, t in zip(pending, tokens, strict=True)]
    calls += [("PATCH", f"/api/requests/{d.pk}/", owner, {"purpose": f"edited {i}"})
              for i, d in enumerate(drafts)]
    results = _fire_together(calls, live_server.url)
    # then every one of them succeeded
    assert [status for status, _ in results] == [200] * len(calls), results
    approved = RelayRequest.objects.filter(pk__in=[r.pk for r in pending])
    assert {r.state for r in approved} <= {S.PROVISIONING, S.ACTIVE}
    assert sorted(RelayRequest.objects.filter(pk__in=[d.pk for d in drafts])
                  .values_list("purpose", flat=True)) == [f"edited {i}" for i in range(4)]
