"""Web pages: permissions, the approver queue (filters, constant queries), CSV export."""

from __future__ import annotations

import csv
import io

import pytest
from django.test import Client
from django.urls import reverse

from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.factories import member_of

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_login_required(server_request):
    response = Client().get(reverse("requests:detail", args=[server_request.pk]))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize(
    ("who", "status"),
    [
        pytest.param("requester", 200, id="own_team_case"),
        pytest.param("outsider", 404, id="other_team_case"),
        pytest.param("approver", 200, id="approver_case"),
        pytest.param("auditor", 200, id="auditor_case"),
    ],
)
def test_detail_visibility(who, status, server_request, requester, approver, auditor):
    users = {"requester": requester, "approver": approver, "auditor": auditor,
             "outsider": member_of(TeamFactory())}
    response = logged_in(users[who]).get(reverse("requests:detail", args=[server_request.pk]))
    assert response.status_code == status


def test_queue_forbidden_for_requesters(requester):
    assert logged_in(requester).get(reverse("requests:queue")).status_code == 403


def test_queue_shows_pending_oldest_first_with_check_summary(approver, team, requester):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    newer = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                                fqdn="new.example.org", check_verdict="warn",
                                check_summary={"pass": 5, "warn": 1, "fail": 0, "error": 0})
    older = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                                fqdn="old.example.org", check_verdict="pass",
                                check_summary={"pass": 6, "warn": 0, "fail": 0, "error": 0})
    RelayRequest.objects.filter(pk=newer.pk).update(submitted_at=now)
    RelayRequest.objects.filter(pk=older.pk).update(submitted_at=now - timedelta(days=3))
    RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE, fqdn="done.example.org")
    response = logged_in(approver).get(reverse("requests:queue"))
    rows = list(response.context["requests"])
    assert rows == [older, newer]
    html = response.content.decode()
    assert "3\xa0days" in html
    assert "1 warn" in html and "5 pass" in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("kind=account", ["svc-mailer"], id="kind_case"),
        pytest.param("team=blue", ["blue.example.org"], id="team_case"),
        pytest.param("state=needs_changes", ["fix.example.org"], id="state_case"),
        pytest.param("q=81.2.69.99", ["blue.example.org"], id="search_ip_case"),
        pytest.param("q=BLUE.example.org.", ["blue.example.org"], id="search_fqdn_case"),
        pytest.param("q=svc-mail", ["svc-mailer"], id="search_account_case"),
        pytest.param("verdict=fail", ["fix.example.org"], id="verdict_case"),
    ],
)
def test_queue_filters(query, expected, approver):
    red, blue = TeamFactory(slug="red"), TeamFactory(slug="blue")
    RelayRequestFactory(team=red, state=S.PENDING_APPROVAL, fqdn="red.example.org",
                        check_verdict="pass")
    RelayRequestFactory(team=blue, state=S.PENDING_APPROVAL, fqdn="blue.example.org",
                        ipv4=["81.2.69.99"], check_verdict="pass")
    RelayRequestFactory(team=red, state=S.NEEDS_CHANGES, fqdn="fix.example.org",
                        check_verdict="fail")
    RelayRequestFactory(team=red, state=S.PENDING_APPROVAL, account=True,
                        account_name="svc-mailer", check_verdict="pass")
    response = logged_in(approver).get(reverse("requests:queue") + "?" + query)
    assert [r.subject for r in response.context["requests"]] == expected


def test_queue_query_count_is_constant(approver, team, requester,
                                       django_assert_num_queries):
    client = logged_in(approver)
    RelayRequestFactory.create_batch(5, team=team, created_by=requester,
                                     state=S.PENDING_APPROVAL, check_verdict="pass")
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as five:
        assert client.get(reverse("requests:queue")).status_code == 200
    RelayRequestFactory.create_batch(45, team=team, created_by=requester,
                                     state=S.PENDING_APPROVAL, check_verdict="pass")
    with CaptureQueriesContext(connection) as fifty:
        response = client.get(reverse("requests:queue"))
    assert len(response.context["requests"]) == 50
    assert len(five.captured_queries) == len(fifty.captured_queries)
    assert len(fifty.captured_queries) <= 8


