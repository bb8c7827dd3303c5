"""Loose ends of the access rules and the front ends: who may open edit pages, who may
confirm a directory change, renewals across a handover, what outsiders learn (team
slugs, source IPs), one request per create, HEAD on the pull endpoint, formulas in the
audit CSV, and the quick check's limits."""

from __future__ import annotations

import csv
import io
import re
import threading
import time
from datetime import date
from pathlib import Path

import pytest
from django.db import connection
from django.db import connections
from django.db import transaction
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from requests_app import events
from requests_app import services
from requests_app.directory import directory_change_enqueue
from requests_app.exceptions import ActionConflict
from requests_app.models import DirectoryChange
from requests_app.models import Membership
from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.notifications import render_notification
from requests_app.relay import relay_config_rebuild
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.factories import member_of
from tests.support.dnsserver import DnsTestServer

pytestmark = pytest.mark.django_db

ZONES = Path(__file__).parent / "zones"
SERVER_FORM = {
    "team": "payments",
    "fqdn": "app.example.org",
    "ipv6": "2a02:898:0:20::10",
    "ipv4": "81.2.69.10",
    "purpose": "Order confirmations",
    "contact_email": "ops@example.org",
    "sender_domains": "example.org",
    "expected_daily_volume": "100",
}
SERVER_API = {
    "kind": "server",
    "team": "payments",
    "fqdn": "app.example.org",
    "ipv4": ["81.2.69.10"],
    "ipv6": ["2a02:898:0:20::10"],
    "purpose": "Order confirmations",
    "contact_email": "ops@example.org",
    "sender_domains": ["example.org"],
    "expected_daily_volume": 100,
}


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def active(team, requester) -> RelayRequest:
    return RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                               recertify_by=date(2027, 1, 31))


# --- a. edit pages: 404 when not visible, 403 when visible but not yours --------------


EDIT_LIKE = [
    pytest.param("get", "edit", id="edit_page"),
    pytest.param("post", "edit", id="edit_post"),
    pytest.param("post", "renew", id="renew"),
    pytest.param("post", "handover", id="handover"),
]


@pytest.mark.parametrize(("method", "route"), EDIT_LIKE)
@pytest.mark.parametrize(("who", "status"), [
    pytest.param("outsider", 404, id="outsider_404"),
    pytest.param("approver", 403, id="approver_403"),
    pytest.param("auditor", 403, id="auditor_403"),
])
def test_edit_like_pages_refuse_non_owners(method, route, who, status, team, requester,
                                           approver, auditor):
    # given a draft (edit) and an active entry (renew, hand over) of team payments
    TeamFactory(slug="billing")
    state = S.DRAFT if route == "edit" else S.ACTIVE
    req = RelayRequestFactory(team=team, created_by=requester, state=state)
    users = {"outsider": member_of(TeamFactory(slug="outside")), "approver": approver,
             "auditor": auditor}

    # when someone who is not in the team opens or posts the page
    url = reverse(f"requests:{route}", args=[req.pk])
    body = {**SERVER_FORM, "fqdn": "evil.example.org", "team": "billing", "submit": "1"}
    response = getattr(logged_in(users[who]), method)(url, body if method == "post" else None)

    # then 404 (cannot see it) or 403 (can see it, not theirs), and nothing happened
    assert response.status_code == status
    fresh = RelayRequest.objects.get(pk=req.pk)
    assert (fresh.fqdn, fresh.team.slug, fresh.state) == ("app.example.org", "payments", state)
    assert not RequestEvent.objects.exists()
    assert RelayRequest.objects.count() == 1  # no renewal draft either
    if status == 403:
        verb = {"edit": "edit", "renew": "renew", "handover": "hand over"}[route]
        assert f"Only members of the owning team can {verb} request #{req.pk}." in (
            response.content.decode())


