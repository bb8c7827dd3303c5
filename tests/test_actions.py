"""Actions are declared once (requests_app/actions.py): the state machine, permissions,
endpoints, buttons, messages and mails all follow the declaration."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from requests_app import actions
from requests_app import notifications
from requests_app import relay
from requests_app.actions import ACTIONS
from requests_app.actions import USER_ACTIONS
from requests_app.actions import Action
from requests_app.actions import Role
from requests_app.models import ROLE_PERMISSIONS
from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.models import permission_of
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _transitions() -> list:
    field = RelayRequest._meta.get_field("state")
    return list(field.get_all_transitions(RelayRequest))


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_every_transition_has_exactly_one_action_declaration():
    # given the state machine as django-fsm sees it
    transitions = _transitions()
    names = {t.name for t in transitions}
    # then each transition is declared, and nothing is declared that is not a transition
    assert names == set(ACTIONS), (names ^ set(ACTIONS))
    for transition in transitions:
        spec = ACTIONS[transition.name]
        assert spec.name == transition.name
        # its permission is the one of its declared role, not a rule of its own
        assert transition.permission is ROLE_PERMISSIONS[spec.role], transition.name
        assert transition.permission is permission_of(transition.name)
        # the comment goes to a keyword the transition really takes
        parameters = inspect.signature(transition.method).parameters
        if spec.comment_arg:
            assert spec.comment_arg in parameters, transition.name
        if spec.by_user:
            assert "by" in parameters and spec.label, transition.name
        else:
            assert not spec.label and not spec.shows_comment, transition.name


def test_an_action_declared_twice_is_refused_at_import():
    twice = Action("withdraw", role=Role.REQUESTER, past="withdrawn", label="Withdraw")
    with pytest.raises(ValueError, match="'withdraw' is declared twice"):
        actions._index(twice, twice)


def test_permissions_follow_the_declared_role(team, requester):
    # given a pending request, a member of its team, an independent approver and an
    # approver of the same team
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL)
    approver = ApproverFactory()
    own_team_approver = ApproverFactory()
    from requests_app.models import Membership

    Membership.objects.create(team=team, user=own_team_approver)
    outsider = UserFactory()
    for transition in _transitions():
        role = ACTIONS[transition.name].role
        # then each may fire exactly what its role allows
        assert transition.has_perm(req, requester) is (role is Role.REQUESTER)
        assert transition.has_perm(req, approver) is (role is Role.INDEPENDENT_APPROVER)
        assert transition.has_perm(req, own_team_approver) is (role is Role.REQUESTER)
        assert transition.has_perm(req, outsider) is False


def test_every_action_a_person_fires_has_a_web_and_an_api_endpoint():
    for name in USER_ACTIONS:
        assert reverse(f"requests:{name}", args=[1]) == f"/requests/1/{name}/"
        assert reverse(f"api:request-{name}", args=[1]) == f"/api/requests/1/{name}/"
    for name, spec in ACTIONS.items():
        if not spec.by_user:
            assert name not in USER_ACTIONS


def test_the_request_page_shows_the_declared_buttons_and_comment_boxes(team, requester,
                                                                       approver):
    # given a request awaiting approval with a current passing verdict
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    # when the approver opens it
    page = logged_in(approver).get(req.get_absolute_url()).content.decode()
    # then every button is the declaration's label, in one panel with ONE comment box
    # that says which of them need it
    shown = ("approve", "reject", "request_changes", "recheck")
    for name in shown:
        spec = ACTIONS[name]
        assert f'class="action action-{name}' in page
        assert f">{spec.label}</button>" in page
    assert page.count('name="comment"') == 1
    assert "Required to: Reject, Ask for changes." in page
    assert "action-withdraw" not in page and "action-override_checks" not in page


def test_a_done_action_says_what_happened_in_the_past_tense(team, requester, approver):
    # given a request awaiting approval
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    # when the approver sends it back for changes on the web
    response = logged_in(approver).post(reverse("requests:request_changes", args=[req.pk]),
                                        {"comment": "use the new host"}, follow=True)
    # then the message is the declaration's past tense
    messages = [str(m) for m in response.context["messages"]]
    assert messages == [f"Request #{req.pk} sent back for changes."]
    req.refresh_from_db()
    assert req.state == S.NEEDS_CHANGES


@pytest.mark.parametrize("name", [n for n in USER_ACTIONS if n != "retry_provisioning"])
def test_a_refused_action_names_its_past_tense(name, team, requester, approver):
    # given a withdrawn request (no action leads out of it) whose checks failed
    req = RelayRequestFactory(team=team, created_by=requester, state=S.WITHDRAWN,
                              check_verdict="fail")
    spec = USER_ACTIONS[name]
    user = requester if spec.role is Role.REQUESTER else approver
    client = APIClient()
    client.force_authenticate(user)
    # when the action is asked for through the API
    response = client.post(f"/api/requests/{req.pk}/{name}/", {"comment": "why"},
                           format="json")
    # then 409, in words made from the declaration (no "withdrawed")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"A request in state 'withdrawn' cannot be {spec.past}."
    )
    assert RelayRequest.objects.get(pk=req.pk).state == S.WITHDRAWN


def test_every_declared_notice_has_its_mail_templates_and_trigger():
    templates = Path(settings.BASE_DIR) / "templates" / "requests_app" / "emails"
    for name, spec in ACTIONS.items():
        if spec.notice is None:
            assert name not in notifications.KINDS_BY_TRIGGER
            continue
        kind = spec.notice.kind
        assert notifications.KINDS_BY_TRIGGER[name] == (kind, spec.notice.audience)
        for part in ("subject.txt", "body.txt", "body.html"):
            assert (templates / f"{kind}_{part}").is_file(), f"{kind}_{part}"
    # the mails the config build writes are the declared after-removal ones
    assert set(relay.REMOVAL_TRIGGERS) == {"revoke", "expire"} == set(actions.AFTER_REMOVAL)
    assert set(actions.AFTER_REMOVAL.values()) == {"revoked", "expired"}


def test_a_fired_action_sends_its_declared_mail(team, requester, approver):
    # given a request awaiting approval
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    from requests_app import services

    # when an approver rejects it
    services.request_act(request_id=req.pk, action="reject", by=approver, comment="no")
    # then the one mail is the declared kind, to the declared audience (the owners)
    mail = Notification.objects.get(request=req)
    assert mail.kind == ACTIONS["reject"].notice.kind
    assert requester.email in mail.recipients and approver.email not in mail.recipients
