"""One account per use case, host overlap warnings, and "active means usable".

Issue 13 items 1 and 3: a second open request for an account name is refused naming
the holder (a renewal of the holder is the exception); an FQDN or address another open
request names is a warning on the form, the API and the approver's page; an account is
``active`` only once a relay config version serves it AND its relay-group change is
done, whichever finishes last activates it, once, and the owners get one "you are
live" mail.
"""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from requests_app import accounts
from requests_app import activation
from requests_app import services
from requests_app.directory import directory_mark_done_manually
from requests_app.exceptions import ActionConflict
from requests_app.models import DirectoryChange
from requests_app.models import Notification
from requests_app.models import RelayConfigVersion
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.models import content_fingerprint
from requests_app.notifications import render_notification
from requests_app.relay import relay_config_rebuild
from requests_app.relay import relay_settings
from requests_app.relay_backend import load_backend
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 1, 1, tzinfo=UTC)

ACCOUNT_BODY = {
    "kind": "account", "team": "payments", "account_name": "svc-shop",
    "use_case": "Order confirmations", "tls_mode": "starttls",
    "contact_email": "ops@example.org", "sender_addresses": ["shop@example.org"],
    "expected_daily_volume": 100,
}
SERVER_BODY = {
    "kind": "server", "team": "payments", "fqdn": "app.example.org",
    "ipv4": ["81.2.69.10"], "ipv6": ["2a02:898:0:20::10"], "purpose": "Order mails",
    "contact_email": "ops@example.org", "sender_domains": ["example.org"],
    "expected_daily_volume": 100,
}


@pytest.fixture(autouse=True)
def _manual_directory(settings):
    settings.DIRECTORY_URL = ""  # the relay-group change is a to-do an approver confirms


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def holder(state, **fields) -> RelayRequest:
    """Another team's account request in ``state``."""
    other = TeamFactory(slug="billing")
    return RelayRequestFactory(team=other, account=True, state=state,
                               **{"account_name": "svc-shop", **fields})


# --- 1. one account per use case --------------------------------------------------------


@pytest.mark.parametrize("state", [S.CHECKING, S.PENDING_APPROVAL, S.PROVISIONING,
                                   S.PROVISIONING_FAILED, S.ACTIVE, S.NEEDS_CHANGES])
def test_api_refuses_a_second_request_for_a_held_account_name(requester, team, state):
    # given another team's request holding the name (stored with capitals, before the
    # normalisation rule)
    held = holder(state)
    RelayRequest.objects.filter(pk=held.pk).update(account_name="SVC-Shop")
    # when the requester files a request for the same account
    response = api(requester).post("/api/requests/", ACCOUNT_BODY, format="json")
    # then it is a 400 on the field naming the holder, its state and the way forward
    assert response.status_code == 400, response.json()
    message = response.json()["account_name"][0]
    label = S(state).label.lower()
    assert f"request #{held.pk} ({label}, team billing)" in message
    assert f"renew request #{held.pk}" in message and "hand it over" in message
    assert not RelayRequest.objects.filter(team=team).exists()


@pytest.mark.parametrize("state", [S.DRAFT, S.REJECTED, S.WITHDRAWN, S.REVOKED, S.EXPIRED])
def test_drafts_and_closed_requests_hold_no_account_name(requester, team, state):
    holder(state)
    response = api(requester).post("/api/requests/", ACCOUNT_BODY, format="json")
    assert response.status_code == 201, response.json()


def test_web_form_shows_the_refusal_on_the_account_name_field(requester, team):
    held = holder(S.ACTIVE)
    client = Client()
    client.force_login(requester)
    form = {**ACCOUNT_BODY, "sender_addresses": "shop@example.org"}
    form.pop("kind")
    response = client.post(reverse("requests:create", args=["account"]), form)
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == ["account_name"]
    assert f"#{held.pk} (active, team billing)" in errors["account_name"][0]


def test_submitting_the_second_of_two_drafts_is_refused(requester, team):
    # given two drafts for one account: the first is submitted and holds the name
    first = services.request_create(by=requester, team=team, kind="account",
                                    data={k: v for k, v in ACCOUNT_BODY.items()
                                          if k not in ("kind", "team")})
    second = services.request_create(by=requester, team=team, kind="account",
                                     data={k: v for k, v in ACCOUNT_BODY.items()
                                           if k not in ("kind", "team")})
    services.request_act(request_id=first.pk, action="submit", by=requester)
    # when the second is submitted through the API
    response = api(requester).post(f"/api/requests/{second.pk}/submit/", {}, format="json")
    # then it is refused on the field, and stays a draft
    assert response.status_code == 400
    assert f"request #{first.pk}" in response.json()["account_name"][0]
    assert RelayRequest.objects.get(pk=second.pk).state == S.DRAFT


