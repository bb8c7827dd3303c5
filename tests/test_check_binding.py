"""Checks are bound to the content they checked; fail outranks error; one retry chain.

The exploit these tests close: after failed checks a requester PATCHes an unchecked
address into the request, and an approver overrides and approves the old verdict into
the relay config. Every DNS answer comes from the test server on loopback.
"""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import pytest
from celery.exceptions import Retry
from django.utils import timezone

from requests_app import services
from requests_app.checks import CheckConfig
from requests_app.checks import CheckSpec
from requests_app.checks import run_checks_sync
from requests_app.checks import worst_status
from requests_app.dns import reverse_name
from requests_app.exceptions import ActionConflict
from requests_app.models import CheckResult
from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.models import checks_current
from requests_app.models import content_fingerprint
from requests_app.tasks import run_request_checks
from requests_app.tasks import sweep_pending_work
from tests.conftest import ZONES
from tests.factories import RelayRequestFactory
from tests.support.dnsserver import DnsTestServer
from tests.test_api import client_for
from tests.test_check_server import run_cli

pytestmark = pytest.mark.django_db

DEFAULT_ZONE = (ZONES / "default.zone").read_text()


@pytest.fixture
def recording_dns(settings):
    """A server that records every question it is asked (to prove what was not)."""
    with DnsTestServer(DEFAULT_ZONE, record=True) as server:
        settings.DNS_NAMESERVERS = [server.nameserver]
        yield server


@pytest.fixture
def servfail_dns(settings):
    """The request's own name answers SERVFAIL: the forward check can only be ``error``."""
    with DnsTestServer(DEFAULT_ZONE, servfail={"app.example.org"}) as server:
        settings.DNS_NAMESERVERS = [server.nameserver]
        settings.DNS_LIFETIME_SECONDS = 1.0
        yield server


@pytest.fixture
def eager_retries():
    """Let eager ``apply`` run a retry in-line instead of raising it to the caller."""
    from onboarding.celery import app

    app.conf.task_eager_propagates = False
    yield
    app.conf.task_eager_propagates = True


def submitted(req, user, capture):
    """Submit and let the check task run (eagerly, as the worker would)."""
    with capture(execute=True):
        services.request_act(request_id=req.pk, action="submit", by=user)
    req.refresh_from_db()
    return req


def trail(req) -> list[tuple[str, str]]:
    return list(RequestEvent.objects.filter(request=req).values_list("type", "to_state"))


# --- the fingerprint ---------------------------------------------------------------------


def test_fingerprint_covers_every_checked_field_and_nothing_else(team, requester):
    # given
    req = RelayRequestFactory.build(team=team, created_by=requester, dkim_selector="s1")
    base = content_fingerprint(req)
    # when one field at a time changes
    changed = {
        "kind": "account", "fqdn": "other.example.org", "ipv4": ["81.2.69.77"],
        "ipv6": [], "sender_domains": ["example.com"],
        "sender_addresses": ["a@example.org"], "dkim_selector": "s2",
    }
    prints = {}
    for field, value in changed.items():
        copy = RelayRequestFactory.build(team=team, created_by=requester, dkim_selector="s1")
        setattr(copy, field, value)
        prints[field] = content_fingerprint(copy)
    untouched = RelayRequestFactory.build(team=team, created_by=requester, dkim_selector="s1",
                                          purpose="Something else", contact_email="x@y.org")
    # then each checked field moves the sha256, the others do not, and it is stable
    assert len(base) == 64 and int(base, 16) >= 0
    assert all(p != base for p in prints.values()), prints
    assert len(set(prints.values())) == len(prints)
    assert content_fingerprint(untouched) == base
    assert content_fingerprint(req) == base


def test_the_task_stores_the_fingerprint_of_what_it_checked(server_request, requester,
                                                            django_capture_on_commit_callbacks):
    # when
    req = submitted(server_request, requester, django_capture_on_commit_callbacks)
    # then
    assert req.state == S.PENDING_APPROVAL
    assert req.checked_fingerprint == content_fingerprint(req)
    assert checks_current(req) and not req.checks_stale