@pytest.mark.parametrize(("who", "status"), [("outsider", 404), ("approver", 403)])
def test_api_changes_refuse_non_owners_alike(who, status, team, requester, approver):
    # given a draft and an active entry of team payments
    TeamFactory(slug="billing")
    draft = RelayRequestFactory(team=team, created_by=requester)
    active = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                                 fqdn="live.example.org")
    client = api_for({"outsider": member_of(TeamFactory(slug="outside")),
                      "approver": approver}[who])

    # when a non-owner edits, renews and hands over through the API
    answers = [
        client.patch(f"/api/requests/{draft.pk}/", {"purpose": "mine now"}, format="json"),
        client.post(f"/api/requests/{active.pk}/renew/"),
        client.post(f"/api/requests/{active.pk}/handover/", {"team": "billing"},
                    format="json"),
    ]

    # then each is refused the same way and nothing changed
    assert [a.status_code for a in answers] == [status] * 3
    assert RelayRequest.objects.get(pk=draft.pk).purpose == "Order confirmations"
    assert RelayRequest.objects.get(pk=active.pk).team == team
    assert RelayRequest.objects.count() == 2 and not RequestEvent.objects.exists()


def test_owner_opens_the_edit_page_but_not_for_a_request_that_cannot_be_edited(
        team, requester, active):
    # given a draft and an active entry of the requester's team
    draft = RelayRequestFactory(team=team, created_by=requester)
    client = logged_in(requester)

    # when the owner opens both edit pages
    ok = client.get(reverse("requests:edit", args=[draft.pk]))
    refused = client.get(reverse("requests:edit", args=[active.pk]), follow=True)

    # then the draft's form is shown, the active entry sends them back with the reason
    assert ok.status_code == 200 and "Edit #" in ok.content.decode()
    assert refused.redirect_chain == [(active.get_absolute_url(), 302)]
    assert "cannot be edited" in refused.content.decode()


# --- b. segregation of duties on the directory to-do list ------------------------------


@pytest.fixture
def manual_change(settings, team, requester) -> DirectoryChange:
    settings.DIRECTORY_URL = ""
    account = RelayRequestFactory(account=True, account_name="svc-billing", team=team,
                                  created_by=requester, state=S.PROVISIONING)
    with transaction.atomic():
        return directory_change_enqueue(request=account, action=DirectoryChange.Action.ADD)


def test_approver_cannot_mark_their_own_teams_directory_change_done(manual_change, team):
    # given an approver who is a member of the account's team
    insider = ApproverFactory(username="ivan")
    Membership.objects.create(team=team, user=insider)
    trail = manual_change.request.events.count()

    # when they look at the to-do list and post "Mark done" anyway
    client = logged_in(insider)
    page = client.get(reverse("requests:directory_todo")).content.decode()
    response = client.post(reverse("requests:directory_mark_done", args=[manual_change.pk]))

    # then there is no button for it, the post is refused with the reason, nothing written
    assert "Your own team's account: another approver marks this done." in page
    assert f'action="/requests/directory/{manual_change.pk}/done/"' not in page
    assert response.status_code == 403
    assert "another approver must mark it done (segregation of duties)" in (
        response.content.decode())
    manual_change.refresh_from_db()
    assert (manual_change.status, manual_change.done_by) == ("manual", "")
    assert manual_change.request.events.count() == trail


def test_an_independent_approver_marks_it_done(manual_change, approver):
    # when an approver outside the team marks the change done
    response = logged_in(approver).post(
        reverse("requests:directory_mark_done", args=[manual_change.pk]), {"confirm": "1"})

    # then it is done, by them
    assert response.status_code == 302
    manual_change.refresh_from_db()
    assert (manual_change.status, manual_change.done_by) == ("done", "bob")


# --- c. a handover detaches the old team's pending renewals ---------------------------


