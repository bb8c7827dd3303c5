"""The audit CSV export at scale: streamed in chunks from plain rows, filtered by date range,
team and request, ending on a row-count trailer, in a constant number of queries."""

from __future__ import annotations

import csv
import io
from datetime import UTC
from datetime import date
from datetime import datetime

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from requests_app.audit_export import TRAILER_PREFIX
from requests_app.audit_export import AuditFilter
from requests_app.audit_export import audit_csv_chunks
from requests_app.audit_export import parse_trailer
from requests_app.models import RequestEvent
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory

pytestmark = pytest.mark.django_db

URL = reverse("requests:audit_csv")


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def event(req, when: datetime, **fields) -> RequestEvent:
    return RequestEvent.objects.create(request=req, type="transition", actor_name="x",
                                       created_at=when, **fields)


def download(user, query: str = "") -> tuple[str, list[list[str]]]:
    response = client_for(user).get(URL + query)
    assert response.status_code == 200
    assert response.streaming  # sent as it is made, never built whole in memory
    body = b"".join(response.streaming_content).decode()
    return body, list(csv.reader(io.StringIO(body)))


def test_trailer_states_the_number_of_rows(approver):
    req = RelayRequestFactory()
    for day in range(1, 8):
        event(req, datetime(2026, 3, day, tzinfo=UTC))
    body, rows = download(approver)
    assert rows[-1] == [f"{TRAILER_PREFIX}7 rows"]
    assert len(rows) - 2 == 7 == parse_trailer(body)


def test_a_cut_off_download_is_detectable(approver):
    req = RelayRequestFactory()
    for day in range(1, 4):
        event(req, datetime(2026, 3, day, tzinfo=UTC), comment="line\nbreak")
    body, _rows = download(approver)
    assert parse_trailer(body) == 3
    # cut after a whole line, as the worker timeout did: no trailer, so not complete
    whole_lines = body[: body.rindex(TRAILER_PREFIX)]
    assert parse_trailer(whole_lines) is None
    assert parse_trailer(body[:-5]) is None


def test_empty_export_has_header_and_zero_trailer(approver):
    body, rows = download(approver)
    assert rows[0][:2] == ["time", "request"]
    assert len(rows) == 2 and parse_trailer(body) == 0


def test_date_range_includes_both_days(approver):
    req = RelayRequestFactory()
    for day in (1, 2, 3, 4, 5):
        event(req, datetime(2026, 3, day, 12, tzinfo=UTC), comment=f"day {day}")
    event(req, datetime(2026, 3, 4, 23, 59, 59, tzinfo=UTC), comment="late on the 4th")
    body, rows = download(approver, "?since=2026-03-02&until=2026-03-04")
    assert [r[9] for r in rows[1:-1]] == ["day 2", "day 3", "day 4", "late on the 4th"]
    assert parse_trailer(body) == 4


def test_team_and_request_filters(approver):
    red, blue = TeamFactory(slug="red"), TeamFactory(slug="blue")
    red_req, blue_req = RelayRequestFactory(team=red), RelayRequestFactory(team=blue)
    other_red = RelayRequestFactory(team=red, fqdn="other.example.org")
    when = datetime(2026, 3, 1, tzinfo=UTC)
    for req in (red_req, blue_req, other_red, red_req):
        event(req, when)
    _, rows = download(approver, "?team=red")
    assert sorted(int(r[1]) for r in rows[1:-1]) == sorted([red_req.pk, red_req.pk,
                                                            other_red.pk])
    assert {r[2] for r in rows[1:-1]} == {"red"}
    _, rows = download(approver, f"?team=red&request={other_red.pk}")
    assert [(int(r[1]), r[3]) for r in rows[1:-1]] == [(other_red.pk, "other.example.org")]
    body, rows = download(approver, "?team=nobody")
    assert parse_trailer(body) == 0


@pytest.mark.parametrize("query", ["?since=2026-3-1", "?until=yesterday", "?since=2026-02-30",
                                   "?since=%D9%A1%D9%A1%D9%A1%D9%A1-01-01", "?team=" + "x" * 60])
def test_bad_filters_are_refused_with_400(approver, query):
    response = client_for(approver).get(URL + query)
    assert response.status_code == 400


def test_subject_and_parameters_columns(approver):
    account = RelayRequestFactory(kind="account", fqdn="", account_name="svc-mail",
                                  ipv4=[], ipv6=[])
    event(account, datetime(2026, 3, 1, tzinfo=UTC),
          parameters={"b": 1, "a": ["x", None], "é": True})
    _, rows = download(approver)
    assert rows[1][3] == "svc-mail"
    # compact, key-sorted JSON a parser reads back (not a Python repr)
    assert rows[1][10] == '{"a":["x",null],"b":1,"é":true}'


def test_rows_are_read_as_plain_values_not_model_instances(approver, monkeypatch):
    req = RelayRequestFactory()
    event(req, datetime(2026, 3, 1, tzinfo=UTC))

    def refuse(*args, **kwargs):
        raise AssertionError("the export built a model instance")

    monkeypatch.setattr(RequestEvent, "from_db", classmethod(refuse))
    body, _ = download(approver)
    assert parse_trailer(body) == 1


def test_chunks_hold_a_bounded_number_of_rows(approver):
    req = RelayRequestFactory()
    for minute in range(25):
        event(req, datetime(2026, 3, 1, 0, minute, tzinfo=UTC))
    chunks = list(audit_csv_chunks(approver, AuditFilter(), chunk_rows=10))
    # header + 10, 10, then the last 5 with the trailer
    assert [c.count("\n") for c in chunks] == [11, 10, 6]
    assert parse_trailer("".join(chunks)) == 25


def test_query_count_does_not_grow_with_the_rows(approver):
    def queries_for(n: int) -> int:
        RequestEvent.objects.all()._raw_delete(RequestEvent.objects.db)
        req = RelayRequestFactory()
        for i in range(n):
            event(req, datetime(2026, 3, 1, 0, i, tzinfo=UTC))
        with CaptureQueriesContext(connection) as captured:
            chunks = list(audit_csv_chunks(approver, AuditFilter(since=date(2026, 1, 1)),
                                           chunk_rows=4))
        assert parse_trailer("".join(chunks)) == n
        return len(captured.captured_queries)

    queries_for(1)  # warm: the user's roles are looked up once
    assert queries_for(3) == queries_for(40)


def test_requesters_may_not_export(requester):
    assert client_for(requester).get(URL).status_code == 403