# --- the exploit: edit after failed checks, then override and approve ----------------------


def test_patch_after_failed_checks_cannot_be_overridden_or_approved(
    client, team, requester, approver, django_capture_on_commit_callbacks
):
    # given a request whose checks failed (81.2.69.11 is not app.example.org's address)
    req = RelayRequestFactory(team=team, created_by=requester, ipv4=["81.2.69.11"])
    req = submitted(req, requester, django_capture_on_commit_callbacks)
    assert (req.state, req.check_verdict) == (S.NEEDS_CHANGES, "fail")
    old_fingerprint = req.checked_fingerprint
    # when the requester swaps in an address no check has seen
    patched = client_for(requester).patch(f"/api/requests/{req.pk}/",
                                          {"ipv4": ["81.2.69.99"]}, format="json")
    # then the old verdict, its results and fingerprint are gone, and the API says stale
    assert patched.status_code == 200, patched.content
    body = patched.json()
    assert (body["check_verdict"], body["check_summary"], body["checks"]) == ("", {}, [])
    assert body["checks_stale"] is True
    req.refresh_from_db()
    assert req.checked_fingerprint == "" and not CheckResult.objects.filter(request=req)
    edit = RequestEvent.objects.get(request=req, type="updated")
    assert edit.parameters["changes"]["ipv4"] == [["81.2.69.11"], ["81.2.69.99"]]
    assert edit.parameters["discarded_checks"]["verdict"] == "fail"
    assert edit.parameters["discarded_checks"]["fingerprint"] == old_fingerprint
    before = trail(req)
    # when an approver overrides the old failure and approves
    approver_api = client_for(approver)
    override = approver_api.post(f"/api/requests/{req.pk}/override_checks/",
                                 {"comment": "PTR is the provider's; fine"}, format="json")
    approve = approver_api.post(f"/api/requests/{req.pk}/approve/", {"comment": "ok"},
                                format="json")
    # then both are refused with the reason, and nothing happened
    assert override.status_code == 409, override.content
    assert "stale" in override.json()["detail"] and "re-run" in override.json()["detail"]
    assert approve.status_code == 409, approve.content
    req.refresh_from_db()
    assert req.state == S.NEEDS_CHANGES
    assert req.override_reason == "" and req.decided_by is None
    assert trail(req) == before
    assert not Notification.objects.filter(request=req, kind__in=("approved", "overridden"))
    # and the approver's page says why, offering neither action
    client.force_login(approver)
    page = client.get(f"/requests/{req.pk}/").content.decode()
    assert "Stale results" in page and "Its results were discarded" in page
    assert "action-override_checks" not in page and "action-approve" not in page


def test_a_verdict_of_other_content_blocks_approve_and_override_until_rechecked(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given verdicts computed on content the request no longer has
    passed = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                                 check_verdict="pass", checks_current=False,
                                 checks_ran_at=timezone.now())
    failed = RelayRequestFactory(team=team, created_by=requester, fqdn="other.example.org",
                                 state=S.PENDING_APPROVAL, check_verdict="fail",
                                 checked_fingerprint="0" * 64)
    # when approving and overriding them
    for req, action in ((passed, "approve"), (failed, "override_checks")):
        with pytest.raises(ActionConflict, match="stale.*re-run"):
            services.request_act(request_id=req.pk, action=action, by=approver,
                                 comment="looks fine")
    # then nothing moved
    assert RelayRequest.objects.get(pk=passed.pk).state == S.PENDING_APPROVAL
    assert RelayRequest.objects.get(pk=failed.pk).override_reason == ""
    assert not RequestEvent.objects.filter(request__in=[passed, failed])
    # when an approver re-runs the checks on the current content
    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=passed.pk, action="recheck", by=approver)
    # then the fresh run can be approved
    services.request_act(request_id=passed.pk, action="approve", by=approver)
    assert RelayRequest.objects.get(pk=passed.pk).state in (S.PROVISIONING, S.ACTIVE)