def test_handover_detaches_pending_renewals_and_names_them_to_the_new_owners(
        active, requester, team, django_capture_on_commit_callbacks):
    # given two renewals drafted by payments (one a draft, one waiting for approval)
    billing = TeamFactory(slug="billing", contact_email="billing@teams.example.org")
    draft = services.request_renew(request_id=active.pk, by=requester)
    waiting = RelayRequestFactory(team=team, created_by=requester, replaces=active,
                                  state=S.PENDING_APPROVAL, check_verdict="pass")
    old = RelayRequestFactory(team=team, created_by=requester, replaces=active,
                              state=S.REJECTED)

    # when payments hands the entry over to billing
    with django_capture_on_commit_callbacks(execute=False):
        services.request_handover(request_id=active.pk, by=requester, to_team="billing",
                                  source_ip="10.0.0.7")

    # then the pending renewals no longer replace it (closed history keeps its link)
    assert RelayRequest.objects.get(pk=active.pk).team == billing
    assert [RelayRequest.objects.get(pk=r.pk).replaces_id for r in (draft, waiting, old)] == [
        None, None, active.pk]
    for renewal in (draft, waiting):
        event = renewal.events.get(type=RequestEvent.Type.UPDATED)
        assert event.parameters["changes"] == {"replaces": [active.pk, None]}
        assert (event.actor, event.source_ip) == (requester, "10.0.0.7")
        assert f"No longer replaces #{active.pk}" in event.comment
    handover = active.events.get(type=RequestEvent.Type.HANDOVER)
    assert handover.parameters["detached_renewals"] == [draft.pk, waiting.pk]

    # and the new owners are told, by name of the renewals
    mail = Notification.objects.get(request=active, kind="handover")
    assert "billing@teams.example.org" in mail.recipients
    body = render_notification(mail).body
    assert f"Renewals #{draft.pk}, #{waiting.pk}, started by the previous owners" in body
    assert "no longer replace this entry: only team billing can change it now" in body


def test_a_detached_renewal_going_live_leaves_the_handed_over_entry_alone(
        active, requester, team):
    # given a renewal payments drafted, then the entry was handed over to billing
    TeamFactory(slug="billing")
    renewal = RelayRequestFactory(team=team, created_by=requester, replaces=active,
                                  state=S.PENDING_APPROVAL, ipv4=["81.2.69.11"])
    services.request_handover(request_id=active.pk, by=requester, to_team="billing")

    # when the renewal is approved and goes live
    RelayRequest.objects.filter(pk=renewal.pk).update(state=S.PROVISIONING)
    relay_config_rebuild(reason="test")

    # then billing's entry is still active and in the config, beside the renewal
    assert RelayRequest.objects.get(pk=active.pk).state == S.ACTIVE
    assert RelayRequest.objects.get(pk=renewal.pk).state == S.ACTIVE
    assert not active.events.filter(parameters__action="supersede").exists()


def test_the_relay_never_lets_another_teams_renewal_supersede_an_entry(active, requester,
                                                                         team):
    # given a renewal still linked to an entry that now belongs to another team (a row
    # written before handovers detached renewals)
    renewal = RelayRequestFactory(team=team, created_by=requester, replaces=active,
                                  state=S.PROVISIONING, ipv4=["81.2.69.11"])
    RelayRequest.objects.filter(pk=active.pk).update(team=TeamFactory(slug="billing"))

    # when the renewal goes live
    relay_config_rebuild(reason="test")

    # then the other team's entry stays active
    assert RelayRequest.objects.get(pk=active.pk).state == S.ACTIVE
    assert RelayRequest.objects.get(pk=renewal.pk).state == S.ACTIVE


def test_handover_waits_for_an_approved_renewal(active, requester, team):
    # given a renewal that is approved and about to replace the entry
    TeamFactory(slug="billing")
    renewal = RelayRequestFactory(team=team, created_by=requester, replaces=active,
                                  state=S.PROVISIONING)

    # when the owners try to hand the entry over
    with pytest.raises(ActionConflict, match=f"Renewal #{renewal.pk} .* approved"):
        services.request_handover(request_id=active.pk, by=requester, to_team="billing")

    # then nothing changed
    assert RelayRequest.objects.get(pk=active.pk).team == team
    assert RelayRequest.objects.get(pk=renewal.pk).replaces_id == active.pk
    assert not RequestEvent.objects.exists()


# --- d. team slugs are not listed to people outside those teams ------------------------


