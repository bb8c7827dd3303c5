"""The plain bulk writes of a check batch store exactly what ``save`` would store."""

from __future__ import annotations

import zoneinfo
from datetime import datetime

import pytest
from django.db import IntegrityError
from django.db import connection
from django.db import transaction
from django.test.utils import CaptureQueriesContext
from django.utils.translation import gettext_lazy

from requests_app.bulk_sql import insert_values
from requests_app.bulk_sql import update_rows
from requests_app.models import CheckResult
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.services import RESULT_COLUMNS
from tests.factories import RelayRequestFactory

pytestmark = pytest.mark.django_db

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
AWKWARD = "tab\there, line\nbreak, back\\slash, \\N, quote ' and \u2028"


def test_insert_values_stores_text_json_and_times_as_save_would(team, requester):
    req = RelayRequestFactory(team=team, created_by=requester)
    when = datetime(2026, 11, 30, 12, 30, tzinfo=BERLIN)
    evidence = {"answers": ["192.0.2.1", None], "nested": {"ttl": 300, "note": AWKWARD}}
    with CaptureQueriesContext(connection) as queries:
        insert_values(CheckResult, RESULT_COLUMNS, [
            (req.pk, "forward", "host.example.org", "pass", AWKWARD, evidence),
            (req.pk, "reverse", gettext_lazy("subject"), "warn", "", {}),
        ], same={"created_at": when, "updated_at": when})
    # one statement for both rows, counted where queries are counted
    assert len([q for q in queries.captured_queries if "requests_app_checkresult" in q["sql"]]
               ) == 1
    forward = CheckResult.objects.get(request=req, check_id="forward")
    assert (forward.detail, forward.evidence, forward.status) == (AWKWARD, evidence, "pass")
    assert forward.created_at == when and forward.updated_at == when
    # a lazy translation string is stored as its text
    assert CheckResult.objects.get(request=req, check_id="reverse").subject == "subject"


def test_insert_values_raises_djangos_integrity_error_and_keeps_the_transaction(
        team, requester):
    req = RelayRequestFactory(team=team, created_by=requester)
    row = (req.pk, "forward", "host.example.org", "pass", "", {})
    now = datetime(2026, 11, 30, tzinfo=BERLIN)
    insert_values(CheckResult, RESULT_COLUMNS, [row], same={"created_at": now,
                                                              "updated_at": now})
    with pytest.raises(IntegrityError), transaction.atomic():
        insert_values(CheckResult, RESULT_COLUMNS, [row], same={"created_at": now,
                                                                  "updated_at": now})
    assert CheckResult.objects.filter(request=req).count() == 1


def test_update_rows_writes_each_rows_own_values_nulls_and_json_included(team, requester):
    first, second, third = (RelayRequestFactory(team=team, created_by=requester,
                                                state=S.CHECKING) for _ in range(3))
    when = datetime(2026, 11, 30, 8, 0, tzinfo=BERLIN)
    first.check_verdict, first.check_summary = "pass", {"pass": 8}
    first.check_next_attempt_at, first.check_attempts = None, 1
    second.check_verdict, second.check_summary = "error", {"error": 1, "note": AWKWARD}
    second.check_next_attempt_at, second.check_attempts = when, 2
    third.check_verdict, third.check_summary = "warn", {}
    third.check_next_attempt_at, third.check_attempts = None, 3
    fields = ("check_verdict", "check_summary", "check_next_attempt_at", "check_attempts")
    with CaptureQueriesContext(connection) as queries:
        update_rows([first, second, third], fields)
    assert len(queries.captured_queries) == 1
    stored = {r.pk: r for r in RelayRequest.objects.filter(pk__in=[first.pk, second.pk,
                                                                    third.pk])}
    for row in (first, second, third):
        assert [getattr(stored[row.pk], name) for name in fields] == [
            getattr(row, name) for name in fields]