def test_editing_a_checked_field_discards_the_verdict_other_fields_keep_it(team, requester):
    # given a request back with its requester after checks ran on its content
    req = RelayRequestFactory(team=team, created_by=requester, state=S.NEEDS_CHANGES,
                              check_verdict="fail", checks_ran_at=timezone.now(),
                              check_summary={"pass": 7, "warn": 0, "fail": 1, "error": 0},
                              override_reason="earlier override")
    CheckResult.objects.create(request=req, check_id="reverse", subject="81.2.69.10",
                               status="fail", detail="no PTR")
    # when only the purpose changes
    services.request_update(request_id=req.pk, by=requester, data={"purpose": "Invoices"})
    req.refresh_from_db()
    # then the verdict still belongs to the content
    assert (req.check_verdict, checks_current(req), req.checks.count()) == ("fail", True, 1)
    # when a sender domain changes
    services.request_update(request_id=req.pk, by=requester,
                            data={"sender_domains": ["example.org", "shop.example.org"]})
    req.refresh_from_db()
    # then verdict, summary, fingerprint, override and results are discarded, and audited
    assert (req.check_verdict, req.check_summary, req.checked_fingerprint) == ("", {}, "")
    assert req.override_reason == "" and not req.checks.exists()
    assert req.checks_stale and req.state == S.NEEDS_CHANGES
    edits = list(RequestEvent.objects.filter(request=req, type="updated").order_by("pk"))
    assert "discarded_checks" not in edits[0].parameters
    assert edits[1].parameters["discarded_checks"]["results"] == 1
    assert edits[1].parameters["discarded_checks"]["override_reason"] == "earlier override"
    assert "discarded" in edits[1].comment


def test_approver_page_and_queue_show_stale_results(client, team, requester, approver):
    # given a request awaiting approval whose results are of earlier content
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass", checks_current=False,
                              checks_ran_at=timezone.now(),
                              check_summary={"pass": 8, "warn": 0, "fail": 0, "error": 0})
    CheckResult.objects.create(request=req, check_id="forward", subject="app.example.org",
                               status="pass", detail="ok")
    fresh = RelayRequestFactory(team=team, created_by=requester, fqdn="fresh.example.org",
                                state=S.PENDING_APPROVAL, check_verdict="pass",
                                checks_ran_at=timezone.now())
    client.force_login(approver)
    # when the approver opens it
    page = client.get(f"/requests/{req.pk}/").content.decode()
    fresh_page = client.get(f"/requests/{fresh.pk}/").content.decode()
    queue = client.get("/requests/queue/").content.decode()
    # then the page says the results are stale and offers a re-run, not approval
    assert "Stale results" in page and 'class="verdict verdict-stale"' in page
    assert "action-recheck" in page and "action-approve" not in page
    assert "Stale results" not in fresh_page and "action-approve" in fresh_page
    assert queue.count("verdict-stale") == 1
    api = client_for(approver)
    assert api.get(f"/api/requests/{req.pk}/").json()["checks_stale"] is True
    assert api.get(f"/api/requests/{fresh.pk}/").json()["checks_stale"] is False


def test_results_of_content_edited_while_checking_are_discarded(team, requester):
    # given a check run that started on one content ...
    req = RelayRequestFactory(team=team, created_by=requester, state=S.CHECKING)
    checked = content_fingerprint(req)
    # ... and a row that meanwhile holds other content
    RelayRequest.objects.filter(pk=req.pk).update(ipv4=["81.2.69.99"])
    # when the run's results arrive
    recorded = services.request_record_checks(
        request_id=req.pk, fingerprint=checked, attempt=0,
        checks=[{"id": "forward", "subject": "app.example.org", "status": "pass"}],
    )
    # then they are not recorded for the new content
    req.refresh_from_db()
    assert recorded is None
    assert (req.state, req.check_verdict, req.check_attempts) == (S.CHECKING, "", 0)
    assert not CheckResult.objects.filter(request=req) and not trail(req)


# --- a definite failure outranks a DNS error ----------------------------------------------


