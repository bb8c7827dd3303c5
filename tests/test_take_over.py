"""Taking over another approver's claim (``assignment.take_over``): who may, when, with
what reason, what the audit trail and the previous holder's mail say, and the page's
form and the API's codes. The race of two take-overs at once runs on PostgreSQL."""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from requests_app import assignment
from requests_app.exceptions import ActionConflict
from requests_app.models import Membership
from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.notifications import notification_send
from tests.factories import ApproverFactory
from tests.factories import AuditorFactory
from tests.factories import RelayRequestFactory
from tests.support.race import one_wins
from tests.support.race import race

pytestmark = pytest.mark.django_db

REASON = "Bob is on holiday until the 14th; the owners wait for an answer."


@pytest.fixture
def held(team, requester, approver):
    """A request in the queue that bob has claimed."""
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    assignment.claim(request_id=req.pk, by=approver)
    return req


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def take_overs(req: RelayRequest) -> list[RequestEvent]:
    return list(RequestEvent.objects.filter(request=req, type="assignment",
                                            parameters__action="take_over").order_by("pk"))


# --- the service ---------------------------------------------------------------------

def test_take_over_moves_the_claim_and_audits_both_holders_the_reason_and_the_source(
        held, approver, second_approver):
    before = RelayRequest.objects.get(pk=held.pk).assigned_at
    assignment.take_over(request_id=held.pk, by=second_approver, reason=f"  {REASON}\n",
                         holder="bob", source_ip="192.0.2.7")
    held.refresh_from_db()
    assert held.assigned_to == second_approver and held.assigned_at > before
    [event] = take_overs(held)
    assert event.parameters == {"action": "take_over", "assigned_to": "carol",
                                "previous": "bob"}
    assert (event.actor, event.actor_name, event.source_ip, event.comment) == (
        second_approver, "carol", "192.0.2.7", REASON)
    assert event.from_state == event.to_state == S.PENDING_APPROVAL
    # the claim and its take-over read as one history of who had it
    actions = list(RequestEvent.objects.filter(request=held, type="assignment")
                   .order_by("pk").values_list("actor_name", "parameters__action"))
    assert actions == [("bob", "claim"), ("carol", "take_over")]


def test_without_a_holder_the_one_holding_it_now_is_taken_over(held, second_approver):
    assignment.take_over(request_id=held.pk, by=second_approver, reason=REASON)
    held.refresh_from_db()
    assert held.assigned_to == second_approver
    assert take_overs(held)[0].parameters["previous"] == "bob"