def test_approving_a_duplicate_that_slipped_through_is_a_409(requester, team, approver):
    held = holder(S.ACTIVE)
    dup = RelayRequestFactory(team=team, created_by=requester, account=True,
                              account_name="svc-shop", state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    with pytest.raises(ActionConflict, match=f"#{held.pk}"):
        services.request_act(request_id=dup.pk, action="approve", by=approver)
    assert RelayRequest.objects.get(pk=dup.pk).state == S.PENDING_APPROVAL


def test_a_renewal_of_the_holder_is_allowed_but_not_a_second_renewal(requester, team):
    # given the team's active account
    active = RelayRequestFactory(team=team, created_by=requester, account=True,
                                 account_name="svc-shop", state=S.ACTIVE)
    # when it is renewed and the renewal submitted
    renewal = services.request_renew(request_id=active.pk, by=requester)
    services.request_act(request_id=renewal.pk, action="submit", by=requester)
    assert RelayRequest.objects.get(pk=renewal.pk).state == S.CHECKING
    # then a second renewal of the same entry is refused, naming the open renewal
    with pytest.raises(ValidationError) as refused:
        services.request_renew(request_id=active.pk, by=requester)
    assert f"request #{renewal.pk} (checking, team payments)" in \
        refused.value.message_dict["account_name"][0]


def test_account_look_up_is_one_query(requester, team):
    holder(S.ACTIVE)
    with CaptureQueriesContext(connection) as queries:
        found = accounts.account_holders("SVC-SHOP")
    assert len(queries) == 1 and [h.value for h in found] == ["svc-shop"]


# --- 1b. FQDN and address overlaps: warnings ---------------------------------------------


def test_api_create_warns_about_another_requests_host_and_still_creates(requester, team):
    # given another team's active server with the FQDN (in capitals) and one address
    other = RelayRequestFactory(team=TeamFactory(slug="billing"), state=S.ACTIVE,
                                fqdn="app.example.org", ipv4=["81.2.69.10"],
                                ipv6=["2a02:898:0:20::99"])
    RelayRequest.objects.filter(pk=other.pk).update(fqdn="APP.example.org")
    # when the requester files a server with the same FQDN and address
    response = api(requester).post("/api/requests/", SERVER_BODY, format="json")
    # then it is created, with warnings naming the other request
    assert response.status_code == 201, response.json()
    body = response.json()
    assert {(o["request"], o["field"], o["value"]) for o in body["overlaps"]} == {
        (other.pk, "fqdn", "app.example.org"), (other.pk, "address", "81.2.69.10")}
    assert all(f"request #{other.pk} (active, team billing)" in w for w in body["warnings"])


def test_a_neighbouring_address_is_not_an_overlap(requester, team):
    RelayRequestFactory(team=TeamFactory(slug="billing"), state=S.ACTIVE,
                        fqdn="other.example.org", ipv4=["81.2.69.100"],
                        ipv6=["2a02:898:0:20::100"])
    response = api(requester).post("/api/requests/", SERVER_BODY, format="json")
    assert response.json()["warnings"] == []


def test_the_renewed_entry_is_not_an_overlap_of_its_renewal(requester, team):
    active = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE)
    renewal = services.request_renew(request_id=active.pk, by=requester)
    body = api(requester).get(f"/api/requests/{renewal.pk}/").json()
    assert body["warnings"] == []
    assert api(requester).get(f"/api/requests/{active.pk}/").json()["warnings"] == []


def test_approver_page_and_form_redirect_show_the_warning(requester, team, approver):
    other = RelayRequestFactory(team=TeamFactory(slug="billing"), state=S.PENDING_APPROVAL,
                                ipv4=["81.2.69.10"])
    mine = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL)
    client = Client()
    client.force_login(approver)
    page = client.get(reverse("requests:detail", args=[mine.pk])).content.decode()
    assert f"Address 81.2.69.10 is also on request #{other.pk} (pending approval, " \
           "team billing)" in page
    # the requester sees it right after saving the form
    client.force_login(requester)
    form = {**SERVER_BODY, "ipv4": "81.2.69.10", "ipv6": "", "sender_domains": "example.org"}
    form.pop("kind")
    response = client.post(reverse("requests:create", args=["server"]), form, follow=True)
    assert f"is also on request #{other.pk}" in response.content.decode()