def test_worst_status_ranks_fail_above_error():
    assert worst_status(["pass", "error", "fail", "warn"]) == "fail"
    assert worst_status(["error", "fail"]) == "fail"
    assert worst_status(["warn", "error", "pass"]) == "error"
    assert worst_status(["warn", "pass"]) == "warn"
    assert worst_status([]) == "pass"


def test_fail_beside_an_error_goes_back_to_the_requester_at_once(
    servfail_dns, settings, team, requester, django_capture_on_commit_callbacks
):
    # given a forward look-up that errors and a sender domain that fails for certain
    settings.RELAY_CHECK_MAX_RETRIES = 5
    req = RelayRequestFactory(team=team, created_by=requester, sender_domains=["nodmarc.test"])
    # when it is submitted
    req = submitted(req, requester, django_capture_on_commit_callbacks)
    # then the verdict is fail and it is back with the requester after one attempt
    statuses = dict(CheckResult.objects.filter(request=req).values_list("check_id", "status"))
    assert statuses["forward"] == "error"
    assert statuses["sender_dmarc"] == "fail"
    assert (req.state, req.check_verdict, req.check_attempts) == (S.NEEDS_CHANGES, "fail", 1)
    assert req.check_next_attempt_at is None
    assert RequestEvent.objects.filter(request=req, type="checks_recorded").count() == 1
    assert Notification.objects.filter(request=req, kind="checks_failed").count() == 1


def test_cli_exits_1_when_a_check_fails_beside_a_dns_error(tmp_path):
    # given a nameserver that never answers and an address the policy refuses
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        # when
        result = run_cli("app.example.org", "--ipv4", "127.0.0.1", "--ipv6",
                         "2a02:898:0:20::10", "--timeout", "1", "--json",
                         nameserver=f"127.0.0.1:{silent.getsockname()[1]}", tmp_path=tmp_path)
    finally:
        silent.close()
    # then fail, not error, decides the exit code
    data = json.loads(result.stdout)
    statuses = {(c["id"], c["subject"]): c["status"] for c in data["checks"]}
    assert statuses["address_policy", "127.0.0.1"] == "fail"
    assert statuses["forward", "app.example.org"] == "error"
    assert data["verdict"] == "fail"
    assert result.returncode == 1, result.stderr


# --- the address policy is a hard stop ------------------------------------------------------


def test_a_policy_refused_address_is_not_looked_up_and_cannot_be_let_through(
    recording_dns, settings, team, requester, approver, django_capture_on_commit_callbacks
):
    # given a request holding a loopback address (data from before the intake rule)
    settings.RELAY_LAB_NETWORKS = []
    req = RelayRequestFactory(team=team, created_by=requester, ipv4=["127.0.0.1"])
    # when its checks run
    req = submitted(req, requester, django_capture_on_commit_callbacks)
    # then the address was never asked about, and the verdict is fail at once
    asked = {(name.rstrip("."), rdtype) for name, rdtype in recording_dns.questions}
    assert (reverse_name("127.0.0.1"), "PTR") not in asked
    assert not [q for q in asked if "127" in q[0]]
    assert (reverse_name("2a02:898:0:20::10"), "PTR") in asked  # the accepted one is
    results = {(c.check_id, c.subject): c for c in CheckResult.objects.filter(request=req)}
    assert results["address_policy", "127.0.0.1"].status == "fail"
    assert ("reverse", "127.0.0.1") not in results
    forward = results["forward", "app.example.org"]
    assert forward.status != "fail"
    assert forward.evidence["not_compared"] == ["127.0.0.1"]
    assert "127.0.0.1" not in forward.evidence["missing"]
    assert (req.state, req.check_verdict) == (S.NEEDS_CHANGES, "fail")
    assert req.check_summary["policy_refused"] == ["127.0.0.1"]
    before = trail(req)
    # when an approver tries to override it
    with pytest.raises(ActionConflict, match="address policy refuses 127.0.0.1"):
        services.request_act(request_id=req.pk, action="override_checks", by=approver,
                             comment="It is our lab")
    # and when an override got there anyway (an old row), approval is refused too
    RelayRequest.objects.filter(pk=req.pk).update(state=S.PENDING_APPROVAL,
                                                  override_reason="old override")
    with pytest.raises(ActionConflict, match="cannot be overridden or approved"):
        services.request_act(request_id=req.pk, action="approve", by=approver)
    # then nothing happened
    req.refresh_from_db()
    assert (req.state, req.decided_by) == (S.PENDING_APPROVAL, None)
    assert trail(req) == before


