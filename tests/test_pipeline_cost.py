"""What the check pipeline costs the database: a submit, and recording a check run."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from requests_app.check_dispatch import CHECKS_TOKEN
from requests_app.models import CheckResult
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.models import WakeToken
from requests_app.tasks import check_waiting_requests
from tests.test_api import SERVER
from tests.test_api import client_for

pytestmark = pytest.mark.django_db

SUBMIT_QUERY_BUDGET = 20  # issue 15: a create-and-submit was 38-43 queries
TASK_QUERY_BUDGET = 20  # a check task: was 59 for one request (2-3 statements per result)


def _run_callbacks(callbacks):
    with CaptureQueriesContext(connection) as queries:
        for callback in callbacks:
            callback()
    return queries


def test_api_create_and_submit_stays_within_the_query_budget(
        requester, django_capture_on_commit_callbacks, monkeypatch):
    WakeToken.objects.update_or_create(name=CHECKS_TOKEN, defaults={"armed_at": None})
    client = client_for(requester)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with CaptureQueriesContext(connection) as queries:
            response = client.post("/api/requests/", {**SERVER, "submit": True},
                                   format="json")
    assert response.status_code == 201, response.content
    assert response.json()["state"] == "checking"
    # The trail is unchanged by the shortcut: created, then the submit transition.
    req = RelayRequest.objects.get(pk=response.json()["id"])
    assert list(req.events.values_list("type", "from_state", "to_state", "actor_name")) == [
        ("created", "", "draft", "alice"), ("transition", "draft", "checking", "alice")]
    assert (req.submitted_by, req.check_attempts) == (requester, 0)
    assert req.submitted_at is not None
    # The check task then runs and records the checks in a bounded number of queries.
    # After commit the submission arms the wake token (part of its cost) and sends
    # the wake-up message (recorded here, run below as the worker would).
    sent: list[tuple] = []
    monkeypatch.setattr(check_waiting_requests, "delay", lambda *args: sent.append(args))
    arm = _run_callbacks(callbacks).captured_queries
    assert sent == [()]
    assert all("waketoken" in q["sql"] for q in arm)
    submit_queries = queries.captured_queries + arm
    assert len(submit_queries) <= SUBMIT_QUERY_BUDGET, "\n".join(
        q["sql"][:160] for q in submit_queries)
    with CaptureQueriesContext(connection) as task:
        assert check_waiting_requests.apply().result == "checked:1"
    task_queries = task.captured_queries
    req.refresh_from_db()
    assert req.state == S.PENDING_APPROVAL
    assert CheckResult.objects.filter(request=req).count() == 8
    assert len(task_queries) <= TASK_QUERY_BUDGET


def test_invalid_create_and_submit_still_names_every_error(requester):
    response = client_for(requester).post(
        "/api/requests/", {**SERVER, "expected_daily_volume": 0, "submit": True},
        format="json")
    assert response.status_code == 400
    assert "expected_daily_volume" in response.json()
    assert not RelayRequest.objects.exists()
    assert not RequestEvent.objects.exists()


def test_a_rerun_keeps_result_rows_and_deletes_vanished_ones(
        server_request, requester, approver, django_capture_on_commit_callbacks):
    from requests_app import services

    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=server_request.pk, action="submit", by=requester)
    first = dict(CheckResult.objects.filter(request=server_request)
                 .values_list("check_id", "pk").order_by("pk"))
    stray = CheckResult.objects.create(request=server_request, check_id="gone",
                                       subject="x", status="fail")
    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=server_request.pk, action="recheck", by=approver)
    again = dict(CheckResult.objects.filter(request=server_request)
                 .values_list("check_id", "pk").order_by("pk"))
    assert again == first
    assert not CheckResult.objects.filter(pk=stray.pk).exists()


def test_a_check_task_costs_the_same_queries_whatever_the_batch(settings, team, requester):
    from requests_app.tasks import run_request_checks
    from tests.factories import RelayRequestFactory

    settings.RELAY_CHECK_BATCH_SIZE = 50

    def task_queries(n: int) -> int:
        reqs = [RelayRequestFactory(team=team, created_by=requester, state=S.CHECKING)
                for _ in range(n)]
        with CaptureQueriesContext(connection) as queries:
            run_request_checks.apply(args=(reqs[0].pk,))
        assert not RelayRequest.objects.filter(state=S.CHECKING).exists()
        return len(queries.captured_queries)

    assert task_queries(2) == task_queries(12) <= TASK_QUERY_BUDGET