def test_request_page_lists_only_the_users_own_teams_for_a_handover(active, requester):
    # given other teams, one of which the requester is also a member of
    TeamFactory(slug="secret-ops")
    TeamFactory(slug="billing")
    Membership.objects.create(team=TeamFactory(slug="shared-infra"), user=requester)

    # when the owner opens the entry
    html = logged_in(requester).get(active.get_absolute_url()).content.decode()

    # then the handover suggests their own other team and names no other team
    assert '<option value="shared-infra">' in html
    assert "secret-ops" not in html and "billing" not in html


def test_handover_by_typed_team_name_still_works(active, requester):
    # given a receiving team the requester is not a member of
    billing = TeamFactory(slug="billing")

    # when the owner types its name (and confirms: the page asks first)
    response = logged_in(requester).post(reverse("requests:handover", args=[active.pk]),
                                         {"team": "billing", "comment": "theirs now",
                                          "confirm": "1"})

    # then the entry moved
    assert response.status_code == 302
    assert RelayRequest.objects.get(pk=active.pk).team == billing


# --- e. source IPs: approvers and auditors, or your own --------------------------------


@pytest.fixture
def trail(team, requester, approver) -> RelayRequest:
    req = RelayRequestFactory(team=team, created_by=requester, state=S.NEEDS_CHANGES)
    events.request_created_event(req, requester, "10.1.2.3")
    events.request_transition_event(req, action="request_changes", from_state=S.PENDING_APPROVAL,
                                    actor=approver, source_ip="192.0.2.9", comment="fix it")
    return req


def test_requester_does_not_see_approvers_source_ip(trail, requester, team):
    # given a team mate of the requester
    mate = member_of(team)

    # when the requester and the team mate read the trail (page and API)
    page = logged_in(requester).get(trail.get_absolute_url()).content.decode()
    own = api_for(requester).get(f"/api/requests/{trail.pk}/events/").json()
    mates = api_for(mate).get(f"/api/requests/{trail.pk}/events/").json()

    # then the requester sees only their own address, the team mate none
    assert "192.0.2.9" not in page and "from 10.1.2.3" in page
    assert [(e["actor"], e["source_ip"]) for e in own] == [("alice", "10.1.2.3"),
                                                         ("bob", None)]
    assert [e["source_ip"] for e in mates] == [None, None]
    # the stored trail is untouched
    assert list(trail.events.values_list("source_ip", flat=True)) == ["10.1.2.3", "192.0.2.9"]


@pytest.mark.parametrize("who", ["approver", "auditor"])
def test_approvers_and_auditors_see_every_source_ip(trail, who, approver, auditor):
    user = {"approver": approver, "auditor": auditor}[who]
    page = logged_in(user).get(trail.get_absolute_url()).content.decode()
    api = api_for(user).get(f"/api/requests/{trail.pk}/events/").json()
    assert "from 192.0.2.9" in page and "from 10.1.2.3" in page
    assert [e["source_ip"] for e in api] == ["10.1.2.3", "192.0.2.9"]


# --- f. one request per create: idempotency key ----------------------------------------


def test_api_retry_with_idempotency_key_returns_the_first_request(requester):
    client = api_for(requester)

    # when the same create is sent twice with one key
    first = client.post("/api/requests/", SERVER_API, format="json",
                        HTTP_IDEMPOTENCY_KEY="order-4711")
    again = client.post("/api/requests/", SERVER_API, format="json",
                        HTTP_IDEMPOTENCY_KEY="order-4711")

    # then the second answer is the first request, and there is one row and one event
    assert first.status_code == 201 and "Idempotent-Replayed" not in first
    assert again.status_code == 200 and again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert RelayRequest.objects.count() == 1
    assert RequestEvent.objects.filter(type="created").count() == 1


