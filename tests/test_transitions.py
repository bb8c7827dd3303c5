"""The state machine through the services: allowed and forbidden actions, audit rows."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError

from requests_app import services
from requests_app.exceptions import ActionConflict
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory
from tests.factories import member_of

pytestmark = pytest.mark.django_db

APPROVER_ACTIONS = ("approve", "reject", "request_changes", "revoke", "recheck")

# (state, action, allowed?) for an independent approver / a team member.
GRID = [
    pytest.param(S.PENDING_APPROVAL, "approve", True, id="pending_approve_case"),
    pytest.param(S.PENDING_APPROVAL, "reject", True, id="pending_reject_case"),
    pytest.param(S.PENDING_APPROVAL, "request_changes", True, id="pending_changes_case"),
    pytest.param(S.PENDING_APPROVAL, "recheck", True, id="pending_recheck_case"),
    pytest.param(S.ACTIVE, "revoke", True, id="active_revoke_case"),
    pytest.param(S.DRAFT, "approve", False, id="draft_approve_case"),
    pytest.param(S.CHECKING, "approve", False, id="checking_approve_case"),
    pytest.param(S.NEEDS_CHANGES, "approve", False, id="needs_changes_approve_case"),
    pytest.param(S.ACTIVE, "approve", False, id="active_approve_case"),
    pytest.param(S.REJECTED, "approve", False, id="rejected_approve_case"),
    pytest.param(S.PENDING_APPROVAL, "revoke", False, id="pending_revoke_case"),
    pytest.param(S.WITHDRAWN, "reject", False, id="withdrawn_reject_case"),
    pytest.param(S.REVOKED, "revoke", False, id="revoked_revoke_case"),
]

REQUESTER_GRID = [
    pytest.param(S.DRAFT, "submit", True, id="draft_submit_case"),
    pytest.param(S.NEEDS_CHANGES, "submit", True, id="needs_changes_resubmit_case"),
    pytest.param(S.DRAFT, "withdraw", True, id="draft_withdraw_case"),
    pytest.param(S.CHECKING, "withdraw", True, id="checking_withdraw_case"),
    pytest.param(S.NEEDS_CHANGES, "withdraw", True, id="needs_changes_withdraw_case"),
    pytest.param(S.PENDING_APPROVAL, "withdraw", True, id="pending_withdraw_case"),
    pytest.param(S.ACTIVE, "withdraw", False, id="active_withdraw_case"),
    pytest.param(S.PENDING_APPROVAL, "submit", False, id="pending_submit_case"),
    pytest.param(S.REJECTED, "submit", False, id="rejected_submit_case"),
]


def _events(req: RelayRequest) -> list[RequestEvent]:
    return list(RequestEvent.objects.filter(request=req))


@pytest.mark.parametrize(("state", "action", "allowed"), GRID)
def test_approver_action_grid(state, action, allowed, approver, team, requester):
    # given
    req = RelayRequestFactory(team=team, created_by=requester, state=state,
                              check_verdict="pass")
    before = _events(req)
    # when / then
    if allowed:
        services.request_act(request_id=req.pk, action=action, by=approver,
                             comment="reason given", source_ip="192.0.2.7")
        req.refresh_from_db()
        assert req.state != state
        event = _events(req)[-1]
        assert (event.actor, event.from_state, event.to_state) == (approver, state, req.state)
        assert event.source_ip == "192.0.2.7"
        assert event.comment == "reason given"
    else:
        with pytest.raises(ActionConflict):
            services.request_act(request_id=req.pk, action=action, by=approver,
                                 comment="reason given")
        req.refresh_from_db()
        assert req.state == state
        assert _events(req) == before


@pytest.mark.parametrize(("state", "action", "allowed"), REQUESTER_GRID)
def test_requester_action_grid(state, action, allowed, team, requester):
    req = RelayRequestFactory(team=team, created_by=requester, state=state)
    if allowed:
        services.request_act(request_id=req.pk, action=action, by=requester)
        req.refresh_from_db()
        assert req.state in (S.CHECKING, S.WITHDRAWN, S.PENDING_APPROVAL)
        assert _events(req)[0].parameters["action"] == action
    else:
        with pytest.raises(ActionConflict):
            services.request_act(request_id=req.pk, action=action, by=requester)
        req.refresh_from_db()
        assert req.state == state
        assert _events(req) == []


@pytest.mark.parametrize("action", APPROVER_ACTIONS)
def test_requester_cannot_take_approver_actions(action, team, requester):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL)
    with pytest.raises(PermissionDenied, match="Only approvers"):
        services.request_act(request_id=req.pk, action=action, by=requester, comment="x")
    req.refresh_from_db()
    assert req.state == S.PENDING_APPROVAL
    assert _events(req) == []


def test_outsider_cannot_submit_or_withdraw(team, requester):
    req = RelayRequestFactory(team=team, created_by=requester)
    outsider = member_of(RelayRequestFactory().team)
    for action in ("submit", "withdraw"):
        with pytest.raises(PermissionDenied, match="owning team"):
            services.request_act(request_id=req.pk, action=action, by=outsider)
    req.refresh_from_db()
    assert req.state == S.DRAFT


def test_approver_cannot_decide_own_request(team):
    # given an approver who filed a request for a team they belong to
    approver = ApproverFactory()
    from requests_app.models import Membership

    Membership.objects.create(team=team, user=approver)
    req = RelayRequestFactory(team=team, created_by=approver, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    # when / then
    with pytest.raises(PermissionDenied, match="filed themselves"):
        services.request_act(request_id=req.pk, action="approve", by=approver)
    req.refresh_from_db()
    assert req.state == S.PENDING_APPROVAL


def test_approver_cannot_decide_for_own_team(team, requester):
    approver = member_of(team, username="teamapprover")
    approver.groups.add(ApproverFactory().groups.first())
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    with pytest.raises(PermissionDenied, match="team they are a member of"):
        services.request_act(request_id=req.pk, action="approve", by=approver)
    assert RelayRequest.objects.get(pk=req.pk).state == S.PENDING_APPROVAL


@pytest.mark.parametrize("action", ["reject", "request_changes", "revoke", "override_checks"])
def test_decisions_that_need_a_comment_refuse_without_one(action, approver, team, requester):
    state = S.ACTIVE if action == "revoke" else S.PENDING_APPROVAL
    req = RelayRequestFactory(team=team, created_by=requester, state=state,
                              check_verdict="fail")
    with pytest.raises(ValidationError) as info:
        services.request_act(request_id=req.pk, action=action, by=approver, comment="  ")
    assert "comment" in info.value.message_dict
    assert RelayRequest.objects.get(pk=req.pk).state == state


def test_failed_checks_block_approval_until_overridden(approver, team, requester):
    # given a request whose checks errored (DNS never answered) and went to approvers
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="error")
    # when approving without override
    with pytest.raises(ActionConflict, match="override"):
        services.request_act(request_id=req.pk, action="approve", by=approver)
    # then an override with a reason is audited and unlocks approval
    services.request_act(request_id=req.pk, action="override_checks", by=approver,
                         comment="DNS outage; verified by phone with the team")
    services.request_act(request_id=req.pk, action="approve", by=approver)
    req.refresh_from_db()
    assert req.state == S.PROVISIONING or req.state == S.ACTIVE
    override = RequestEvent.objects.get(request=req, type="override")
    assert override.comment == "DNS outage; verified by phone with the team"
    assert override.actor == approver


def test_override_from_needs_changes_returns_to_queue(approver, team, requester):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.NEEDS_CHANGES,
                              check_verdict="fail")
    services.request_act(request_id=req.pk, action="override_checks", by=approver,
                         comment="PTR managed by the provider; ticket 123")
    req.refresh_from_db()
    assert req.state == S.PENDING_APPROVAL
    assert req.override_reason == "PTR managed by the provider; ticket 123"


def test_override_refused_when_nothing_failed(approver, team, requester):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    with pytest.raises(ActionConflict, match="no failed check"):
        services.request_act(request_id=req.pk, action="override_checks", by=approver,
                             comment="why not")


def test_audit_events_are_immutable(server_request, requester):
    services.request_act(request_id=server_request.pk, action="withdraw", by=requester)
    event = RequestEvent.objects.get(request=server_request)
    event.comment = "rewritten"
    with pytest.raises(ValueError, match="immutable"):
        event.save()
    with pytest.raises(ValueError, match="immutable"):
        event.delete()
    assert RequestEvent.objects.get(pk=event.pk).comment == ""


def test_state_field_is_protected(server_request):
    with pytest.raises(AttributeError):
        server_request.state = S.ACTIVE
