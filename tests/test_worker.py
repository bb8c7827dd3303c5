"""A real Celery worker process runs the submit task on the configured broker.

By default the broker is kombu's filesystem transport; CI runs this file again with
``CELERY_BROKER_URL=redis://127.0.0.1:6379/0`` and PostgreSQL.
"""

from __future__ import annotations

import pytest
from django.conf import settings

from requests_app import services
from requests_app.models import CheckResult
from requests_app.models import RelayRequest
from requests_app.models import RequestState
from tests.factories import RelayRequestFactory
from tests.support.worker import celery_worker
from tests.support.worker import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_submit_is_checked_by_a_real_worker(team, requester):
    # given a draft and a worker on the configured broker
    req = RelayRequestFactory(team=team, created_by=requester)
    with celery_worker() as worker:
        # when the requester submits (the task is published after commit)
        services.request_act(request_id=req.pk, action="submit", by=requester)
        # then the worker runs the DNS checks and moves the request on
        done = wait_for(
            lambda: RelayRequest.objects.get(pk=req.pk).state != RequestState.CHECKING
        )
        log = "".join(worker.log)
    assert done, f"worker did not finish on {settings.CELERY_BROKER_URL}:\n{log[-3000:]}"
    req.refresh_from_db()
    assert req.state == RequestState.PENDING_APPROVAL
    assert req.check_verdict == "pass"
    assert CheckResult.objects.filter(request=req, check_id="forward").get().status == "pass"
    assert "relaydesk.check_waiting_requests" in log


def test_nightly_recheck_runs_its_batches_on_a_real_worker(team, requester):
    # given active entries and a worker (the batch runs on uvloop with the collector paused)
    from requests_app.models import CheckRun
    from requests_app.tasks import recheck_active_entries

    entries = RelayRequestFactory.create_batch(3, team=team, created_by=requester,
                                               state=RequestState.ACTIVE)
    with celery_worker() as worker:
        # when beat's task is published
        recheck_active_entries.delay()
        # then every entry gets a recorded run, all passing, none flagged
        done = wait_for(lambda: CheckRun.objects.count() == len(entries))
        log = "".join(worker.log)
    assert done, f"recheck did not finish on {settings.CELERY_BROKER_URL}:\n{log[-3000:]}"
    assert sorted(CheckRun.objects.values_list("request_id", flat=True)) == sorted(
        e.pk for e in entries)
    assert set(CheckRun.objects.values_list("verdict", "drifted")) == {("pass", False)}
    assert "relaydesk.recheck_active_entries" in log
