"""The approvers' dashboard: exact figures, the SVG chart, access, constant queries."""

from __future__ import annotations

from datetime import UTC
from datetime import date
from datetime import datetime
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from requests_app.dashboard import dashboard_data
from requests_app.dashboard import weekly_chart_svg
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)  # a Wednesday


def make(state, *, team=None, submitted_days=None, decided_hours=None, created_days=0,
         **extra):
    req = RelayRequestFactory(state=state, **({"team": team} if team else {}))
    fields = {"created_at": NOW - timedelta(days=created_days), **extra}
    if submitted_days is not None:
        fields["submitted_at"] = NOW - timedelta(days=submitted_days)
        if decided_hours is not None:
            fields["decided_at"] = fields["submitted_at"] + timedelta(hours=decided_hours)
    RelayRequest.objects.filter(pk=req.pk).update(**fields)
    return req


def test_figures_on_a_known_data_set():
    red, blue = TeamFactory(slug="red"), TeamFactory(slug="blue")
    make(S.PENDING_APPROVAL, submitted_days=0.5)
    make(S.PENDING_APPROVAL, submitted_days=3)
    make(S.PENDING_APPROVAL, submitted_days=10)
    make(S.NEEDS_CHANGES, submitted_days=2)
    make(S.ACTIVE, team=red, submitted_days=20, decided_hours=2,
         recertify_by=date(2026, 12, 1))
    make(S.ACTIVE, team=red, submitted_days=20, decided_hours=4,
         drifted_at=NOW - timedelta(hours=1))
    make(S.ACTIVE, team=blue, submitted_days=20, decided_hours=30,
         recertify_by=date(2027, 6, 1))
    make(S.REJECTED, submitted_days=20, decided_hours=10)
    data = dashboard_data(NOW)
    assert data.open_by_state["pending_approval"] == {"< 1 day": 1, "1-7 days": 1,
                                                      "> 7 days": 1}
    assert data.open_by_state["needs_changes"]["1-7 days"] == 1
    assert data.median_decision_hours == 7.0  # median of 2, 4, 10, 30
    assert data.decided_count == 4
    assert data.active_by_team == [("red", 2), ("blue", 1)]
    assert [r.recertify_by for r in data.upcoming_recertifications] == [date(2026, 12, 1)]
    assert len(data.drifted) == 1


def test_median_with_an_odd_count():
    for hours in (1, 5, 9):
        make(S.REJECTED, submitted_days=5, decided_hours=hours)
    assert dashboard_data(NOW).median_decision_hours == 5.0


def test_weekly_chart_counts_and_empty_weeks():
    make(S.DRAFT, created_days=0)
    make(S.DRAFT, created_days=1)
    make(S.DRAFT, created_days=14)
    make(S.DRAFT, created_days=200)  # outside the 12 weeks
    weeks = dashboard_data(NOW).weeks
    assert len(weeks) == 12
    assert weeks[-1] == (date(2026, 11, 16), 2)
    assert weeks[-3] == (date(2026, 11, 2), 1)
    assert sum(n for _, n in weeks) == 3
    svg = weekly_chart_svg(weeks)
    assert svg.count("<rect") == 12
    assert "week of 2026-11-16: 2" in svg and "<title id=\"chart-title\">" in svg


def test_chart_escapes_text():
    svg = weekly_chart_svg([(date(2026, 1, 5), 3)])
    assert "<script" not in svg and svg.startswith("<svg")


def test_access_and_constant_queries(approver, requester, auditor):
    client = Client()
    client.force_login(requester)
    assert client.get(reverse("requests:dashboard")).status_code == 403
    client.force_login(auditor)
    assert client.get(reverse("requests:dashboard")).status_code == 200
    client.force_login(approver)
    for i in range(5):
        make(S.ACTIVE, submitted_days=i + 1, decided_hours=1, drifted_at=NOW,
             recertify_by=NOW.date())
    with CaptureQueriesContext(connection) as five:
        assert client.get(reverse("requests:dashboard")).status_code == 200
    for i in range(45):
        make(S.ACTIVE, submitted_days=i + 1, decided_hours=1, drifted_at=NOW,
             recertify_by=NOW.date())
    with CaptureQueriesContext(connection) as fifty:
        response = client.get(reverse("requests:dashboard"))
    assert len(response.context["data"].drifted) == 50
    assert len(five.captured_queries) == len(fifty.captured_queries)


# --- bounded by a time window, computed in the database (issue 15) ---------------------


def test_median_covers_only_the_decisions_of_the_window(settings):
    # given decisions 10 and 40 days ago, and a 30-day window
    settings.RELAYDESK_DASHBOARD_DAYS = 30
    make(S.REJECTED, submitted_days=10, decided_hours=2)
    make(S.REJECTED, submitted_days=11, decided_hours=4)
    make(S.REJECTED, submitted_days=40, decided_hours=100)
    # then the old decision counts for neither the median nor the count
    data = dashboard_data(NOW)
    assert (data.median_decision_hours, data.decided_count, data.window_days) == (3.0, 2, 30)
    # and a wider window passed in takes it in
    wide = dashboard_data(NOW, window_days=60)
    assert (wide.median_decision_hours, wide.decided_count) == (4.0, 3)


def test_page_days_parameter_sets_the_window(approver, settings):
    settings.RELAYDESK_DASHBOARD_DAYS = 30
    make(S.REJECTED, submitted_days=40, decided_hours=5)  # 40+ days before the page's now
    client = Client()
    client.force_login(approver)
    assert client.get(reverse("requests:dashboard")).context["data"].decided_count == 0
    response = client.get(reverse("requests:dashboard") + "?days=400")
    assert response.context["data"].decided_count == 1
    assert "decided in the last 400 days" in response.content.decode()
    assert client.get(reverse("requests:dashboard") + "?days=x").status_code == 400


def test_median_reads_at_most_two_spans_from_the_database():
    # given many decisions: the median is found by the database, not in Python
    for hours in range(1, 22):
        make(S.REJECTED, submitted_days=5, decided_hours=hours)
    with CaptureQueriesContext(connection) as queries:
        data = dashboard_data(NOW)
    assert data.median_decision_hours == 11.0
    sqls = [q["sql"] for q in queries.captured_queries]
    if connection.vendor == "postgresql":  # one aggregate, no span read at all
        assert sum("PERCENTILE_CONT(0.5)" in sql for sql in sqls) == 1
        assert not [sql for sql in sqls if 'AS "span"' in sql]
        return
    spans = [sql for sql in sqls if 'AS "span"' in sql]
    assert len(spans) == 1 and spans[0].endswith("LIMIT 1 OFFSET 10")  # the 11th of 21


def test_open_buckets_on_their_boundaries():
    # exactly 1 and 7 days waiting fall in the older bucket, as before
    make(S.PENDING_APPROVAL, submitted_days=1)
    make(S.PENDING_APPROVAL, submitted_days=7)
    make(S.PENDING_APPROVAL, submitted_days=0)
    assert dashboard_data(NOW).open_by_state["pending_approval"] == {
        "< 1 day": 1, "1-7 days": 1, "> 7 days": 1}
