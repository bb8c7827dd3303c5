"""After approval: recertify, renew, hand over, reminders and expiry."""

from __future__ import annotations

from datetime import date
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError

from requests_app import services
from requests_app.exceptions import ActionConflict
from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.factories import member_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def active(team, requester):
    return RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                               recertify_by=date(2027, 1, 31))


def test_activation_sets_recertification_date(team, requester, settings):
    settings.RELAY_RECERTIFY_AFTER = timedelta(days=365)
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PROVISIONING)
    req.activate()
    assert req.recertify_by == (req.activated_at + timedelta(days=365)).date()


def test_owner_recertifies_in_one_click(active, requester):
    services.request_act(request_id=active.pk, action="recertify", by=requester,
                         source_ip="10.0.0.5")
    active.refresh_from_db()
    assert active.state == S.ACTIVE
    assert active.recertify_by > date(2027, 1, 31)
    event = RequestEvent.objects.get(request=active)
    assert (event.parameters["action"], event.actor, event.source_ip) == (
        "recertify", requester, "10.0.0.5")


def test_only_owners_recertify(active, approver):
    with pytest.raises(PermissionDenied):
        services.request_act(request_id=active.pk, action="recertify", by=approver)
    assert not RequestEvent.objects.filter(request=active).exists()


def test_renew_creates_a_linked_draft(active, requester):
    copy = services.request_renew(request_id=active.pk, by=requester)
    assert (copy.state, copy.replaces_id, copy.fqdn, copy.ipv4) == (
        S.DRAFT, active.pk, active.fqdn, active.ipv4)
    active.refresh_from_db()
    assert active.state == S.ACTIVE  # stays in the relay config until the copy is approved


def test_renew_refused_for_open_requests(team, requester):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL)
    with pytest.raises(ActionConflict):
        services.request_renew(request_id=req.pk, by=requester)


def test_handover_moves_entry_and_tells_both_teams(active, requester,
                                                   django_capture_on_commit_callbacks):
    other = TeamFactory(slug="billing", contact_email="billing@teams.example.org")
    with django_capture_on_commit_callbacks(execute=True):
        services.request_handover(request_id=active.pk, by=requester, to_team="billing",
                                  comment="billing owns the host now")
    active.refresh_from_db()
    assert active.team == other
    event = RequestEvent.objects.get(request=active, type="handover")
    assert event.parameters == {"from_team": "payments", "to_team": "billing"}
    mail = Notification.objects.get(request=active, kind="handover")
    assert "billing@teams.example.org" in mail.recipients
    assert "payments@teams.example.org" in mail.recipients
    # the old team no longer sees it
    from requests_app.selectors import request_list_for_user

    assert not request_list_for_user(requester).filter(pk=active.pk).exists()


def test_handover_rules(active, requester):
    outsider = member_of(TeamFactory(slug="outside"))
    with pytest.raises(PermissionDenied):
        services.request_handover(request_id=active.pk, by=outsider, to_team="outside")
    with pytest.raises(ValidationError):
        services.request_handover(request_id=active.pk, by=requester, to_team="nope")
    with pytest.raises(ValidationError):
        services.request_handover(request_id=active.pk, by=requester, to_team="payments")
    assert RelayRequest.objects.get(pk=active.pk).team.slug == "payments"


@pytest.mark.parametrize("days", [30, 7, 1])
def test_reminders_go_once_at_each_step(active, days):
    from requests_app.recertification import _remind

    today = active.recertify_by - timedelta(days=days)
    assert _remind(today, days) == 1
    assert _remind(today, days) == 0  # a second sweep the same day sends nothing
    mail = Notification.objects.get(request=active, kind="recertify_reminder")
    assert mail.context["days"] == days
    assert mail.recipients == sorted({"ops@example.org", "payments@teams.example.org",
                                      "alice@people.example.org"})


def test_no_reminder_on_other_days(active):
    from requests_app.recertification import _remind

    assert _remind(active.recertify_by - timedelta(days=8), 7) == 0
    assert not Notification.objects.exists()


def test_sweep_expires_overdue_entries_once(active, django_capture_on_commit_callbacks):
    from requests_app.recertification import recertification_sweep

    with django_capture_on_commit_callbacks(execute=True):
        first = recertification_sweep(today=active.recertify_by + timedelta(days=1))
        second = recertification_sweep(today=active.recertify_by + timedelta(days=1))
    assert (first.expired, second.expired) == (1, 0)
    active.refresh_from_db()
    assert active.state == S.EXPIRED
    event = RequestEvent.objects.get(request=active, parameters__action="expire")
    assert (event.actor, event.from_state, event.to_state) == (None, "active", "expired")
    assert Notification.objects.filter(request=active, kind="expired").count() == 1


def test_sweep_leaves_entries_due_today(active):
    from requests_app.recertification import recertification_sweep

    stats = recertification_sweep(today=active.recertify_by)
    assert stats.expired == 0
    assert RelayRequest.objects.get(pk=active.pk).state == S.ACTIVE


def test_expired_entry_can_be_requested_again(active, requester):
    services.request_expire(request_id=active.pk)
    copy = services.request_renew(request_id=active.pk, by=requester)
    assert copy.state == S.DRAFT and copy.replaces_id == active.pk


def test_approved_renewal_supersedes_the_original(active, requester, approver,
                                                  django_capture_on_commit_callbacks):
    # given a renewal with a changed address, checked and pending
    copy = services.request_renew(request_id=active.pk, by=requester)
    from requests_app.models import content_fingerprint

    RelayRequest.objects.filter(pk=copy.pk).update(state=S.PENDING_APPROVAL,
                                                   check_verdict="pass",
                                                   checked_fingerprint=content_fingerprint(copy))
    # when approved (the eager provisioning task builds the config)
    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=copy.pk, action="approve", by=approver)
    # then the renewal is active and the original left the config in the same version
    copy.refresh_from_db()
    active.refresh_from_db()
    assert (copy.state, active.state) == (S.ACTIVE, S.REVOKED)
    assert RequestEvent.objects.filter(request=active, parameters__action="supersede").exists()


def test_suspended_entries_leave_the_relay_config(active):
    from django.utils import timezone

    from requests_app.relay import relay_entries

    servers, _ = relay_entries()
    assert [s.request_id for s in servers] == [active.pk]
    RelayRequest.objects.filter(pk=active.pk).update(suspended_at=timezone.now())
    servers, _ = relay_entries()
    assert list(servers) == []


def test_api_recertify_renew_and_handover(active, requester):
    from rest_framework.test import APIClient

    TeamFactory(slug="billing")
    client = APIClient()
    client.force_authenticate(requester)
    assert client.post(f"/api/requests/{active.pk}/recertify/").json()["state"] == "active"
    renewed = client.post(f"/api/requests/{active.pk}/renew/")
    assert renewed.status_code == 201 and renewed.json()["state"] == "draft"
    bad = client.post(f"/api/requests/{active.pk}/handover/", {"team": "nope"}, format="json")
    assert bad.status_code == 400 and "team" in bad.json()
    moved = client.post(f"/api/requests/{active.pk}/handover/", {"team": "billing"},
                        format="json")
    assert moved.status_code == 200 and moved.json()["team"] == "billing"
    # the requester's team no longer owns it: further actions are not found
    assert client.post(f"/api/requests/{active.pk}/recertify/").status_code == 404