def test_create_form_errors_name_fields_and_save_nothing(requester):
    response = logged_in(requester).post(
        reverse("requests:create", args=["server"]),
        {"team": "payments", "fqdn": "bad..name", "ipv4": "300.1.1.1", "ipv6": "",
         "purpose": "x", "contact_email": "nope", "sender_domains": "example.org",
         "expected_daily_volume": "0"},
    )
    assert response.status_code == 400  # the form comes back with its errors: bad input
    errors = response.context["form"].errors
    assert "empty label" in errors["fqdn"][0]
    assert "not a valid IPv4" in errors["ipv4"][0]
    assert "valid e-mail" in errors["contact_email"][0]
    assert "positive integer" in errors["expected_daily_volume"][0]
    assert not RelayRequest.objects.exists()


def test_create_and_submit_through_form(requester, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = logged_in(requester).post(
            reverse("requests:create", args=["server"]),
            {"team": "payments", "fqdn": "app.example.org", "ipv4": "81.2.69.10",
             "ipv6": "2a02:898:0:20::10", "purpose": "Shop mails",
             "contact_email": "ops@example.org", "sender_domains": "example.org",
             "expected_daily_volume": "10", "submit": "1"},
            REMOTE_ADDR="10.1.2.3",
        )
    req = RelayRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == req.get_absolute_url()
    assert req.state == S.PENDING_APPROVAL
    first, second = RequestEvent.objects.filter(request=req)[:2]
    assert (first.type, first.source_ip) == ("created", "10.1.2.3")
    assert (second.parameters["action"], second.to_state) == ("submit", "checking")


def test_edit_in_needs_changes_and_resubmit(requester, team, django_capture_on_commit_callbacks):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.NEEDS_CHANGES,
                              ipv4=["81.2.69.11"])
    with django_capture_on_commit_callbacks(execute=True):
        response = logged_in(requester).post(
            reverse("requests:edit", args=[req.pk]),
            {"team": "payments", "fqdn": "app.example.org", "ipv4": "81.2.69.10",
             "ipv6": "2a02:898:0:20::10", "purpose": "Shop mails",
             "contact_email": "ops@example.org", "sender_domains": "example.org",
             "expected_daily_volume": "10", "submit": "1"},
        )
    assert response.status_code == 302
    req.refresh_from_db()
    assert req.ipv4 == ["81.2.69.10"]
    assert req.state == S.PENDING_APPROVAL


def test_action_view_reports_conflict_as_message(approver, team, requester):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.REJECTED)
    response = logged_in(approver).post(reverse("requests:approve", args=[req.pk]),
                                        {"comment": ""}, follow=True)
    messages = [str(m) for m in response.context["messages"]]
    assert any("cannot be approved" in m for m in messages), messages
    req.refresh_from_db()
    assert req.state == S.REJECTED


def test_detail_shows_only_allowed_actions(approver, requester, team):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    approver_actions = [a.name for a in logged_in(approver).get(
        req.get_absolute_url()).context["actions"]]
    requester_actions = [a.name for a in logged_in(requester).get(
        req.get_absolute_url()).context["actions"]]
    assert sorted(approver_actions) == ["approve", "recheck", "reject", "request_changes"]
    assert requester_actions == ["withdraw"]


def test_audit_csv_export(approver, auditor, requester, team):
    from requests_app import services

    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    services.request_act(request_id=req.pk, action="reject", by=approver,
                         comment="=HYPERLINK(evil)", source_ip="192.0.2.9")
    for user in (approver, auditor):
        response = logged_in(user).get(reverse("requests:audit_csv"))
        assert response.status_code == 200
        rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
        assert rows[0][:3] == ["time", "request", "team"]
        last = rows[-2]  # rows[-1] is the row-count trailer
        assert last[1:9] == [str(req.pk), "payments", "app.example.org", "transition", "bob",
                             "192.0.2.9", "pending_approval", "rejected"]
        assert last[9] == "'=HYPERLINK(evil)"  # formula neutralised
    assert logged_in(requester).get(reverse("requests:audit_csv")).status_code == 403


def test_queue_drifted_filter(approver):
    from django.utils import timezone

    RelayRequestFactory(state=S.ACTIVE, fqdn="fine.example.org")
    drifted = RelayRequestFactory(state=S.ACTIVE, fqdn="moved.example.org")
    RelayRequest.objects.filter(pk=drifted.pk).update(drifted_at=timezone.now())
    response = logged_in(approver).get(reverse("requests:queue") + "?drifted=on")
    assert [r.subject for r in response.context["requests"]] == ["moved.example.org"]
    assert 'name="drifted"' in response.content.decode()