def test_api_keys_are_per_user_and_creates_without_key_are_separate(requester, team):
    mate = member_of(team)

    # when two users use the same key, and one user creates twice without a key
    mine = api_for(requester).post("/api/requests/", SERVER_API, format="json",
                                   HTTP_IDEMPOTENCY_KEY="k1")
    theirs = api_for(mate).post("/api/requests/", SERVER_API, format="json",
                                HTTP_IDEMPOTENCY_KEY="k1")
    plain = [api_for(requester).post("/api/requests/", SERVER_API, format="json")
             for _ in range(2)]

    # then every one of them is a new request
    assert [r.status_code for r in (mine, theirs, *plain)] == [201, 201, 201, 201]
    assert len({r.json()["id"] for r in (mine, theirs, *plain)}) == 4


@pytest.mark.parametrize("key", ["x" * 101, "has space", "tab\there", "caf\u00e9"])
def test_api_refuses_a_malformed_idempotency_key(requester, key):
    response = api_for(requester).post("/api/requests/", SERVER_API, format="json",
                                       HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 400
    assert "Idempotency-Key must be 1 to 100 visible ASCII characters" in (
        response.json()["idempotency_key"][0])
    assert not RelayRequest.objects.exists()


def test_web_form_sent_twice_makes_one_request(requester):
    client = logged_in(requester)

    # given the rendered form with its hidden token
    page = client.get(reverse("requests:create", args=["server"])).content.decode()
    token = re.search(r'name="idempotency_key" value="([0-9a-f]{32})"', page).group(1)

    # when it is submitted twice (a double click)
    first = client.post(reverse("requests:create", args=["server"]),
                        {**SERVER_FORM, "idempotency_key": token})
    second = client.post(reverse("requests:create", args=["server"]),
                         {**SERVER_FORM, "idempotency_key": token}, follow=True)

    # then one request exists and both answers lead to it
    req = RelayRequest.objects.get()
    assert first["Location"] == req.get_absolute_url()
    assert second.redirect_chain == [(req.get_absolute_url(), 302)]
    assert "was already saved" in second.content.decode()
    # and a fresh render carries a fresh token
    again = client.get(reverse("requests:create", args=["server"])).content.decode()
    assert token not in again


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_with_one_key_make_one_request(team, requester):
    if connection.vendor == "sqlite" and connection.settings_dict["NAME"].startswith(
            ("file:memorydb", ":memory:")):
        pytest.skip("threads need a shared database file")
    # given four clients sending the same create with one key at the same moment
    barrier = threading.Barrier(4)
    outcomes: list[tuple[int, bool] | str] = []

    def create() -> None:
        try:
            barrier.wait()
            obj, created = services.request_create_once(
                by=requester, idempotency_key="retry-1", team="payments", kind="server",
                data={k: v for k, v in SERVER_API.items() if k not in ("kind", "team")},
            )
            outcomes.append((obj.pk, created))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    # then one row was made, one caller created it, and every caller got its id
    assert all(isinstance(o, tuple) for o in outcomes), outcomes
    assert RelayRequest.objects.count() == 1
    pk = RelayRequest.objects.get().pk
    assert sorted(outcomes, key=lambda o: not o[1]) == [(pk, True)] + [(pk, False)] * 3
    assert RequestEvent.objects.filter(type="created").count() == 1


# --- g. HEAD on the pull endpoint --------------------------------------------------------


def test_head_on_the_pull_endpoint_gives_the_get_headers_without_a_body(settings, active):
    # given a built config and the token
    settings.RELAY_CONFIG_TOKEN = "s3cret-token"
    relay_config_rebuild(reason="test")
    client = Client(HTTP_AUTHORIZATION="Token s3cret-token")
    url = "/relay-config/client_access.cidr"

    # when the puller asks with GET and with HEAD
    got = client.get(url)
    head = client.head(url)

    # then HEAD has GET's status and headers, and no body
    assert (got.status_code, head.status_code) == (200, 200)
    assert got.content and head.content == b""
    assert head["ETag"] == got["ETag"]
    assert head["Content-Length"] == got["Content-Length"] == str(len(got.content))
    assert head["X-Relay-Config-Version"] == got["X-Relay-Config-Version"]
    # a conditional HEAD and one without the token behave as GET does
    assert client.head(url, HTTP_IF_NONE_MATCH=got["ETag"]).status_code == 304
    assert Client().head(url).status_code == 401


# --- h. the audit CSV neutralises formulas behind leading blanks and controls ---------


@pytest.mark.parametrize("comment", [
    "=1+1", " =1+1", "\n=HYPERLINK(evil)", "\r\n@SUM(A1)", " \t-2+3", "\x1b+cmd",
    "\u200b=1", "\u00a0+1", "\u2028@x", "\uff1d1", "\x0b=1",
])
def test_audit_csv_neutralises_formulas_after_leading_blanks(comment, approver, team,
                                                             requester):
    # given an event whose comment (typed before today's rules) hides a formula
    req = RelayRequestFactory(team=team, created_by=requester)
    RequestEvent.objects.create(request=req, type="transition", actor_name="x",
                                comment=comment)

    # when an approver exports the trail
    response = logged_in(approver).get(reverse("requests:audit_csv"))
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))

    # then the cell is text: an apostrophe in front, the rest unchanged
    assert rows[-2][9] == "'" + comment