def test_forward_does_not_compare_refused_addresses_and_says_so(recording_dns):
    # given a name that resolves to a loopback address, outside any lab network
    spec = CheckSpec("relay-client.lab.example.org", ("127.0.0.2",), ())
    # when the engine checks it
    report = run_checks_sync(spec, CheckConfig(lifetime=2.0), [recording_dns.nameserver])
    # then the policy fails it; the forward check neither fails nor warns over it
    status = {(c.id, c.subject): c for c in report.checks}
    assert status["address_policy", "127.0.0.2"].status == "fail"
    forward = status["forward", "relay-client.lab.example.org"]
    assert forward.status == "pass", forward.detail
    assert forward.evidence["A"] == ["127.0.0.2"]
    assert (forward.evidence["expected"], forward.evidence["not_compared"]) == ([],
                                                                                ["127.0.0.2"])
    assert forward.evidence["extra"] == [] and "refused by the address policy" in forward.detail
    assert ("reverse", "127.0.0.2") not in status
    assert report.verdict == "fail"
    assert not [q for q in recording_dns.questions if q[1] == "PTR"]


# --- one retry chain --------------------------------------------------------------------------


def test_the_sweep_and_duplicate_messages_never_start_a_second_chain(
    servfail_dns, settings, team, requester, approver, eager_retries
):
    # given DNS that answers SERVFAIL for the request's name, and a submitted request
    settings.RELAY_CHECK_MAX_RETRIES = 3
    settings.RELAYDESK_SWEEP_AFTER_SECONDS = 0
    req = RelayRequestFactory(team=team, created_by=requester)
    services.request_act(request_id=req.pk, action="submit", by=requester)
    # when the worker runs its check message and the attempt errors (the retry is
    # published for later: throw=True hands it back instead of running it in-line)
    with pytest.raises(Retry):
        run_request_checks.apply(args=(req.pk,), throw=True).get()
    req.refresh_from_db()
    # then a retry is scheduled and recorded on the row
    assert (req.state, req.check_attempts) == (S.CHECKING, 1)
    assert req.check_next_attempt_at > timezone.now() + timedelta(seconds=20)
    # when the sweep runs again and again while that retry is due
    counts = [sweep_pending_work()["checks"] for _ in range(3)]
    # and the first message is delivered again, and the retry's message twice
    again = run_request_checks.apply(args=(req.pk,)).result
    with pytest.raises(Retry):
        run_request_checks.apply(args=(req.pk,), kwargs={"attempt": 1}, retries=1,
                                 throw=True).get()
    twice = run_request_checks.apply(args=(req.pk,), kwargs={"attempt": 1}, retries=1).result
    # then none of them started another run: one attempt per delivery of the chain
    req.refresh_from_db()
    assert counts == [0, 0, 0]
    assert (again, twice) == ("skipped:retry-scheduled", "skipped:superseded")
    assert req.check_attempts == 2
    # when the chain's next message is lost and its retry is overdue
    RelayRequest.objects.filter(pk=req.pk).update(
        check_next_attempt_at=timezone.now() - timedelta(minutes=5),
        updated_at=timezone.now() - timedelta(minutes=5))
    first, second = sweep_pending_work()["checks"], sweep_pending_work()["checks"]
    # then the sweep takes it over once, and that chain runs to its end
    req.refresh_from_db()
    assert (first, second) == (1, 0)
    assert (req.state, req.check_verdict, req.check_attempts) == (S.PENDING_APPROVAL, "error", 4)
    assert req.check_next_attempt_at is None
    recorded = [e.parameters["attempt"] for e in RequestEvent.objects.filter(
        request=req, type="checks_recorded").order_by("pk")]
    assert recorded == [1, 2, 3, 4]
    assert Notification.objects.filter(request=req, kind="checks_error").count() == 1
