"""Nightly re-verification of active entries against a real DNS server: drift and recovery."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from requests_app.checking import run_checks_for
from requests_app.checks import Applies
from requests_app.checks import CheckFamily
from requests_app.checks import CheckResult as EngineResult
from requests_app.checks import CheckStatus
from requests_app.checks import register
from requests_app.checks import unregister
from requests_app.drift import recheck_active_entries
from requests_app.models import CheckResult
from requests_app.models import CheckRun
from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from tests.conftest import ZONES
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory
from tests.support.dnsserver import DnsTestServer

pytestmark = pytest.mark.django_db

ZONE = (ZONES / "default.zone").read_text()
MOVED = ZONE.replace("app         IN A    81.2.69.10", "app         IN A    81.2.69.99")


@pytest.fixture
def dns(settings):
    with DnsTestServer(ZONE) as server:
        settings.DNS_NAMESERVERS = [server.nameserver]
        settings.DNS_LIFETIME_SECONDS = 0.5
        yield server


@pytest.fixture
def active(team, requester):
    ApproverFactory(email="approver@example.org")
    return RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE)


def test_unchanged_dns_records_a_run_and_flags_nothing(dns, active):
    stats = recheck_active_entries()
    assert (stats.checked, stats.drifted) == (1, 0)
    run = CheckRun.objects.get(request=active)
    assert (run.verdict, run.drifted) == ("pass", False)
    active.refresh_from_db()
    assert active.drifted_at is None and active.checks_ran_at is not None


def test_moved_address_flags_drift_and_tells_once(dns, active,
                                                  django_capture_on_commit_callbacks):
    # given the FQDN now resolves elsewhere
    dns.set_zone(MOVED)
    # when the nightly recheck runs twice
    with django_capture_on_commit_callbacks(execute=True):
        first = recheck_active_entries()
        second = recheck_active_entries()
    # then the entry is flagged, approvers and owners were told exactly once
    assert (first.drifted, second.drifted) == (1, 0)
    active.refresh_from_db()
    assert active.state == S.ACTIVE and active.drifted_at is not None
    assert {c["id"] for c in active.drift_detail["checks"]} == {"forward"}
    mails = Notification.objects.filter(request=active, kind="drifted")
    assert mails.count() == 1
    assert "approver@example.org" in mails.get().recipients
    assert "ops@example.org" in mails.get().recipients
    assert RequestEvent.objects.filter(request=active, type="drift").count() == 1
    assert CheckRun.objects.filter(request=active, drifted=True).count() == 2


def test_dns_errors_never_flag(dns, active):
    dns.set_zone(ZONE, drop={"app.example.org"})
    stats = recheck_active_entries()
    assert (stats.errors, stats.drifted) == (1, 0)
    active.refresh_from_db()
    assert active.drifted_at is None
    assert CheckRun.objects.get(request=active).verdict == "error"


def test_recovery_clears_the_flag(dns, active):
    dns.set_zone(MOVED)
    recheck_active_entries()
    dns.set_zone(ZONE)
    stats = recheck_active_entries()
    assert stats.recovered == 1
    active.refresh_from_db()
    assert active.drifted_at is None


def test_failure_accepted_at_approval_is_not_drift(dns, team, requester):
    # given an entry approved with an overridden failing PTR
    req = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                              ipv4=["81.2.69.77"], fqdn="app.example.org")
    from requests_app.models import CheckResult

    CheckResult.objects.create(request=req, check_id="reverse", subject="81.2.69.77",
                               status="fail")
    CheckResult.objects.create(request=req, check_id="forward", subject="app.example.org",
                               status="fail")
    assert recheck_active_entries().drifted == 0


def test_suspension_after_grace_period_when_enabled(dns, active, settings,
                                                    django_capture_on_commit_callbacks):
    settings.RELAY_DRIFT_SUSPEND_AFTER_HOURS = 24
    dns.set_zone(MOVED)
    recheck_active_entries()
    RelayRequest.objects.filter(pk=active.pk).update(
        drifted_at=timezone.now() - timedelta(hours=25))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        stats = recheck_active_entries()
    assert stats.suspended == 1
    active.refresh_from_db()
    assert active.suspended_at is not None
    assert callbacks  # a relay config rebuild was scheduled


def test_flag_only_by_default(dns, active, settings):
    assert settings.RELAY_DRIFT_SUSPEND_AFTER_HOURS is None
    dns.set_zone(MOVED)
    recheck_active_entries()
    RelayRequest.objects.filter(pk=active.pk).update(
        drifted_at=timezone.now() - timedelta(days=30))
    recheck_active_entries()
    active.refresh_from_db()
    assert active.suspended_at is None


def test_queries_per_batch_are_constant(dns, team, requester):
    ApproverFactory(email="approver@example.org")
    RelayRequestFactory.create_batch(5, team=team, created_by=requester, state=S.ACTIVE)
    small = recheck_active_entries(batch_size=5, count_queries=True)
    RelayRequestFactory.create_batch(45, team=team, created_by=requester, state=S.ACTIVE)
    dns.set_zone(MOVED)  # every entry drifts: events and mail in the same batch
    large = recheck_active_entries(batch_size=50, count_queries=True)
    assert large.drifted == 50
    assert small.queries_per_batch[0] <= large.queries_per_batch[0] <= \
        small.queries_per_batch[0] + 6
    again = recheck_active_entries(batch_size=50, count_queries=True)
    assert again.queries_per_batch == [small.queries_per_batch[0]]


def test_sharded_recheck_gives_the_same_results(dns, active, settings, team, requester):
    # given two processes for the DNS work of a batch
    settings.RELAY_RECHECK_PROCESSES = 2
    RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE)
    dns.set_zone(MOVED)
    # when
    stats = recheck_active_entries()
    # then both entries were checked in the child processes and drift was recorded
    assert (stats.checked, stats.drifted) == (2, 2)
    assert set(CheckRun.objects.values_list("verdict", flat=True)) == {"fail"}


def test_check_runs_keep_their_json_and_insert_as_values_rows(active):
    # given results with the characters an array literal must escape
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    results = [{"id": "sender_spf", "detail": 'say "hi" \\ back', "evidence": {"q": ['"']}}]
    # when
    with CaptureQueriesContext(connection) as queries:
        CheckRun.objects.bulk_create([CheckRun(request=active, verdict="pass", results=results)
                                      for _ in range(3)])
    # then: the documents come back as written, and PostgreSQL got plain VALUES rows
    assert [r.results for r in CheckRun.objects.all()] == [results] * 3
    insert = next(q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT"))
    assert "UNNEST" not in insert.upper()
    if connection.vendor == "postgresql":  # the form this field avoids, seen on a plain one
        with CaptureQueriesContext(connection) as plain:
            RequestEvent.objects.bulk_create([
                RequestEvent(request=active, type=RequestEvent.Type.DRIFT, actor_name="system",
                             parameters=results) for _ in range(2)])
        assert "UNNEST" in plain.captured_queries[0]["sql"].upper()


# --- checks added after approval (docs/dns-checks.md, "Drift and new checks") -----------


def _record_baseline(req):
    """The entry's approval-time results, as the check task records them."""
    report = run_checks_for(req)
    CheckResult.objects.bulk_create([
        CheckResult(request=req, check_id=c["id"], subject=c["subject"], status=c["status"],
                    detail=c["detail"], evidence=c["evidence"]) for c in report["checks"]])
    return {c["id"] for c in report["checks"]}


