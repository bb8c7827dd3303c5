"""A burst of submissions sends one wake-up message, and no submission is left waiting."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.db import connections
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from requests_app import checking
from requests_app import services
from requests_app.check_dispatch import CHECKS_TOKEN
from requests_app.check_dispatch import lease_seconds
from requests_app.check_dispatch import wake_arm
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.models import WakeToken
from requests_app.tasks import check_waiting_requests
from requests_app.tasks import run_request_checks
from requests_app.tasks import sweep_pending_work
from tests.factories import RelayRequestFactory

pytestmark = pytest.mark.django_db


class _Published:
    """Records the messages a task would publish (the broker is what is replaced)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def __call__(self, *args, **kwargs) -> None:
        if self.fail:
            raise OperationalError("broker down")
        self.calls.append(args)


@pytest.fixture
def published(monkeypatch) -> _Published:
    recorder = _Published()
    monkeypatch.setattr(check_waiting_requests, "delay", recorder)
    monkeypatch.setattr(check_waiting_requests, "apply_async", recorder)
    return recorder


def _submit(team, requester, callbacks_fixture, n: int) -> list[int]:
    """Submit ``n`` drafts, each in its own transaction, running its after-commit work."""
    ids = []
    for _ in range(n):
        draft = RelayRequestFactory(team=team, created_by=requester)
        with callbacks_fixture(execute=True):
            services.request_act(request_id=draft.pk, action="submit", by=requester)
        ids.append(draft.pk)
    return ids


def _recorded(ids) -> Counter:
    return Counter(RequestEvent.objects.filter(request_id__in=ids, type="checks_recorded")
                   .values_list("request_id", flat=True))


def test_a_burst_of_submissions_sends_one_message_that_checks_them_all(
        settings, team, requester, published, django_capture_on_commit_callbacks):
    settings.RELAY_CHECK_BATCH_SIZE = 50
    # when five requests are submitted one after the other, the worker still busy
    ids = _submit(team, requester, django_capture_on_commit_callbacks, 5)
    # then one wake-up message went out, not five
    assert len(published.calls) == 1
    assert WakeToken.objects.get(name=CHECKS_TOKEN).armed_at is not None
    # when the worker runs it
    assert check_waiting_requests.run() == "checked:5"
    # then all five are checked, each recorded once, and the token is idle again
    assert set(RelayRequest.objects.filter(pk__in=ids).values_list("state", flat=True)) == {
        S.PENDING_APPROVAL}
    assert _recorded(ids) == {pk: 1 for pk in ids}
    assert WakeToken.objects.get(name=CHECKS_TOKEN).armed_at is None


def test_a_submission_after_the_task_looked_sends_a_new_message(
        settings, team, requester, published, django_capture_on_commit_callbacks):
    settings.RELAY_CHECK_BATCH_SIZE = 50
    _submit(team, requester, django_capture_on_commit_callbacks, 1)
    assert check_waiting_requests.run() == "checked:1"
    # when another request is submitted once the task has disarmed the token
    (late,) = _submit(team, requester, django_capture_on_commit_callbacks, 1)
    # then it sends a message of its own, which checks it
    assert len(published.calls) == 2
    assert check_waiting_requests.run() == "checked:1"
    assert RelayRequest.objects.get(pk=late).state == S.PENDING_APPROVAL


def test_a_full_batch_sends_one_more_message_for_the_rest(
        settings, team, requester, published, django_capture_on_commit_callbacks):
    settings.RELAY_CHECK_BATCH_SIZE = 2
    ids = _submit(team, requester, django_capture_on_commit_callbacks, 5)
    assert len(published.calls) == 1
    # when the worker runs the message: it takes two and asks for a second worker
    assert check_waiting_requests.run() == "checked:2"
    assert len(published.calls) == 2
    assert check_waiting_requests.run() == "checked:2"
    assert len(published.calls) == 3
    # a batch that is not full is the last: no further message
    assert check_waiting_requests.run() == "checked:1"
    assert check_waiting_requests.run() == "none"
    assert len(published.calls) == 3
    assert _recorded(ids) == {pk: 1 for pk in ids}