def test_the_previous_holder_is_mailed_once(held, approver, second_approver,
                                            django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        assignment.take_over(request_id=held.pk, by=second_approver, reason=REASON,
                             holder="bob")
    # one message, to bob only, saying who took it and why
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["bob@people.example.org"]
    assert message.subject == (f"[Relaydesk] #{held.pk} {held.subject}: carol took over "
                               "your claim")
    assert REASON in message.body and "carol took over your claim" in message.body
    assert reverse("requests:detail", args=[held.pk]) in message.body
    # a resent form (carol takes over her own claim) records and sends nothing more
    with django_capture_on_commit_callbacks(execute=True):
        assignment.take_over(request_id=held.pk, by=second_approver, reason=REASON,
                             holder="bob")
    assert len(mail.outbox) == 1
    [row] = Notification.objects.filter(request=held, kind="claim_taken_over")
    assert (row.status, row.recipients) == ("sent", ["bob@people.example.org"])
    # and a redelivered send task does not send it again
    assert notification_send(notification_id=row.pk) is False
    assert len(mail.outbox) == 1
    assert len(take_overs(held)) == 1


def test_the_mail_comes_in_the_mail_language(settings, held, second_approver,
                                            django_capture_on_commit_callbacks):
    settings.RELAYDESK_MAIL_LANGUAGE = "de"
    with django_capture_on_commit_callbacks(execute=True):
        assignment.take_over(request_id=held.pk, by=second_approver, reason=REASON)
    [message] = mail.outbox
    assert message.subject == (f"[Relaydesk] #{held.pk} {held.subject}: carol hat Ihre "
                               "Übernahme an sich gezogen")
    assert "Entschieden wurde nichts" in message.body and REASON in message.body


def test_a_holder_without_an_address_gets_no_mail_and_the_take_over_still_happens(
        held, approver, second_approver, django_capture_on_commit_callbacks):
    type(approver).objects.filter(pk=approver.pk).update(email="")
    with django_capture_on_commit_callbacks(execute=True):
        assignment.take_over(request_id=held.pk, by=second_approver, reason=REASON)
    assert mail.outbox == []
    assert RelayRequest.objects.get(pk=held.pk).assigned_to == second_approver


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        pytest.param("", "the reason is empty", id="empty"),
        pytest.param(" \n\t ", "the reason is empty", id="blank"),
        pytest.param(None, "the reason is empty", id="missing"),
        pytest.param("x" * (assignment.TAKE_OVER_REASON_LIMIT + 1),
                     f"Reason is at most {assignment.TAKE_OVER_REASON_LIMIT} characters",
                     id="too_long"),
        pytest.param("away\u202eyadiloh", "Reason contains the invisible character U+202E",
                     id="bidi_override"),
        pytest.param(42, "Reason must be text", id="not_text"),
    ],
)
def test_a_bad_reason_names_the_field_and_the_rule_and_changes_nothing(
        held, approver, second_approver, reason, says):
    with pytest.raises(ValidationError) as caught:
        assignment.take_over(request_id=held.pk, by=second_approver, reason=reason,
                             holder="bob")
    assert list(caught.value.error_dict) == ["reason"]
    assert says in " ".join(caught.value.messages)
    held.refresh_from_db()
    assert held.assigned_to == approver and take_overs(held) == []
    assert not Notification.objects.filter(kind="claim_taken_over").exists()


def test_only_an_approver_who_could_decide_may_take_over(held, team, requester, approver):
    insider = ApproverFactory(username="ivan")
    Membership.objects.create(team=team, user=insider)  # an approver of the owning team
    for user, says in ((requester, "Only approvers can take over the claim"),
                       (AuditorFactory(username="dora"), "Only approvers can take over"),
                       (insider, "a team they are a member of")):
        with pytest.raises(PermissionDenied, match=says):
            assignment.take_over(request_id=held.pk, by=user, reason=REASON, holder="bob")
    held.refresh_from_db()
    assert held.assigned_to == approver and take_overs(held) == []


def test_an_unclaimed_request_is_claimed_not_taken_over(team, requester, second_approver):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL)
    with pytest.raises(ActionConflict, match="Nobody holds the claim .* claim it instead"):
        assignment.take_over(request_id=req.pk, by=second_approver, reason=REASON)
    assert RelayRequest.objects.get(pk=req.pk).assigned_to is None


def test_a_request_that_waits_for_nobody_cannot_be_taken_over(held, approver,
                                                              second_approver):
    RelayRequest.objects.filter(pk=held.pk).update(state=S.REJECTED)
    with pytest.raises(ActionConflict, match="does not wait for an approver"):
        assignment.take_over(request_id=held.pk, by=second_approver, reason=REASON)
    assert RelayRequest.objects.get(pk=held.pk).assigned_to == approver


def test_taking_over_ones_own_claim_records_nothing(held, approver):
    assignment.take_over(request_id=held.pk, by=approver, reason=REASON, holder="bob")
    assert take_overs(held) == []


def test_a_holder_that_changed_is_a_409_naming_who_holds_it_now(held, second_approver):
    dave = ApproverFactory(username="dave")
    # carol took it over from bob a moment ago; dave's page still showed bob
    assignment.take_over(request_id=held.pk, by=second_approver, reason=REASON, holder="bob")
    with pytest.raises(ActionConflict, match="now claimed by carol"):
        assignment.take_over(request_id=held.pk, by=dave, reason="Me too.", holder="bob")
    held.refresh_from_db()
    assert held.assigned_to == second_approver and len(take_overs(held)) == 1