class NewCheck:
    """A check registered after the entries were approved; its outcome set by the test."""

    def __init__(self) -> None:
        self.status = CheckStatus.FAIL
        self.registered = False

    def judge(self, _config, _plan, fqdn):
        return EngineResult("probe", fqdn, self.status, f"probe says {self.status}")

    def register(self) -> None:
        register(CheckFamily("probe", Applies.FQDN, judge=self.judge))
        self.registered = True


@pytest.fixture
def new_check():
    check = NewCheck()
    try:
        yield check
    finally:
        if check.registered:
            unregister("probe")


def test_a_check_added_after_approval_is_not_drift_on_its_first_night(
        dns, active, new_check, settings):
    # given an entry approved with every check of its day, and a new check that fails
    assert "probe" not in _record_baseline(active)
    new_check.register()
    settings.RELAY_DRIFT_SUSPEND_AFTER_HOURS = 0
    # when the nightly recheck runs twice
    first = recheck_active_entries()
    second = recheck_active_entries()
    # then nothing was flagged or suspended, the run holds the new result, and the first
    # night's result became the entry's baseline for that check (an accepted failure)
    assert (first.drifted, first.suspended, first.new_checks) == (0, 0, 1)
    assert (second.drifted, second.suspended, second.new_checks) == (0, 0, 0)
    active.refresh_from_db()
    assert active.drifted_at is None and active.suspended_at is None
    assert not RequestEvent.objects.filter(request=active, type="drift").exists()
    run = CheckRun.objects.filter(request=active).order_by("pk").first()
    assert run.drifted is False and run.verdict == "fail"
    assert ("probe", "fail") in {(c["id"], c["status"]) for c in run.results}
    adopted = CheckResult.objects.get(request=active, check_id="probe")
    assert (adopted.subject, adopted.status) == ("app.example.org", "fail")


def test_a_new_check_that_passed_when_adopted_is_drift_when_it_fails_later(
        dns, active, new_check):
    # given an approved entry that passes the new check on its first night
    _record_baseline(active)
    new_check.register()
    new_check.status = CheckStatus.PASS
    assert recheck_active_entries().drifted == 0
    # when the new check fails on a later night
    new_check.status = CheckStatus.FAIL
    stats = recheck_active_entries()
    # then that is drift, like any other check that passed before
    assert (stats.drifted, stats.new_checks) == (1, 0)
    active.refresh_from_db()
    assert [c["id"] for c in active.drift_detail["checks"]] == ["probe"]


def test_a_new_check_that_erred_stays_new_until_it_answers(dns, active, new_check):
    # given an approved entry whose new check cannot answer on its first night
    _record_baseline(active)
    new_check.register()
    new_check.status = CheckStatus.ERROR
    first = recheck_active_entries()
    # then nothing is adopted from an unanswered check ...
    assert (first.drifted, first.new_checks) == (0, 0)
    assert not CheckResult.objects.filter(request=active, check_id="probe").exists()
    # ... and the first night it answers decides its baseline, still without a flag
    new_check.status = CheckStatus.FAIL
    second = recheck_active_entries()
    assert (second.drifted, second.new_checks) == (0, 1)
    assert CheckResult.objects.get(request=active, check_id="probe").status == "fail"
    assert recheck_active_entries().drifted == 0


def test_an_entry_without_recorded_results_compares_every_check_as_before(
        dns, active, new_check):
    # given an active entry with no approval-time results at all (no baseline to tell
    # an old check from a new one)
    assert not CheckResult.objects.filter(request=active).exists()
    new_check.register()
    # when the new check fails
    stats = recheck_active_entries()
    # then it is drift, as every failing check of such an entry always was
    assert (stats.drifted, stats.new_checks) == (1, 0)
    assert not CheckResult.objects.filter(request=active).exists()