def test_host_overlaps_take_one_query_for_any_number_of_requests(team):
    rows = [RelayRequestFactory(team=team, state=S.ACTIVE, fqdn=f"h{i}.example.org",
                                ipv4=[f"81.2.69.{i}"], ipv6=[]) for i in range(1, 30)]
    subjects = [accounts.subject_of(r) for r in rows]
    with CaptureQueriesContext(connection) as few:
        accounts.host_overlaps(subjects[:2])
    with CaptureQueriesContext(connection) as many:
        found = accounts.host_overlaps(subjects)
    assert len(few) == len(many) == 1
    assert found == {}  # each row only overlaps itself, which does not count


def test_api_list_queries_do_not_grow_with_rows(requester, team):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert api(requester).get("/api/requests/").status_code == 200
        return len(queries)

    RelayRequestFactory(team=team, created_by=requester, state=S.PROVISIONING)
    RelayRequestFactory(team=team, created_by=requester, account=True, state=S.PROVISIONING)
    count()  # warm-up (the first call also loads per-process caches)
    small = count()
    for i in range(12):
        RelayRequestFactory(team=team, created_by=requester, state=S.PROVISIONING,
                            fqdn=f"x{i}.example.org", ipv4=[f"81.2.69.{i + 20}"], ipv6=[])
        RelayRequestFactory(team=team, created_by=requester, account=True,
                            state=S.PROVISIONING)
    assert count() == small


# --- 3. active means usable --------------------------------------------------------------


def approved_account(team, requester, approver, capture, *, build: bool = True):
    req = RelayRequestFactory(team=team, created_by=requester, account=True,
                              account_name="svc-live", state=S.PENDING_APPROVAL,
                              check_verdict="pass", sender_addresses=["live@example.org"])
    with capture(execute=build):
        services.request_act(request_id=req.pk, action="approve", by=approver)
    req.refresh_from_db()
    return req


def live_mails(req) -> list[Notification]:
    return list(Notification.objects.filter(request=req, kind="live"))


