"""A burst of submissions: one check task takes the waiting requests along."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.tasks import run_request_checks
from requests_app.tasks import sweep_pending_work
from tests.factories import RelayRequestFactory

pytestmark = pytest.mark.django_db


def _waiting(team, requester, n: int, **kw) -> list[RelayRequest]:
    """Requests submitted whose check messages are still queued (state ``checking``)."""
    return [RelayRequestFactory(team=team, created_by=requester, state=S.CHECKING, **kw)
            for _ in range(n)]


def _recorded(ids) -> Counter:
    return Counter(RequestEvent.objects.filter(request_id__in=ids, type="checks_recorded")
                   .values_list("request_id", flat=True))


def test_one_task_checks_the_waiting_requests_and_their_own_messages_skip(
        settings, team, requester):
    settings.RELAY_CHECK_BATCH_SIZE = 10
    reqs = _waiting(team, requester, 4)
    ids = [r.pk for r in reqs]
    # when the first message is delivered
    assert run_request_checks.apply(args=(ids[0],)).result == "pass"
    # then all four were checked, each recorded once, and moved on
    assert set(RelayRequest.objects.filter(pk__in=ids).values_list("state", flat=True)) == {
        S.PENDING_APPROVAL}
    assert _recorded(ids) == {pk: 1 for pk in ids}
    assert set(RelayRequest.objects.filter(pk__in=ids)
               .values_list("check_next_attempt_at", flat=True)) == {None}
    # and the others' own messages, delivered later, find nothing to do
    assert [run_request_checks.apply(args=(pk,)).result for pk in ids[1:]] == [
        "skipped:pending_approval"] * 3
    assert _recorded(ids) == {pk: 1 for pk in ids}


def test_the_batch_is_bounded_and_leaves_the_rest_to_their_messages(
        settings, team, requester):
    settings.RELAY_CHECK_BATCH_SIZE = 2
    ids = [r.pk for r in _waiting(team, requester, 3)]
    run_request_checks.apply(args=(ids[0],))
    states = dict(RelayRequest.objects.filter(pk__in=ids).values_list("pk", "state"))
    assert sorted(states.values()) == [S.CHECKING, S.PENDING_APPROVAL, S.PENDING_APPROVAL]
    left = next(pk for pk, state in states.items() if state == S.CHECKING)
    assert run_request_checks.apply(args=(left,)).result == "pass"


def test_a_request_claimed_by_a_task_that_died_is_swept_once_its_lease_ran_out(
        settings, team, requester):
    # given a request a worker claimed (leased) and then died with
    settings.RELAYDESK_SWEEP_AFTER_SECONDS = 60
    (req,) = _waiting(team, requester, 1)
    lease = timezone.now() + timedelta(seconds=15)
    RelayRequest.objects.filter(pk=req.pk).update(
        check_next_attempt_at=lease, updated_at=timezone.now() - timedelta(minutes=5))
    # then its own message skips while the lease holds, and the sweep leaves it alone
    assert run_request_checks.apply(args=(req.pk,)).result == "skipped:retry-scheduled"
    assert sweep_pending_work()["checks"] == 0
    # when the lease is long over
    RelayRequest.objects.filter(pk=req.pk).update(
        check_next_attempt_at=timezone.now() - timedelta(minutes=3))
    # then the sweep dispatches it again (eager here) and it is checked once
    assert sweep_pending_work()["checks"] == 1
    req.refresh_from_db()
    assert req.state == S.PENDING_APPROVAL
    assert _recorded([req.pk]) == {req.pk: 1}


def test_a_request_the_engine_refuses_is_released_to_run_alone(settings, team, requester):
    settings.RELAY_CHECK_BATCH_SIZE = 10
    good = _waiting(team, requester, 1)[0]
    bad = _waiting(team, requester, 1, dkim_selector="bad selector!")[0]
    with pytest.raises(ValueError):
        # released, the bad one runs alone (eager) and raises as it always did
        run_request_checks.apply(args=(good.pk,), throw=True).get()
    bad.refresh_from_db()
    assert (bad.state, bad.check_next_attempt_at) == (S.CHECKING, None)


def test_batch_size_one_checks_only_the_own_request(settings, team, requester):
    settings.RELAY_CHECK_BATCH_SIZE = 1
    ids = [r.pk for r in _waiting(team, requester, 2)]
    run_request_checks.apply(args=(ids[0],))
    assert dict(RelayRequest.objects.filter(pk__in=ids).values_list("pk", "state")) == {
        ids[0]: S.PENDING_APPROVAL, ids[1]: S.CHECKING}


def test_a_batch_mails_as_one_by_one_would(settings, team, requester, approver):
    from requests_app.models import Notification

    def mails(batch_size: int) -> list[tuple]:
        settings.RELAY_CHECK_BATCH_SIZE = batch_size
        good = _waiting(team, requester, 1)[0]
        bad = _waiting(team, requester, 1, ipv4=["81.2.69.11"])[0]
        for req in (good, bad):
            run_request_checks.apply(args=(req.pk,))
        rows = Notification.objects.filter(request__in=[good, bad]).order_by("request_id")
        return [(n.kind, n.recipients, {k: v for k, v in n.context.items()
                                        if k != "content_fingerprint"},
                 n.event_key.split(":event:")[0].split(":", 2)[2]) for n in rows]

    one_by_one, batched = mails(1), mails(10)
    assert [m[0] for m in batched] == ["awaiting_approval", "checks_failed"]
    failing = {(c["check_id"], c["status"]) for c in batched[1][2]["failing_checks"]}
    assert {("forward", "fail"), ("reverse", "fail")} <= failing
    assert batched == one_by_one