@pytest.mark.django_db(transaction=True)
def test_two_take_overs_at_once_one_wins_the_other_is_told_the_new_holder(
        team, requester, approver, second_approver):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL; CI runs this file with DATABASE_URL set")
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL)
    assignment.claim(request_id=req.pk, by=approver)
    dave = ApproverFactory(username="dave")
    # both saw bob holding it (the form's hidden field)
    outcomes = race(lambda user: assignment.take_over(
        request_id=req.pk, by=user, reason="Bob is away.", holder="bob"),
        [second_approver, dave])
    winner, told = one_wins(outcomes)
    assert f"now claimed by {winner}" in told
    req.refresh_from_db()
    assert req.assigned_to.username == winner
    [event] = take_overs(req)
    assert (event.actor_name, event.parameters["previous"]) == (winner, "bob")
    assert Notification.objects.filter(request=req, kind="claim_taken_over").count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_claims_at_once_one_wins_the_other_is_told_the_holder(
        team, requester, approver, second_approver):
    # the lock query once joined the holder: after the wait PostgreSQL kept the join's
    # first read (nobody), and naming the new holder failed with an AttributeError
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL; CI runs this file with DATABASE_URL set")
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL)
    outcomes = race(lambda user: assignment.claim(request_id=req.pk, by=user),
                    [approver, second_approver])
    winner, told = one_wins(outcomes)
    assert f"claimed by {winner}" in told


# --- the request page ----------------------------------------------------------------

def test_the_page_shows_the_holder_and_offers_the_take_over_only_to_other_deciders(
        held, requester, approver, second_approver):
    url = reverse("requests:detail", args=[held.pk])
    take_over_url = reverse("requests:take_over", args=[held.pk])
    other = logged_in(second_approver).get(url).content.decode()
    assert "Claimed by <strong>bob</strong>" in other
    assert f'action="{take_over_url}"' in other
    assert 'name="holder" value="bob"' in other and 'name="reason"' in other
    assert "csrfmiddlewaretoken" in other
    mine = logged_in(approver).get(url).content.decode()
    assert "You have claimed this request" in mine and take_over_url not in mine
    assert reverse("requests:release", args=[held.pk]) in mine
    owners = logged_in(requester).get(url).content.decode()
    assert "Claimed by <strong>bob</strong>" in owners and take_over_url not in owners


def test_the_form_without_a_reason_is_refused_on_the_page_naming_the_field(
        held, approver, second_approver):
    client = logged_in(second_approver)
    response = client.post(reverse("requests:take_over", args=[held.pk]),
                           {"holder": "bob", "reason": "  "})
    assert response.status_code == 400
    html = response.content.decode()
    assert "Reason: Say why you take over the claim" in html
    assert 'id="take-over-errors"' in html and 'aria-invalid="true"' in html
    held.refresh_from_db()
    assert held.assigned_to == approver


def test_the_form_keeps_a_too_long_reason_and_says_the_limit(held, second_approver):
    text = "y" * (assignment.TAKE_OVER_REASON_LIMIT + 5)
    response = logged_in(second_approver).post(
        reverse("requests:take_over", args=[held.pk]), {"holder": "bob", "reason": text})
    assert response.status_code == 400
    html = response.content.decode()
    assert f"at most {assignment.TAKE_OVER_REASON_LIMIT} characters" in html
    assert text in html  # what was typed is not lost


def test_the_form_moves_the_claim_and_says_so(held, second_approver):
    client = logged_in(second_approver)
    response = client.post(reverse("requests:take_over", args=[held.pk]),
                           {"holder": "bob", "reason": REASON})
    assert response.status_code == 302
    assert response["Location"] == held.get_absolute_url() + "#claim"
    page = client.get(response["Location"]).content.decode()
    assert f"You took over the claim on request #{held.pk}" in page
    assert "You have claimed this request" in page
    # the timeline says from whom, and why
    assert "Took over the claim from bob" in page and REASON in page
    held.refresh_from_db()
    assert held.assigned_to == second_approver