@pytest.mark.parametrize("comment", ["fine", "a=b", "  spaced out", "", "2-1"])
def test_audit_csv_leaves_plain_text_alone(comment, approver, team, requester):
    req = RelayRequestFactory(team=team, created_by=requester)
    RequestEvent.objects.create(request=req, type="transition", actor_name="x",
                                comment=comment)
    response = logged_in(approver).get(reverse("requests:audit_csv"))
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[-2][9] == comment


def test_audit_csv_neutralises_usernames_too(approver, team):
    # given a user whose name starts with a trigger (Django allows + - @ in usernames)
    plus = member_of(team, username="+cmd")
    req = RelayRequestFactory(team=team, created_by=plus)
    events.request_created_event(req, plus, None)

    rows = list(csv.reader(io.StringIO(b"".join(
        logged_in(approver).get(reverse("requests:audit_csv")).streaming_content).decode())))

    assert rows[-2][5] == "'+cmd"


# --- i. quick check: a per-user budget and a short bound -------------------------------


def test_quick_check_is_limited_per_user_with_retry_after(settings, requester, team):
    settings.RELAYDESK_QUICK_CHECK_PER_MINUTE = 2
    body = {"fqdn": "app.example.org", "ipv4": ["81.2.69.10"]}
    client = api_for(requester)

    # when a user asks three times within the minute
    answers = [client.post("/api/quick-check/", body, format="json") for _ in range(3)]

    # then the third is refused with a clear message and when to come back
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[-1]
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused.json()["detail"].startswith("Too many quick checks: at most 2 a minute")
    # and another user still has their own budget
    assert api_for(member_of(team)).post("/api/quick-check/", body,
                                         format="json").status_code == 200


def test_quick_check_dns_work_ends_at_its_own_short_bound(settings, requester):
    # given a name whose DNS server never answers and a long general DNS lifetime
    with DnsTestServer((ZONES / "default.zone").read_text(),
                       drop={"app.example.org"}) as mute:
        settings.DNS_NAMESERVERS = [mute.nameserver]
        settings.DNS_LIFETIME_SECONDS = 6.0
        settings.RELAYDESK_QUICK_CHECK_SECONDS = 0.5

        # when the form's quick check asks about it
        started = time.monotonic()
        response = api_for(requester).post(
            "/api/quick-check/", {"fqdn": "app.example.org", "ipv4": ["81.2.69.10"]},
            format="json")
        took = time.monotonic() - started

    # then the answer comes after the short bound, naming what could not be determined
    assert response.status_code == 200
    assert took < 3.0, took
    assert "error" in {c["status"] for c in response.json()["checks"]}


def test_quick_check_limit_can_be_turned_off(settings, requester):
    settings.RELAYDESK_QUICK_CHECK_PER_MINUTE = 0
    client = api_for(requester)
    codes = {client.post("/api/quick-check/", {"fqdn": "bad..name"}, format="json").status_code
             for _ in range(5)}
    assert codes == {400}
