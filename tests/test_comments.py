"""The conversation on a request: who writes, who reads, who is mailed, what is refused.

Through both front ends (the request page's form and ``/api/requests/{id}/comments/``),
with the real outbox (eager Celery, ``on_commit`` callbacks executed, Django's locmem
mail backend holding what was rendered and sent).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from django.core import mail
from django.test import Client
from rest_framework.test import APIClient

from requests_app.models import Notification
from requests_app.models import RequestComment
from requests_app.models import RequestEvent
from requests_app.models import RequestState
from tests.factories import PASSWORD
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.factories import member_of

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

pytestmark = pytest.mark.django_db

PAYMENTS_OWNERS = ["alice@people.example.org", "ops@example.org", "payments@teams.example.org"]
APPROVERS = ["bob@people.example.org", "carol@people.example.org"]


@pytest.fixture
def pending(team, requester):
    """A request of the payments team waiting in the approvers' queue."""
    return RelayRequestFactory(team=team, created_by=requester,
                               state=RequestState.PENDING_APPROVAL, check_verdict="pass")


def api(user: AbstractBaseUser) -> APIClient:
    client = APIClient()
    token = client.post("/api/token/", {"username": user.get_username(), "password": PASSWORD})
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.json()['token']}")
    return client


def browser(user: AbstractBaseUser) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post_comment(user: AbstractBaseUser, pk: int, body: object, capture) -> object:
    with capture(execute=True):
        return api(user).post(f"/api/requests/{pk}/comments/", {"body": body}, format="json")


def test_requester_comment_on_the_page_is_kept_audited_and_mailed_to_the_approvers(
    pending, requester, approver, second_approver, django_capture_on_commit_callbacks
):
    # when the requester writes on the request page
    with django_capture_on_commit_callbacks(execute=True):
        response = browser(requester).post(f"/requests/{pending.pk}/comments/",
                                           {"body": "Is the PTR record enough?"},
                                           REMOTE_ADDR="127.0.0.7")
    # then the page goes back to the thread, which shows the comment
    assert response.status_code == 302
    assert response["Location"] == f"/requests/{pending.pk}/#comments"
    page = browser(requester).get(f"/requests/{pending.pk}/").content.decode()
    assert "Is the PTR record enough?" in page and 'id="comments"' in page
    # and it is one row, with one audit event: who, when, from where, what
    [comment] = RequestComment.objects.filter(request=pending)
    assert (comment.author, comment.author_name, comment.body) == (
        requester, "alice", "Is the PTR record enough?")
    [event] = RequestEvent.objects.filter(request=pending, type="comment")
    assert (event.actor, event.source_ip, event.comment) == (
        requester, "127.0.0.7", "Is the PTR record enough?")
    assert event.parameters == {"comment_id": comment.pk, "side": "owners"}
    # and the approvers got one mail quoting it; the requester none
    [message] = mail.outbox
    assert sorted(message.to) == APPROVERS
    assert message.subject == (f"[Relaydesk] #{pending.pk} app.example.org: "
                               "new comment from alice")
    assert "alice (team Payments) wrote on request" in message.body
    assert "Is the PTR record enough?" in message.body


def test_requester_comment_goes_only_to_the_approver_who_claimed_the_request(
    pending, requester, approver, second_approver, django_capture_on_commit_callbacks
):
    # given the request claimed by carol
    pending.assigned_to = second_approver
    pending.save(update_fields=["assigned_to"])
    # when the requester writes
    response = post_comment(requester, pending.pk, "Any news?", django_capture_on_commit_callbacks)
    # then only carol is mailed
    assert response.status_code == 201
    [message] = mail.outbox
    assert message.to == [second_approver.email]


def test_approver_comment_through_the_api_is_mailed_to_the_owners_only(
    pending, requester, approver, second_approver, django_capture_on_commit_callbacks
):
    # when an approver writes through the API
    response = post_comment(approver, pending.pk, "Please add the IPv6 PTR.",
                            django_capture_on_commit_callbacks)
    # then the answer is the comment, marked as the approvers' side
    assert response.status_code == 201
    body = response.json()
    assert (body["author"], body["side"], body["body"]) == (
        "bob", "approvers", "Please add the IPv6 PTR.")
    # and the owners got one mail; no approver did
    [message] = mail.outbox
    assert sorted(message.to) == PAYMENTS_OWNERS
    assert "bob (approver) wrote on request" in message.body
    # and the thread lists it, for the team and the approvers alike
    for reader in (requester, second_approver):
        thread = api(reader).get(f"/api/requests/{pending.pk}/comments/")
        assert thread.status_code == 200
        assert [(c["author"], c["side"], c["body"]) for c in thread.json()] == [
            ("bob", "approvers", "Please add the IPv6 PTR.")]


def test_each_comment_is_mailed_once(
    pending, requester, approver, django_capture_on_commit_callbacks
):
    # when two comments are written, one from each side
    post_comment(requester, pending.pk, "First question", django_capture_on_commit_callbacks)
    post_comment(approver, pending.pk, "First answer", django_capture_on_commit_callbacks)
    # then two outbox rows, one per comment, each sent once
    rows = Notification.objects.filter(request=pending, kind="comment")
    assert sorted(r.event_key for r in rows) == sorted(
        f"request:{pending.pk}:comment:{c.pk}" for c in RequestComment.objects.all())
    assert [r.status for r in rows] == ["sent", "sent"]
    assert len(mail.outbox) == 2


