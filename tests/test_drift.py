"""Nightly re-verification of active entries against a real DNS server: drift and recovery."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from requests_app.drift import recheck_active_entries
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
