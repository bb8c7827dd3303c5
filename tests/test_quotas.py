"""Sandbox -> production access: every entry starts in the sandbox, the owners ask, an
approver of another team grants (the volume becomes the daily quota and the relay config
is rebuilt) or refuses with a reason. Audited, mailed, through the web form and the API."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError
from django.test import Client
from rest_framework.test import APIClient

from requests_app import quotas
from requests_app import relay
from requests_app import services
from requests_app.exceptions import ActionConflict
from requests_app.models import Membership
from requests_app.models import Notification
from requests_app.models import QuotaTier
from requests_app.models import RelayConfigVersion
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.notifications import render_notification
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

GOOD = {"volume": 5000, "use_case": "Order confirmations to our own customers",
        "bounce_handling": "Bounces go to ops@example.org; addresses that bounce twice or "
                           "complain are removed the same day."}


@pytest.fixture(autouse=True)
def _quota_settings(settings):
    settings.RELAY_SANDBOX_DAILY_LIMIT = 200
    settings.RELAY_SANDBOX_PER_SECOND = 1
    settings.RELAY_PRODUCTION_PER_SECOND = 14


@pytest.fixture
def entry(team, requester):
    """An active server entry in the sandbox (as every approved entry starts)."""
    return RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                               check_verdict="pass", expected_daily_volume=100)


def ask(entry, requester, **changes):
    return quotas.request_production_access(request_id=entry.pk, by=requester,
                                            source_ip="192.0.2.5", **{**GOOD, **changes})


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def quota_events(entry) -> list[RequestEvent]:
    return list(RequestEvent.objects.filter(
        request=entry, parameters__action__in=("request_production", "grant_production",
                                               "refuse_production")).order_by("pk"))


def test_a_new_request_starts_in_the_sandbox_with_the_sandbox_limits(team, requester):
    # when a team member files a request through the service
    req = services.request_create(by=requester, team=team, kind="server", data={
        "contact_email": "ops@example.org", "fqdn": "app.example.org",
        "ipv4": ["81.2.69.10"], "purpose": "Order confirmations",
        "sender_domains": ["example.org"], "expected_daily_volume": 50000})
    # then it is a sandbox entry whatever volume it expects, with the settings' limits
    assert req.quota_tier == QuotaTier.SANDBOX and req.production_requested_at is None
    assert quotas.limits_for(req) == quotas.QuotaLimits("sandbox", 200, 1)


def test_ask_then_grant_gives_production_audited_mailed_and_in_the_relay_entries(
    entry, requester, approver, django_capture_on_commit_callbacks
):
    # when the owner asks for production access
    with django_capture_on_commit_callbacks(execute=True):
        ask(entry, requester)
    entry.refresh_from_db()
    # then the request waits, with what was asked, who asked and from where
    assert entry.production_requested_at is not None and entry.quota_tier == "sandbox"
    assert (entry.production_volume, entry.production_use_case) == (5000, GOOD["use_case"])
    asked = quota_events(entry)[-1]
    assert (asked.actor, asked.source_ip, asked.from_state, asked.to_state) == (
        requester, "192.0.2.5", "active", "active")
    assert asked.parameters["volume"] == 5000
    assert asked.parameters["bounce_handling"] == GOOD["bounce_handling"]
    # and the approvers got one mail quoting the volume, use case and bounce handling
    to_approvers = Notification.objects.get(request=entry, kind="production_requested")
    assert approver.email in to_approvers.recipients
    assert requester.email not in to_approvers.recipients
    body = render_notification(to_approvers).body
    assert "5000" in body and GOOD["use_case"] in body and "ops@example.org; addresses" in body
    versions_before = RelayConfigVersion.objects.count()
    # when an approver of another team grants it
    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=entry.pk, action="grant_production", by=approver,
                             comment="bounce handling is fine", source_ip="198.51.100.9")
    entry.refresh_from_db()
    # then the entry is in production with the asked volume as its daily quota
    assert entry.state == S.ACTIVE and entry.quota_tier == QuotaTier.PRODUCTION
    assert entry.expected_daily_volume == 5000 and entry.production_requested_at is None
    assert quotas.limits_for(entry) == quotas.QuotaLimits("production", 5000, 14)
    granted = quota_events(entry)[-1]
    assert (granted.actor, granted.source_ip, granted.comment) == (
        approver, "198.51.100.9", "bounce handling is fine")
    # and the owners got one mail, the approvers' mail was not repeated
    to_owners = Notification.objects.get(request=entry, kind="production_granted")
    assert requester.email in to_owners.recipients and approver.email not in to_owners.recipients
    assert "5000 messages per 24 hours" in render_notification(to_owners).body
    assert Notification.objects.filter(request=entry).count() == 2
    # and the relay config was rebuilt from entries that carry the production quota
    servers, _accounts = relay.relay_entries()
    (server,) = [s for s in servers if s.request_id == entry.pk]
    assert (server.production, server.daily_volume) == (True, 5000)
    newest = RelayConfigVersion.objects.order_by("-number").first()
    assert RelayConfigVersion.objects.count() == versions_before + 1
    assert newest.reason == f"production access for #{entry.pk}"
    assert f" {entry.pk} 5000/86400,14/1 " in newest.files["relay_policy"]


def test_grant_dispatches_the_relay_config_rebuild(entry, requester, approver, monkeypatch):
    # given a pending request for production access
    ask(entry, requester)
    dispatched: list[tuple[str, tuple]] = []
    monkeypatch.setattr(services, "dispatch_on_commit",
                        lambda name, *args: dispatched.append((name, args)))
    # when an approver grants it
    services.request_act(request_id=entry.pk, action="grant_production", by=approver)
    # then the rebuild is asked for (the notification goes through its own module)
    assert dispatched == [("rebuild_relay_config", (f"production access for #{entry.pk}",))]


def test_refusal_needs_a_reason_and_keeps_the_sandbox(entry, requester, approver):
    # given a pending request for production access
    ask(entry, requester)
    # when an approver refuses without a reason
    with pytest.raises(ValidationError) as refused:
        services.request_act(request_id=entry.pk, action="refuse_production", by=approver)
    # then 400 on the comment, and the request still waits
    assert "A written reason is required to refuse production." in \
        refused.value.message_dict["comment"]
    assert RelayRequest.objects.get(pk=entry.pk).production_requested_at is not None
    # when they refuse with a reason
    services.request_act(request_id=entry.pk, action="refuse_production", by=approver,
                         comment="no bounce address is read")
    entry.refresh_from_db()
    # then the entry stays in the sandbox, the owners are told why, and may ask again
    assert entry.quota_tier == "sandbox" and entry.production_requested_at is None
    assert entry.expected_daily_volume == 100
    mail = Notification.objects.get(request=entry, kind="production_refused")
    assert requester.email in mail.recipients
    assert "no bounce address is read" in render_notification(mail).body
    ask(entry, requester, volume=800)
    assert RelayRequest.objects.get(pk=entry.pk).production_volume == 800


def test_an_approver_of_the_owning_team_cannot_grant(entry, requester, approver):
    # given a pending request and an approver who is a member of the owning team
    ask(entry, requester)
    insider = ApproverFactory()
    Membership.objects.create(team=entry.team, user=insider)
    # when they try to grant it, or the requester does
    with pytest.raises(PermissionDenied, match="a team they are a member of"):
        services.request_act(request_id=entry.pk, action="grant_production", by=insider)
    with pytest.raises(PermissionDenied, match="Only approvers can grant production"):
        services.request_act(request_id=entry.pk, action="grant_production", by=requester)
    # then nothing changed; an independent approver still can
    assert RelayRequest.objects.get(pk=entry.pk).quota_tier == "sandbox"
    response = api(insider).post(f"/api/requests/{entry.pk}/grant_production/", {},
                                 format="json")
    assert response.status_code == 403
    services.request_act(request_id=entry.pk, action="grant_production", by=approver)
    assert RelayRequest.objects.get(pk=entry.pk).quota_tier == "production"


def test_only_members_of_the_owning_team_may_ask(entry):
    outsider = UserFactory()
    response = api(outsider).post(f"/api/requests/{entry.pk}/request_production/", GOOD,
                                  format="json")
    assert response.status_code == 404  # not even visible to them
    approver = ApproverFactory()
    response = api(approver).post(f"/api/requests/{entry.pk}/request_production/", GOOD,
                                  format="json")
    assert response.status_code == 403
    assert response.json()["detail"] == \
        "Only members of the owning team can request production."


def test_a_second_request_while_one_is_pending_is_a_conflict(entry, requester, approver):
    # given a pending request for 5000 a day
    ask(entry, requester)
    events = quota_events(entry)
    # when the owner asks again through the API
    response = api(requester).post(f"/api/requests/{entry.pk}/request_production/",
                                   {**GOOD, "volume": 9000}, format="json")
    # then 409 saying a request waits, and the first request is untouched
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "was already requested on" in detail and "waits for an approver" in detail
    entry.refresh_from_db()
    assert entry.production_volume == 5000 and quota_events(entry) == events
    assert Notification.objects.filter(request=entry).count() == 1


def test_decisions_without_a_pending_request_and_asking_in_production_are_conflicts(
    entry, requester, approver
):
    # given an entry nobody asked production for
    with pytest.raises(ActionConflict, match="has no pending request for production"):
        services.request_act(request_id=entry.pk, action="grant_production", by=approver)
    # and an entry already in production
    RelayRequest.objects.filter(pk=entry.pk).update(quota_tier="production")
    with pytest.raises(ActionConflict, match="already has production access"):
        ask(entry, requester)
    # and a request that is not active yet
    draft = RelayRequestFactory(team=entry.team, created_by=requester)
    with pytest.raises(ActionConflict, match="A request in state 'draft' cannot be sent to "
                                             "approvers for production access."):
        ask(draft, requester)


@pytest.mark.parametrize(("changes", "field", "words"), [
    pytest.param({"volume": 0}, "volume", "at least 1", id="zero"),
    pytest.param({"volume": -5}, "volume", "at least 1", id="negative"),
    pytest.param({"volume": "many"}, "volume", "whole number", id="text"),
    pytest.param({"volume": 2.5}, "volume", "whole number", id="fraction"),
    pytest.param({"volume": True}, "volume", "whole number", id="boolean"),
    pytest.param({"volume": 10_000_001}, "volume", "at most 10,000,000", id="too_many"),
    pytest.param({"volume": None}, "volume", "how many messages", id="missing_volume"),
    pytest.param({"use_case": "  "}, "use_case", "Describe what the entry sends",
                 id="blank_use_case"),
    pytest.param({"use_case": "x" * 2001}, "use_case", "at most 2000 characters",
                 id="long_use_case"),
    pytest.param({"use_case": "ok\u202eevil"}, "use_case", "U+202E", id="bidi_use_case"),
    pytest.param({"bounce_handling": None}, "bounce_handling", "bounces and complaints",
                 id="missing_bounce_handling"),
    pytest.param({"bounce_handling": ["list"]}, "bounce_handling", "must be text",
                 id="list_bounce_handling"),
])
def test_bad_input_is_a_400_naming_the_field_and_saves_nothing(entry, requester, changes,
                                                               field, words):
    events = RequestEvent.objects.filter(request=entry).count()
    # when the owner asks with one bad value
    response = api(requester).post(f"/api/requests/{entry.pk}/request_production/",
                                   {**GOOD, **changes}, format="json")
    # then 400 naming exactly that field, in words that say what is wrong
    assert response.status_code == 400, response.content
    errors = response.json()
    assert list(errors) == [field], errors
    assert words in " ".join(errors[field])
    # and nothing of the request was kept: no field, no event, no mail
    entry.refresh_from_db()
    assert entry.production_requested_at is None and entry.production_volume is None
    assert entry.production_use_case == "" and entry.production_bounce_handling == ""
    assert RequestEvent.objects.filter(request=entry).count() == events
    assert not Notification.objects.filter(request=entry).exists()


def test_every_bad_field_is_named_at_once(entry, requester):
    response = api(requester).post(f"/api/requests/{entry.pk}/request_production/", {},
                                   format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"volume", "use_case", "bounce_handling"}


def test_the_api_asks_and_decides_and_shows_the_quota_read_only(entry, requester, approver):
    # when the owner asks through the API
    response = api(requester).post(f"/api/requests/{entry.pk}/request_production/",
                                   {**GOOD, "volume": "7000"}, format="json")
    # then the answer shows the pending request and the current (sandbox) limits
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["quota_tier"] == "sandbox" and data["production_volume"] == 7000
    assert data["production_requested_at"] is not None
    assert data["quota_limits"] == {"tier": "sandbox", "daily": 200, "per_second": 1}
    # and approvers find it with the production_pending filter
    listed = api(approver).get("/api/requests/?production_pending=true").json()["results"]
    assert [r["id"] for r in listed] == [entry.pk]
    # when an approver grants it
    response = api(approver).post(f"/api/requests/{entry.pk}/grant_production/",
                                  {"comment": "ok"}, format="json")
    # then the entry is in production with the asked volume
    data = response.json()
    assert data["quota_tier"] == "production" and data["expected_daily_volume"] == 7000
    assert data["quota_limits"] == {"tier": "production", "daily": 7000, "per_second": 14}
    assert api(approver).get("/api/requests/?production_pending=true").json()["results"] == []


def test_the_quota_fields_cannot_be_written_directly(team, requester):
    # given a draft
    draft = RelayRequestFactory(team=team, created_by=requester)
    # when its owner patches the quota fields
    response = api(requester).patch(f"/api/requests/{draft.pk}/", {
        "quota_tier": "production", "production_volume": 10, "purpose": "Invoices"},
        format="json")
    # then the edit applies, the quota fields are ignored
    assert response.status_code == 200, response.content
    draft.refresh_from_db()
    assert draft.purpose == "Invoices"
    assert draft.quota_tier == "sandbox" and draft.production_volume is None


def test_the_request_page_shows_limits_and_the_form_to_the_owners(entry, requester,
                                                                  approver):
    # when the owner opens an active sandbox entry
    page = web(requester).get(entry.get_absolute_url()).content.decode()
    # then the tier and the sandbox limits are shown, with the form to ask
    assert "Sending quota" in page and "Sandbox" in page
    assert "up to <strong>200 messages per 24 hours</strong> and <strong>1 per second" in page
    assert 'class="action action-request_production production-form"' in page
    assert 'name="bounce_handling"' in page
    # and the approver sees no form (they are not on the team) and no decision yet
    page = web(approver).get(entry.get_absolute_url()).content.decode()
    assert "production-form" not in page and "action-grant_production" not in page


def test_the_web_form_asks_and_an_approver_decides_on_the_page(entry, requester, approver):
    # when the owner sends the form
    response = web(requester).post(f"/requests/{entry.pk}/request_production/", GOOD,
                                   follow=True)
    # then the page says so and shows the pending request instead of the form
    page = response.content.decode()
    assert f"Request #{entry.pk} sent to approvers for production access." in page
    assert "Production access requested" in page and "production-form" not in page
    assert GOOD["use_case"] in page
    # and the approver sees it in the queue, and the grant and refuse buttons on the page
    queue = web(approver).get("/requests/queue/").content.decode()
    assert "Production access requests" in queue and f"#{entry.pk}</a>" in queue
    page = web(approver).get(entry.get_absolute_url()).content.decode()
    assert "action action-grant_production" in page
    assert "Refuse production access" in page and page.count('name="comment"') == 1
    assert "bounces stay below 5 % and complaints below 0.1 %" in page
    # when the approver grants it on the page
    response = web(approver).post(f"/requests/{entry.pk}/grant_production/",
                                  {"comment": ""}, follow=True)
    # then the page shows the production limits and the decision
    page = response.content.decode()
    assert f"Request #{entry.pk} given production access." in page
    assert "up to <strong>5000 messages per 24 hours</strong> and <strong>14 per second" in page
    assert "Last decision on production access: <strong>granted</strong> by bob" in page


def test_bad_web_input_is_a_400_naming_the_field_with_the_values_kept(entry, requester):
    # when the owner sends the form with a volume of zero and no bounce handling
    response = web(requester).post(f"/requests/{entry.pk}/request_production/",
                                   {**GOOD, "volume": "0", "bounce_handling": ""})
    # then 400: the page names both fields and keeps what was typed
    assert response.status_code == 400
    page = response.content.decode()
    assert "Volume: The volume must be at least 1 message per day." in page
    assert "Bounce handling: Say how bounces and complaints are handled" in page
    assert GOOD["use_case"] in page and 'name="volume"' in page
    assert RelayRequest.objects.get(pk=entry.pk).production_requested_at is None


@pytest.mark.parametrize(("asked", "kept"), [(3000, 3000), (8000, 5000)])
def test_a_renewal_of_a_production_entry_stays_in_production_up_to_the_approved_volume(
    team, requester, approver, asked, kept
):
    # given the team's entry in production at 5000 messages a day
    old = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                              check_verdict="pass", quota_tier=QuotaTier.PRODUCTION,
                              expected_daily_volume=5000)
    # when its renewal, asking for some volume, passes its checks and is approved
    renewal = RelayRequestFactory(team=team, created_by=requester, replaces=old,
                                  state=S.PENDING_APPROVAL, check_verdict="pass",
                                  expected_daily_volume=asked)
    services.request_act(request_id=renewal.pk, action="approve", by=approver)
    renewal.refresh_from_db()
    # then it keeps production, up to the volume approved before
    assert (renewal.quota_tier, renewal.expected_daily_volume) == (QuotaTier.PRODUCTION, kept)


def test_a_new_request_or_another_teams_renewal_starts_in_the_sandbox(team, requester,
                                                                       approver):
    # given another team's entry in production
    other = RelayRequestFactory(state=S.ACTIVE, check_verdict="pass",
                                quota_tier=QuotaTier.PRODUCTION, expected_daily_volume=5000)
    for replaces in (None, other):
        req = RelayRequestFactory(team=team, created_by=requester, replaces=replaces,
                                  state=S.PENDING_APPROVAL, check_verdict="pass")
        # when it is approved
        services.request_act(request_id=req.pk, action="approve", by=approver)
        req.refresh_from_db()
        # then it starts in the sandbox
        assert req.quota_tier == QuotaTier.SANDBOX
