"""Pages, mails and exports read as a product: labels, JSON, IDN, one action panel,
confirmation of what cannot be undone (without JavaScript too), errors with the right
reason. The browser side (390 px, axe-core, the dialog) is tests/test_browser_journey.py.
"""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from django.template.loader import render_to_string
from django.test import Client
from django.urls import reverse

from requests_app import display
from requests_app import events
from requests_app.checks import family_ids
from requests_app.checks.labels import CHECK_LABELS
from requests_app.checks.labels import CHECKS_RUN
from requests_app.checks.labels import STATUS_LABELS
from requests_app.models import CheckResult
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def visible_text(html: str) -> str:
    """The page without tags, attributes, scripts and styles: what a person reads (the
    folded JSON of evidence and audit parameters is data, shown on request: left out)."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    html = re.sub(r'<pre class="json">.*?</pre>', " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


# --- one place for the labels --------------------------------------------------------


def test_every_registered_check_and_status_has_a_label_that_is_not_its_id():
    # the registered checks, plus the one result of a request whose checks crashed
    assert set(CHECK_LABELS) == set(family_ids()) | {CHECKS_RUN}
    for check_id, label in CHECK_LABELS.items():
        assert label and label != check_id and "_" not in label
    assert set(STATUS_LABELS) == {"pass", "warn", "fail", "error"}


def test_an_unknown_id_still_reads_as_words():
    assert display.check_label("sender_mta_sts") == "Sender mta sts"
    assert display.state_label("pending_approval") == "Pending approval"
    assert display.action_done("checks_passed") == "Passed on to approvers"
    assert display.action_done("gone_action") == "Gone action"


@pytest.fixture
def checked(team, requester):
    """A request sent back by its checks, with a failed PTR check and its trail."""
    req = RelayRequestFactory(team=team, created_by=requester, state=S.NEEDS_CHANGES,
                              check_verdict="fail")
    CheckResult.objects.create(
        request=req, check_id="reverse", subject="81.2.69.10", status="fail",
        detail="no PTR record",
        evidence={"ptr": [], "note": "<b>not markup</b>", "names": ["ü.example"]})
    events.request_transition_event(req, action="submit", from_state=S.DRAFT,
                                    actor=requester, source_ip="127.0.0.1")
    events.request_transition_event(req, action="checks_failed", from_state=S.CHECKING,
                                    actor=None, source_ip=None)
    return req


def test_the_request_page_shows_labels_never_ids(checked, requester):
    page = logged_in(requester).get(checked.get_absolute_url()).content.decode()
    text = visible_text(page)
    # the check, its status and the trail in words
    assert "Reverse DNS names the host (PTR)" in text
    assert re.search(r"DNS checks\s+Failed", text)
    assert "Sent back by its checks (Checking → Needs changes)" in page
    assert "Submitted (Draft → " in page
    # and no id anywhere a person reads it
    for raw in ("checks_failed", "needs_changes", "pending_approval", ">reverse<", ">fail<"):
        assert raw not in text, raw


def test_evidence_is_pretty_escaped_json_on_the_page(checked, requester):
    page = logged_in(requester).get(checked.get_absolute_url()).content.decode()
    block = re.search(r'<pre class="json"><code>(.*?)</code></pre>', page, re.S)
    assert block is not None
    shown = block.group(1).replace("&quot;", '"').replace("&lt;", "<").replace(
        "&gt;", ">").replace("&#x27;", "'").replace("&amp;", "&")
    assert json.loads(shown) == {"ptr": [], "note": "<b>not markup</b>",
                                 "names": ["ü.example"]}
    assert "<b>not markup</b>" not in page  # escaped, never markup
    assert '\n  "names": [\n' in shown  # indented, key-sorted
    # and each audit event's parameters, in the timeline
    assert '<code>{\n  &quot;action&quot;: &quot;checks_failed&quot;\n}</code>' in page


def test_the_audit_csv_carries_parameters_as_json(checked, approver):
    response = logged_in(approver).get(reverse("requests:audit_csv"),
                                       {"request": checked.pk})
    rows = [row for row in csv.DictReader(io.StringIO(
        b"".join(response.streaming_content).decode())) if row["parameters"] is not None]
    assert rows  # (the row-count trailer has no parameters column)
    for row in rows:
        assert isinstance(json.loads(row["parameters"]), dict), row["parameters"]
    assert json.loads(rows[-1]["parameters"]) == {"action": "checks_failed"}


# --- IDN --------------------------------------------------------------------------------


def test_idn_names_are_shown_in_unicode_with_the_dns_form_beside(team, requester):
    req = RelayRequestFactory(team=team, created_by=requester, fqdn="mail.xn--bcher-kva.example",
                              sender_domains=["xn--bcher-kva.example"])
    page = logged_in(requester).get(req.get_absolute_url()).content.decode()
    h1 = re.search(r"<h1>(.*?)</h1>", page, re.S).group(1)
    assert "mail.bücher.example" in h1 and "xn--" not in h1
    assert "<code>mail.xn--bcher-kva.example</code>" in page  # the form DNS has, beside
    subject = render_to_string("requests_app/emails/approved_subject.txt", {"request": req})
    assert "mail.bücher.example" in subject
    assert display.unicode_name("info@xn--bcher-kva.example") == "info@bücher.example"
    assert display.unicode_name("xn--broken-.example") == "xn--broken-.example"


# --- one action panel, below the evidence, with confirmation -----------------------------


@pytest.fixture
def pending(team, requester):
    return RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                               check_verdict="pass")


def test_one_action_panel_with_one_comment_box_below_the_evidence(pending, approver):
    page = logged_in(approver).get(pending.get_absolute_url()).content.decode()
    assert page.count('name="comment"') == 1
    assert page.index('id="checks-title"') < page.index('id="actions-title"')
    panel = page[page.index('id="actions-title"'):]
    for label in ("Approve", "Reject", "Ask for changes"):
        assert f">{label}</button>" in panel
    # the destructive one carries its question for the dialog
    reject = re.search(r"<button[^>]*action-reject[^>]*>", panel).group(0)
    assert "data-confirm=" in reject and "The decision is final" in reject


def test_reject_without_javascript_asks_on_a_page_then_acts_on_confirm(pending, approver):
    client = logged_in(approver)
    url = reverse("requests:reject", args=[pending.pk])
    # when the approver presses Reject (no script: the form posts as it is)
    asked = client.post(url, {"comment": "Not our domain"})
    # then a page asks, carrying the comment, and nothing changed yet
    assert asked.status_code == 200
    page = asked.content.decode()
    assert f"Reject request #{pending.pk}?" in page
    assert 'name="comment" value="Not our domain"' in page
    assert 'name="confirm" value="1"' in page
    assert RelayRequest.objects.get(pk=pending.pk).state == S.PENDING_APPROVAL
    # when they confirm
    done = client.post(url, {"comment": "Not our domain", "confirm": "1"})
    # then it is rejected, with the comment
    assert done.status_code == 302
    rejected = RelayRequest.objects.get(pk=pending.pk)
    assert rejected.state == S.REJECTED and rejected.decision_note == "Not our domain"


def test_a_missing_required_comment_is_refused_before_any_question(pending, approver):
    response = logged_in(approver).post(reverse("requests:reject", args=[pending.pk]), {})
    assert response.status_code == 400
    assert "A written comment is required to reject." in response.content.decode()
    assert 'name="confirm"' not in response.content.decode()


def test_withdraw_and_hand_over_ask_first_too(team, requester):
    draft = RelayRequestFactory(team=team, created_by=requester)
    client = logged_in(requester)
    asked = client.post(reverse("requests:withdraw", args=[draft.pk]), {"comment": ""})
    assert asked.status_code == 200 and "Withdraw request" in asked.content.decode()
    assert RelayRequest.objects.get(pk=draft.pk).state == S.DRAFT

    active = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                                 fqdn="other.example.org", ipv4=["81.2.69.77"], ipv6=[])
    billing = TeamFactory(slug="billing")
    url = reverse("requests:handover", args=[active.pk])
    asked = client.post(url, {"team": "billing", "comment": "theirs"})
    assert asked.status_code == 200
    assert f"Hand request #{active.pk} over to team billing?" in asked.content.decode()
    assert RelayRequest.objects.get(pk=active.pk).team == team
    client.post(url, {"team": "billing", "comment": "theirs", "confirm": "1"})
    assert RelayRequest.objects.get(pk=active.pk).team == billing


# --- forms: the right reason, by the field ----------------------------------------------


def test_not_a_host_is_refused_for_what_it_is(requester):
    client = logged_in(requester)
    body = client.post("/api/quick-check/", {"fqdn": "not a host!!", "ipv4": ["not a host!!"]},
                       content_type="application/json").json()
    assert body["errors"]["fqdn"] == [
        "Not a valid host name (FQDN rule): host name 'not a host!!' contains a space: a "
        "name is one word, its labels joined by dots"]
    # the typed line is one value, refused as such (not as "not", "a", "host!!")
    assert body["errors"]["ipv4"] == ["not a host!! is not a valid IPv4 address."]


def test_the_form_page_carries_the_check_labels_for_the_quick_check(requester):
    page = logged_in(requester).get(reverse("requests:create", args=["server"])).content
    labels = re.search(rb'<script id="check-labels" type="application/json">(.*?)</script>',
                       page, re.S)
    assert labels is not None
    data = json.loads(labels.group(1))
    assert data["checks"]["reverse"] == CHECK_LABELS["reverse"]
    assert data["statuses"]["fail"] == "Failed"


# --- navigation and the dashboard -------------------------------------------------------


def test_skip_link_and_the_current_page_marked(approver):
    page = logged_in(approver).get(reverse("requests:queue")).content.decode()
    assert '<a class="skip-link" href="#main">' in page and '<main id="main"' in page
    current = re.findall(r'<a href="([^"]+)" aria-current="page">', page)
    assert current == [reverse("requests:queue")]


def test_dashboard_states_are_labels(approver, team):
    RelayRequestFactory(team=team, state=S.PENDING_APPROVAL)
    text = visible_text(logged_in(approver).get(reverse("requests:dashboard")).content.decode())
    assert "Pending approval" in text and "Needs changes" in text
    assert "pendingapproval" not in text and "pending_approval" not in text