def test_an_account_waits_for_its_directory_change_then_goes_live_once(
        team, requester, approver, second_approver, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    # given an approved account whose config build ran but whose group add is a to-do
    req = approved_account(team, requester, approver, capture)
    version = RelayConfigVersion.objects.get()
    assert "svc-live" in version.files["sender_login_maps"]
    # then it is provisioning, and page and API say what it waits for
    assert req.state == S.PROVISIONING
    assert activation.pending_reasons(req) == [
        "waiting for the directory change (manual to-do)"]
    body = api(requester).get(f"/api/requests/{req.pk}/").json()
    assert body["pending"] == ["waiting for the directory change (manual to-do)"]
    client = Client()
    client.force_login(requester)
    page = client.get(reverse("requests:detail", args=[req.pk])).content.decode()
    assert "waiting for the directory change (manual to-do)" in page
    assert live_mails(req) == []
    # and another build does not make a new version or a second "served" event
    assert relay_config_rebuild(reason="again") is None
    assert req.events.filter(type=RequestEvent.Type.CONFIG_BUILT).count() == 1

    # when an approver marks the directory change done
    change = DirectoryChange.objects.get(request=req)
    with capture(execute=True):
        directory_mark_done_manually(change_id=change.pk, by=second_approver)

    # then it is active, once, with one "you are live" mail naming the snippets
    req.refresh_from_db()
    assert req.state == S.ACTIVE
    activated = req.events.get(parameters__action="activate")
    assert activated.parameters["version"] == version.number
    assert activated.parameters["completed_by"] == f"directory change #{change.pk} done"
    [mail] = live_mails(req)
    message = render_notification(mail)
    assert "svc-live" in message.subject and "is live" in message.subject
    assert f"/requests/{req.pk}/#snippets" in message.body
    assert "Password: set in the directory:" in message.body
    assert activation.activate_if_ready(req.pk, via="again") is False
    assert len(live_mails(req)) == 1
    assert api(requester).get(f"/api/requests/{req.pk}/").json()["pending"] == []


def test_directory_done_first_then_the_build_activates(
        team, requester, approver, second_approver, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    # given an approved account whose build has not run yet
    req = approved_account(team, requester, approver, capture, build=False)
    assert activation.pending_reasons(req) == [
        "waiting for the relay config", "waiting for the directory change (manual to-do)"]
    # when the directory change is marked done first
    change = DirectoryChange.objects.get(request=req)
    directory_mark_done_manually(change_id=change.pk, by=second_approver)
    # then it still waits for the relay config, and nothing else is pending
    req.refresh_from_db()
    assert req.state == S.PROVISIONING
    assert activation.pending_reasons(req) == ["waiting for the relay config"]
    # and the build that serves it activates it, with the one mail
    version = relay_config_rebuild(reason="test")
    req.refresh_from_db()
    assert req.state == S.ACTIVE
    assert req.events.get(parameters__action="activate").comment == \
        f"in relay config v{version.number}"
    assert len(live_mails(req)) == 1


def test_issue_mode_mail_points_at_the_one_time_link(
        settings, team, requester, approver, second_approver,
        django_capture_on_commit_callbacks):
    settings.RELAY_ACCOUNT_CREDENTIALS = "issue"
    req = approved_account(team, requester, approver, django_capture_on_commit_callbacks)
    change = DirectoryChange.objects.get(request=req)
    directory_mark_done_manually(change_id=change.pk, by=second_approver)
    [mail] = live_mails(req)
    assert "Password: from the one-time link in your activation mail" in \
        render_notification(mail).body


def test_a_server_is_active_at_its_build_without_a_live_mail(
        team, requester, approver, django_capture_on_commit_callbacks):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=req.pk, action="approve", by=approver)
    req.refresh_from_db()
    assert req.state == S.ACTIVE
    assert live_mails(req) == []


# --- RELAY_SASL_TYPE / RELAY_SASL_PATH ----------------------------------------------------


def test_sasl_settings_reach_the_generated_main_cf(settings):
    settings.RELAY_SASL_TYPE, settings.RELAY_SASL_PATH = "dovecot", "private/auth"
    relay = relay_settings(include_db=False)
    assert (relay.sasl_type, relay.sasl_path) == ("dovecot", "private/auth")
    files = load_backend("postfix", "cidr").build([], [], relay, version=1,
                                                  generated_at=NOW)
    main_cf = files["main.cf.fragment"].decode()
    assert "smtpd_sasl_type = dovecot\n" in main_cf
    assert "smtpd_sasl_path = private/auth\n" in main_cf


def test_sasl_defaults_are_cyrus_smtpd():
    from onboarding.settings import base

    assert (base.RELAY_SASL_TYPE, base.RELAY_SASL_PATH) == ("cyrus", "smtpd")


def test_an_unknown_sasl_type_is_refused_naming_the_setting(settings):
    settings.RELAY_SASL_TYPE = "pam"
    with pytest.raises(ValueError, match="sasl_type"):
        load_backend("postfix", "cidr").build([], [], relay_settings(include_db=False),
                                              version=1, generated_at=NOW)


def test_a_renewal_of_a_live_account_needs_no_second_manual_group_add(
        team, requester, approver, second_approver, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    # given a live account (its group add was marked done by hand: no directory configured)
    old = approved_account(team, requester, approver, capture)
    with capture(execute=True):
        directory_mark_done_manually(change_id=DirectoryChange.objects.get(request=old).pk,
                                     by=second_approver)
    old.refresh_from_db()
    assert old.state == S.ACTIVE
    # when its renewal is approved
    renewal = services.request_renew(request_id=old.pk, by=requester)
    renewal.refresh_from_db()
    RelayRequest.objects.filter(pk=renewal.pk).update(
        state=S.PENDING_APPROVAL, check_verdict="pass",
        checked_fingerprint=content_fingerprint(renewal))
    with capture(execute=True):
        services.request_act(request_id=renewal.pk, action="approve", by=approver)
    # then its add is done at once (the account is a member through the old entry), it
    # went live with the build and replaced the old entry, and nothing is on the to-do list
    renewal.refresh_from_db()
    change = DirectoryChange.objects.get(request=renewal, action=DirectoryChange.Action.ADD)
    assert change.status == DirectoryChange.Status.DONE
    assert renewal.state == S.ACTIVE
    assert RelayRequest.objects.get(pk=old.pk).state == S.REVOKED
    assert not DirectoryChange.objects.filter(status=DirectoryChange.Status.MANUAL).exists()
