"""The check task in the workflow: results stored, state moved, DNS errors retried."""

from __future__ import annotations

import pytest

from requests_app import services
from requests_app.models import CheckResult
from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.tasks import run_request_checks
from tests.conftest import ZONES
from tests.factories import RelayRequestFactory
from tests.support.dnsserver import DnsTestServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def flaky_dns(settings):
    """A second server whose answers for app.example.org can be broken per test."""
    with DnsTestServer((ZONES / "default.zone").read_text()) as server:
        settings.DNS_NAMESERVERS = [server.nameserver]
        settings.DNS_LIFETIME_SECONDS = 0.5
        yield server


@pytest.fixture
def eager_retries():
    """Let eager ``apply`` re-run each retry in-line (it cannot while propagating)."""
    from onboarding.celery import app

    app.conf.task_eager_propagates = False
    yield
    app.conf.task_eager_propagates = True


def submit(req, user, capture):
    with capture(execute=True):
        services.request_act(request_id=req.pk, action="submit", by=user)
    req.refresh_from_db()
    return req


def test_passing_checks_go_to_approval(server_request, requester,
                                       django_capture_on_commit_callbacks):
    req = submit(server_request, requester, django_capture_on_commit_callbacks)
    assert req.state == S.PENDING_APPROVAL
    assert req.check_verdict == "pass"
    assert req.check_summary == {"pass": 8, "warn": 0, "fail": 0, "error": 0}


def test_failed_checks_return_to_requester_with_reasons(team, requester,
                                                        django_capture_on_commit_callbacks):
    req = RelayRequestFactory(team=team, created_by=requester, ipv4=["81.2.69.11"])
    req = submit(req, requester, django_capture_on_commit_callbacks)
    assert req.state == S.NEEDS_CHANGES
    failing = set(CheckResult.objects.filter(request=req, status="fail")
                  .values_list("check_id", "subject"))
    assert failing == {("forward", "app.example.org"), ("reverse", "81.2.69.11")}
    event = req.events.filter(parameters__action="checks_failed").get()
    assert "forward(app.example.org)" in event.comment
    assert Notification.objects.filter(request=req, kind="checks_failed").count() == 1


def test_results_are_upserted_on_rerun(server_request, requester, approver,
                                       django_capture_on_commit_callbacks):
    req = submit(server_request, requester, django_capture_on_commit_callbacks)
    first = set(CheckResult.objects.filter(request=req).values_list("pk", flat=True))
    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=req.pk, action="recheck", by=approver)
    req.refresh_from_db()
    assert req.state == S.PENDING_APPROVAL
    assert set(CheckResult.objects.filter(request=req).values_list("pk", flat=True)) == first


def test_servfail_is_error_and_reaches_approvers_after_retries(
    flaky_dns, settings, eager_retries, server_request, requester, approver,
    django_capture_on_commit_callbacks,
):
    # given a name whose server answers SERVFAIL, and two retries allowed
    flaky_dns.set_zone((ZONES / "default.zone").read_text(), servfail={"app.example.org"})
    settings.RELAY_CHECK_MAX_RETRIES = 2
    services.request_act(request_id=server_request.pk, action="submit", by=requester)
    # when the task runs (eager apply without propagation re-applies each retry in-line)
    with django_capture_on_commit_callbacks(execute=True):
        result = run_request_checks.apply(args=(server_request.pk,), throw=False)
    assert result.result == "error"
    req = RelayRequest.objects.get(pk=server_request.pk)
    # then every attempt was recorded, never pass/fail, and approvers were told
    assert req.check_attempts == 3
    assert req.state == S.PENDING_APPROVAL
    assert req.check_verdict == "error"
    forward = CheckResult.objects.get(request=req, check_id="forward")
    assert forward.status == "error"
    assert Notification.objects.filter(request=req, kind="checks_error").count() == 1


def test_dns_recovering_between_retries_gives_a_pass(flaky_dns, settings, server_request,
                                                     requester):
    # given the checks errored once and the request still waits in checking
    flaky_dns.set_zone((ZONES / "default.zone").read_text(), drop={"app.example.org"})
    settings.RELAY_CHECK_MAX_RETRIES = 3
    RelayRequest.objects.filter(pk=server_request.pk).update(state=S.CHECKING)
    result = run_request_checks.apply(args=(server_request.pk,), retries=3)
    server_request.refresh_from_db()
    assert result.result == "error"
    assert server_request.state == S.PENDING_APPROVAL  # last retry: approvers decide
    # when DNS answers again and an approver re-runs the checks
    flaky_dns.set_zone((ZONES / "default.zone").read_text(), drop=())
    RelayRequest.objects.filter(pk=server_request.pk).update(state=S.CHECKING)
    assert run_request_checks.apply(args=(server_request.pk,)).result == "pass"
    server_request.refresh_from_db()
    assert server_request.check_verdict == "pass"


def test_error_keeps_request_checking_while_retries_remain(flaky_dns, settings,
                                                           server_request):
    flaky_dns.set_zone((ZONES / "default.zone").read_text(), servfail={"app.example.org"})
    settings.RELAY_CHECK_MAX_RETRIES = 5
    RelayRequest.objects.filter(pk=server_request.pk).update(state=S.CHECKING)
    from celery.exceptions import Retry

    with pytest.raises(Retry):
        run_request_checks.apply(args=(server_request.pk,), throw=True).get()
    server_request.refresh_from_db()
    assert server_request.state == S.CHECKING
    assert server_request.check_attempts == 1
    assert server_request.check_verdict == "error"


def test_task_ignores_missing_or_moved_requests(server_request):
    assert run_request_checks.apply(args=(999999,)).result == "missing"
    assert run_request_checks.apply(args=(server_request.pk,)).result == "skipped:draft"
    assert not CheckResult.objects.exists()


def test_withdrawn_while_checking_discards_results(server_request, requester):
    RelayRequest.objects.filter(pk=server_request.pk).update(state=S.WITHDRAWN)
    assert services.request_record_checks(
        request_id=server_request.pk,
        checks=[{"id": "forward", "subject": "x", "status": "pass"}],
    ) is None
    assert not CheckResult.objects.exists()


def test_quick_check_endpoint(requester, client):
    client.force_login(requester)
    ok = client.post("/api/quick-check/", {"fqdn": "app.example.org", "ipv4": ["81.2.69.10"],
                                           "ipv6": "2a02:898:0:20::10"},
                     content_type="application/json")
    assert ok.status_code == 200
    assert ok.json()["verdict"] == "pass"
    partial = client.post("/api/quick-check/", {"fqdn": "app.example.org",
                                                "ipv4": ["81.2.69.10"]},
                          content_type="application/json")
    forward = next(c for c in partial.json()["checks"] if c["id"] == "forward")
    assert forward["status"] == "warn"  # the name has an address the request does not list
    assert {c["id"] for c in ok.json()["checks"]} == {"address_policy", "forward", "reverse"}
    bad = client.post("/api/quick-check/", {"fqdn": "bad..name"},
                      content_type="application/json")
    assert bad.status_code == 400
    assert "fqdn" in bad.json()["errors"]