def test_the_form_with_a_holder_that_changed_is_the_409_page_naming_the_new_one(
        held, second_approver):
    dave = ApproverFactory(username="dave")
    assignment.take_over(request_id=held.pk, by=dave, reason=REASON, holder="bob")
    response = logged_in(second_approver).post(
        reverse("requests:take_over", args=[held.pk]), {"holder": "bob", "reason": REASON})
    assert response.status_code == 409
    assert "now claimed by dave" in response.content.decode()


def test_the_form_needs_its_csrf_token_and_refuses_people_who_may_not_decide(
        held, requester, second_approver):
    url = reverse("requests:take_over", args=[held.pk])
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(second_approver)
    assert strict.post(url, {"holder": "bob", "reason": REASON}).status_code == 403
    assert logged_in(requester).post(url, {"holder": "bob", "reason": REASON}).status_code \
        == 403
    assert logged_in(second_approver).get(url).status_code == 405
    assert RelayRequest.objects.get(pk=held.pk).assigned_to.username == "bob"


def test_the_queue_links_someone_elses_claim_to_the_take_over_form(held, second_approver):
    html = logged_in(second_approver).get(reverse("requests:queue")).content.decode()
    assert f'href="{held.get_absolute_url()}#claim"' in html


# --- the API -------------------------------------------------------------------------

def test_take_over_through_the_api(held, requester, approver, second_approver):
    url = f"/api/requests/{held.pk}/take-over/"
    carol = api(second_approver)
    # bad input names its field
    missing = carol.post(url, {}, format="json")
    assert missing.status_code == 400 and list(missing.json()) == ["reason"]
    assert "the reason is empty" in missing.json()["reason"][0]
    assert carol.post(url, {"reason": "x" * 5000}, format="json").json()["reason"][0] \
        .startswith("Reason is at most")
    bad_holder = carol.post(url, {"reason": REASON, "holder": 7}, format="json")
    assert bad_holder.status_code == 400 and list(bad_holder.json()) == ["holder"]
    # a requester may not (403); the holder's own take-over changes nothing
    assert api(requester).post(url, {"reason": REASON}, format="json").status_code == 403
    own = api(approver).post(url, {"reason": REASON}, format="json")
    assert own.status_code == 200 and own.json()["assigned_to"] == "bob"
    # an empty holder is "not given", as the form sends it (not a 409 about nobody)
    dave_client = api(ApproverFactory(username="dave"))
    blank = dave_client.post(url, {"reason": REASON, "holder": ""}, format="json")
    assert blank.status_code == 200 and blank.json()["assigned_to"] == "dave"
    # carol takes it over from dave
    taken = carol.post(url, {"reason": REASON, "holder": "dave"}, format="json")
    assert taken.status_code == 200 and taken.json()["assigned_to"] == "carol"
    # a stale holder is a 409 naming who holds it now
    dave = dave_client
    stale = dave.post(url, {"reason": REASON, "holder": "bob"}, format="json")
    assert stale.status_code == 409 and "now claimed by carol" in stale.json()["detail"]
    # and a request nobody holds is claimed, not taken over
    carol.post(f"/api/requests/{held.pk}/release/")
    assert dave.post(url, {"reason": REASON}, format="json").status_code == 409
    assert carol.post("/api/requests/999999/take-over/", {"reason": REASON},
                      format="json").status_code == 404
    assert len(take_overs(held)) == 2


def test_the_schema_documents_the_take_over_body_and_its_answers(approver):
    schema = api(approver).get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/requests/{id}/take-over/"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"] == "#/components/schemas/TakeOverInputRequest"
    component = schema["components"]["schemas"]["TakeOverInputRequest"]
    assert component["required"] == ["reason"]
    assert set(component["properties"]) == {"reason", "holder"}
    assert {"200", "400", "403", "404", "409"} <= set(operation["responses"])