def test_an_armed_token_whose_message_was_lost_is_armed_again_after_the_lease(
        settings, team, requester, published, django_capture_on_commit_callbacks):
    settings.RELAY_CHECK_BATCH_SIZE = 50
    _submit(team, requester, django_capture_on_commit_callbacks, 1)
    # given the message was lost (a broker that forgot it): the token stays armed
    _submit(team, requester, django_capture_on_commit_callbacks, 1)
    assert len(published.calls) == 1
    # when the lease is over, the next submission sends a message again
    WakeToken.objects.filter(name=CHECKS_TOKEN).update(
        armed_at=timezone.now() - timedelta(seconds=lease_seconds() + 1))
    _submit(team, requester, django_capture_on_commit_callbacks, 1)
    assert len(published.calls) == 2
    assert check_waiting_requests.run() == "checked:3"


def test_a_broker_outage_keeps_the_submission_and_the_next_one_tries_again(
        settings, team, requester, monkeypatch, django_capture_on_commit_callbacks, caplog):
    settings.RELAY_CHECK_BATCH_SIZE = 50
    monkeypatch.setattr(check_waiting_requests, "delay", _Published(fail=True))
    # when the broker refuses the message
    (first,) = _submit(team, requester, django_capture_on_commit_callbacks, 1)
    # then the submission stands, the user is not failed, and the token is not left armed
    assert RelayRequest.objects.get(pk=first).state == S.CHECKING
    assert "left for the sweep" in caplog.text
    assert WakeToken.objects.get(name=CHECKS_TOKEN).armed_at is None
    # and once the broker is back, the next submission's message checks both
    recorder = _Published()
    monkeypatch.setattr(check_waiting_requests, "delay", recorder)
    _submit(team, requester, django_capture_on_commit_callbacks, 1)
    assert len(recorder.calls) == 1
    assert check_waiting_requests.run() == "checked:2"


def test_the_token_row_is_created_on_first_use_and_only_once():
    WakeToken.objects.all().delete()  # as in a database flushed between tests
    assert wake_arm(CHECKS_TOKEN) is True  # created armed: the caller sends the message
    assert wake_arm(CHECKS_TOKEN) is False  # armed: nobody else sends one
    assert WakeToken.objects.count() == 1


def test_batch_size_one_keeps_one_message_per_request(
        settings, team, requester, published, monkeypatch,
        django_capture_on_commit_callbacks):
    settings.RELAY_CHECK_BATCH_SIZE = 1
    own = _Published()
    monkeypatch.setattr(run_request_checks, "delay", own)
    ids = _submit(team, requester, django_capture_on_commit_callbacks, 3)
    assert published.calls == []
    assert own.calls == [(pk,) for pk in ids]


def test_the_sweep_sends_one_wake_up_for_a_burst_whose_message_was_lost(
        settings, team, requester, published, django_capture_on_commit_callbacks):
    settings.RELAY_CHECK_BATCH_SIZE = 50
    settings.RELAYDESK_SWEEP_AFTER_SECONDS = 60
    # given three submissions whose one wake-up message the broker lost
    ids = _submit(team, requester, django_capture_on_commit_callbacks, 3)
    assert len(published.calls) == 1
    RelayRequest.objects.filter(pk__in=ids).update(
        updated_at=timezone.now() - timedelta(minutes=5))
    # when the sweep runs
    assert sweep_pending_work()["checks"] == 3
    # then it sent one wake-up message for the three, not three messages
    assert len(published.calls) == 2
    assert check_waiting_requests.run() == "checked:3"
    assert _recorded(ids) == {pk: 1 for pk in ids}


def test_a_failing_batch_gives_its_claim_back_at_once(
        settings, team, requester, published, monkeypatch,
        django_capture_on_commit_callbacks):
    settings.RELAY_CHECK_BATCH_SIZE = 50
    ids = _submit(team, requester, django_capture_on_commit_callbacks, 3)

    def broken(requests):
        raise RuntimeError("engine crashed")

    monkeypatch.setattr(checking, "run_checks_for_many", broken)
    # when the engine fails in the middle of a batch
    with pytest.raises(RuntimeError):
        check_waiting_requests.run()
    # then no request is left leased: the next wake-up takes them, not the sweep later
    assert set(RelayRequest.objects.filter(pk__in=ids).values_list(
        "state", "check_next_attempt_at")) == {(S.CHECKING, None)}
    monkeypatch.undo()
    assert check_waiting_requests.run() == "checked:3"