def test_an_approver_on_the_owning_team_writes_for_the_team_and_is_not_mailed_it(
    pending, team, approver, second_approver, django_capture_on_commit_callbacks
):
    # given carol, an approver, is also a member of the owning team
    team.members.add(second_approver)
    # when she writes
    response = post_comment(second_approver, pending.pk, "We fixed the record.",
                            django_capture_on_commit_callbacks)
    # then it is the team's comment, mailed to the other approvers, not to herself
    assert response.json()["side"] == "owners"
    [message] = mail.outbox
    assert message.to == [approver.email]


def test_auditors_read_the_thread_but_cannot_write(
    pending, requester, auditor, django_capture_on_commit_callbacks
):
    post_comment(requester, pending.pk, "Hello", django_capture_on_commit_callbacks)
    mail.outbox.clear()
    # when an auditor reads and tries to write, through the API and the page
    thread = api(auditor).get(f"/api/requests/{pending.pk}/comments/")
    refused = post_comment(auditor, pending.pk, "Hi", django_capture_on_commit_callbacks)
    page_post = browser(auditor).post(f"/requests/{pending.pk}/comments/", {"body": "Hi"})
    page = browser(auditor).get(f"/requests/{pending.pk}/").content.decode()
    # then reading works, writing is a 403 that says why, and nothing was written
    assert [c["body"] for c in thread.json()] == ["Hello"]
    assert refused.status_code == 403
    assert "Only members of the owning team and approvers can comment" in (
        refused.json()["detail"])
    assert page_post.status_code == 403
    assert RequestComment.objects.count() == 1 and mail.outbox == []
    # and the page shows the thread without a form
    assert "Hello" in page and 'name="body"' not in page


def test_other_teams_do_not_even_see_the_thread(
    pending, django_capture_on_commit_callbacks
):
    stranger = member_of(TeamFactory(slug="billing"), username="eve")
    assert api(stranger).get(f"/api/requests/{pending.pk}/comments/").status_code == 404
    refused = post_comment(stranger, pending.pk, "Hi", django_capture_on_commit_callbacks)
    assert refused.status_code == 404
    assert browser(stranger).post(f"/requests/{pending.pk}/comments/",
                                  {"body": "Hi"}).status_code == 404
    assert RequestComment.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("", "Write a comment: it is empty.", id="empty"),
        pytest.param("   \n ", "Write a comment: it is empty.", id="blank"),
        pytest.param("x" * 2001, "Comment is at most 2000 characters (this one has 2001).",
                     id="too_long"),
        pytest.param("ok \u202e evil", "Comment", id="bidi_override"),
        pytest.param("bell\x07", "Comment", id="control_character"),
        pytest.param(["a list"], "The comment must be text.", id="not_text"),
    ],
)
def test_bad_comments_are_a_400_naming_the_field_and_nothing_is_written(
    pending, requester, approver, django_capture_on_commit_callbacks, body, message
):
    # when the requester sends a bad comment through the API
    response = post_comment(requester, pending.pk, body, django_capture_on_commit_callbacks)
    # then a 400 names the field and the rule, and nothing was kept, audited or mailed
    assert response.status_code == 400, response.content
    errors = response.json()
    assert list(errors) == ["body"], errors
    assert errors["body"][0].startswith(message), errors
    assert RequestComment.objects.count() == 0
    assert not RequestEvent.objects.filter(type="comment").exists()
    assert mail.outbox == [] and not Notification.objects.exists()


def test_a_refused_comment_on_the_page_is_a_400_that_keeps_the_text(
    pending, requester, approver, django_capture_on_commit_callbacks
):
    # when the requester posts a too-long comment from the page
    text = "y" * 2001
    response = browser(requester).post(f"/requests/{pending.pk}/comments/", {"body": text})
    # then the page comes back as a 400 saying why, with the text in the box
    assert response.status_code == 400
    page = response.content.decode()
    assert "Body: Comment is at most 2000 characters (this one has 2001)." in page
    assert re.search(rf'<textarea id="comment-body" name="body"[^>]*>{text}</textarea>', page)
    assert RequestComment.objects.count() == 0


def test_html_in_a_comment_is_text_in_the_page_and_the_mail(
    pending, requester, approver, django_capture_on_commit_callbacks
):
    post_comment(requester, pending.pk, "<b>bold</b> & <script>x()</script>",
                 django_capture_on_commit_callbacks)
    page = browser(approver).get(f"/requests/{pending.pk}/").content.decode()
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;" in page
    assert "<script>x()" not in page
    [message] = mail.outbox
    html = message.alternatives[0][0]
    assert "&lt;script&gt;" in html and "<script>" not in html


def test_comments_work_in_any_state_and_change_nothing_else(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given a rejected request (the requester asks why)
    req = RelayRequestFactory(team=team, created_by=requester, state=RequestState.REJECTED)
    ApproverFactory(username="dave")
    # when the requester comments
    response = post_comment(requester, req.pk, "Why was it rejected?",
                            django_capture_on_commit_callbacks)
    # then the comment is kept and the request is untouched
    assert response.status_code == 201
    req.refresh_from_db()
    assert req.state == RequestState.REJECTED
    assert len(mail.outbox) == 1
