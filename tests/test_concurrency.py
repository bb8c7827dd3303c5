"""Two approvers acting on one request at once: exactly one transition wins."""

from __future__ import annotations

import pytest
from django.db import connection
from django_fsm import ConcurrentTransition

from requests_app import services
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from tests.factories import RelayRequestFactory
from tests.support.race import one_wins
from tests.support.race import race

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_approvers_race_one_wins_the_other_is_told(team, requester, approver,
                                                       second_approver):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL; CI runs this file with DATABASE_URL set")
    # given a pending request
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    actions = {approver.username: "approve", second_approver.username: "reject"}

    # when both act at the same moment (approve vs reject)
    outcomes = race(lambda user: services.request_act(
        request_id=req.pk, action=actions[user.username], by=user, comment="mine"),
        [approver, second_approver])
    # then exactly one transition happened and the loser was told it was already decided
    _winner, told = one_wins(outcomes)
    assert "already decided" in told.lower()
    req.refresh_from_db()
    assert req.state in (S.PROVISIONING, S.ACTIVE, S.REJECTED)
    decisions = RequestEvent.objects.filter(request=req, type="transition",
                                            from_state=S.PENDING_APPROVAL)
    assert decisions.count() == 1


def test_stale_instance_cannot_transition_twice(team, requester, approver):
    """django-fsm's ConcurrentTransitionMixin: a save from a stale copy is refused."""
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    first = RelayRequest.objects.get(pk=req.pk)
    second = RelayRequest.objects.get(pk=req.pk)
    first.approve(by=approver)
    first.save()
    second.reject(by=approver)
    with pytest.raises(ConcurrentTransition):
        second.save()
    assert RelayRequest.objects.get(pk=req.pk).state == S.PROVISIONING