def test_an_eager_run_loops_over_the_batches_instead_of_nesting_tasks(
        settings, team, requester):
    # given more waiting requests than one batch holds
    settings.RELAY_CHECK_BATCH_SIZE = 2
    ids = [RelayRequestFactory(team=team, created_by=requester, state=S.CHECKING).pk
           for _ in range(9)]
    # when one wake-up runs in eager mode (tests, benchmarks): the same task loops over
    # the batches (a nested task per batch would return after its first two, and a long
    # burst would exceed the recursion limit)
    assert check_waiting_requests.apply().result == "checked:9"
    assert _recorded(ids) == {pk: 1 for pk in ids}


@pytest.mark.django_db(transaction=True)
def test_a_row_locked_during_the_claim_gets_a_wake_up_a_second_later(
        settings, team, requester, published):
    if connection.vendor != "postgresql":
        pytest.skip("SKIP LOCKED needs PostgreSQL; CI runs this file with DATABASE_URL set")
    settings.RELAY_CHECK_BATCH_SIZE = 50
    free, held = (RelayRequestFactory(team=team, created_by=requester, state=S.CHECKING)
                  for _ in range(2))
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:  # another transaction holds one row (an approver's refused action)
        try:
            with transaction.atomic():
                list(RelayRequest.objects.select_for_update().filter(pk=held.pk))
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        # when the wake-up runs while the row is locked: it checks the free one
        assert check_waiting_requests.run() == "checked:1"
    finally:
        release.set()
        holder.join(30)
    # then the locked one, which has no message of its own, gets one a second later
    assert published.calls == [()]
    assert RelayRequest.objects.get(pk=held.pk).state == S.CHECKING
    assert check_waiting_requests.run() == "checked:1"
    assert RelayRequest.objects.get(pk=free.pk).state == S.PENDING_APPROVAL


def test_a_request_whose_checks_crash_does_not_stop_the_batch(
        settings, team, requester, published, monkeypatch,
        django_capture_on_commit_callbacks):
    # given three waiting requests, the checks of one of which crash the engine
    settings.RELAY_CHECK_BATCH_SIZE = 50
    settings.RELAY_CHECK_MAX_RETRIES = 3
    ids = _submit(team, requester, django_capture_on_commit_callbacks, 3)
    RelayRequest.objects.filter(pk=ids[1]).update(fqdn="crash.example.org")
    poison = RelayRequest.objects.get(pk=ids[1])
    real = checking.run_many_sync
    retries = _Published()
    monkeypatch.setattr(run_request_checks, "apply_async", retries)

    def engine(specs, *args, **kwargs):
        if any(spec.fqdn == poison.fqdn for spec in specs):
            raise RuntimeError("a bug outside any one check")
        return real(specs, *args, **kwargs)

    monkeypatch.setattr(checking, "run_many_sync", engine)
    # when the wake-up runs the batch
    assert check_waiting_requests.run() == "checked:3"
    # then the other two went on, and the crashed one has an error result to retry
    states = dict(RelayRequest.objects.filter(pk__in=ids).values_list("pk", "state"))
    assert states == {ids[0]: S.PENDING_APPROVAL, ids[1]: S.CHECKING,
                      ids[2]: S.PENDING_APPROVAL}
    poison.refresh_from_db()
    assert poison.check_verdict == "error" and poison.check_next_attempt_at is not None
    (crashed,) = poison.checks.all()
    assert (crashed.check_id, crashed.status) == ("checks_run", "error")
    assert "internal error: RuntimeError" in crashed.detail
    assert len(retries.calls) == 1  # its own retry chain, with backoff
    # and the next wake-up does not claim it before its retry is due
    assert check_waiting_requests.run() == "none"
