"""The requester list and the approvers' queue: search (IDN, address forms, senders,
people), filters, sortable columns, claims ("assigned to me"), waiting-time highlight,
the CSV of the filtered view, and a query count that does not grow with the rows."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from requests_app import assignment
from requests_app.exceptions import ActionConflict
from requests_app.models import Membership
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.selectors import search_needles
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.factories import member_of

pytestmark = pytest.mark.django_db

LIST = reverse("requests:list")
QUEUE = reverse("requests:queue")


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def subjects(response) -> list[str]:
    assert response.status_code == 200, response.content[:500]
    return [r.subject for r in response.context["requests"]]


@pytest.fixture
def catalogue(team, requester):
    """Requests of two teams: an IDN host, an IPv6 host, an account, an active entry."""
    other = TeamFactory(slug="blue")
    stranger = member_of(other, username="zed", first_name="Zoë", last_name="Quist")
    return {
        "idn": RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                                   fqdn="xn--bcher-kva.example.org", ipv4=["81.2.69.20"],
                                   ipv6=[], sender_domains=["xn--mller-kva.example.org"]),
        "v6": RelayRequestFactory(team=other, created_by=stranger, state=S.PENDING_APPROVAL,
                                  fqdn="six.example.org", ipv4=[],
                                  ipv6=["2a02:898:0:20::10"], sender_domains=["six.example"]),
        "acct": RelayRequestFactory(team=other, created_by=stranger, account=True,
                                    account_name="svc-billing", state=S.CHECKING,
                                    sender_addresses=["invoices@billing.example.net"]),
        "active": RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                                      fqdn="live.example.org", ipv4=["81.2.69.30"], ipv6=[]),
    }


# --- search ------------------------------------------------------------------------------

def test_search_needles_turn_unicode_names_and_address_forms_into_stored_forms():
    assert "xn--bcher-kva.example.org" in search_needles("Bücher.Example.org.")
    assert "2001:db8::10" in search_needles("2001:0DB8:0000:0000:0000:0000:0000:0010")
    assert "2001:db8::10" in search_needles("[2001:DB8::10]")
    assert search_needles("  ") == ()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("bücher.example.org", ["xn--bcher-kva.example.org"], id="unicode_fqdn"),
        pytest.param("BÜCHER", ["xn--bcher-kva.example.org"], id="unicode_label_upper"),
        pytest.param("xn--bcher-kva", ["xn--bcher-kva.example.org"], id="punycode_fqdn"),
        pytest.param("müller.example.org", ["xn--bcher-kva.example.org"],
                     id="unicode_sender_domain"),
        pytest.param("2A02:898:0:20::10", ["six.example.org"], id="ipv6_upper"),
        pytest.param("2a02:0898:0000:0020:0000:0000:0000:0010", ["six.example.org"],
                     id="ipv6_expanded"),
        pytest.param("81.2.69.20", ["xn--bcher-kva.example.org"], id="ipv4"),
        pytest.param("six.example", ["six.example.org"], id="sender_domain"),
        pytest.param("billing.example.net", ["svc-billing"], id="account_sender_address"),
        pytest.param("svc-bill", ["svc-billing"], id="account_name"),
        pytest.param("zed", ["six.example.org", "svc-billing"], id="requester_username"),
        pytest.param("zoë quist", ["six.example.org", "svc-billing"], id="requester_name"),
        pytest.param("nothing-like-this", [], id="no_match"),
    ],
)
def test_queue_search_finds_each_form(query, expected, approver, catalogue):
    found = subjects(logged_in(approver).get(QUEUE, {"q": query, "sort": "subject"}))
    assert found == expected


def test_search_by_id(approver, catalogue):
    pk = catalogue["v6"].pk
    assert subjects(logged_in(approver).get(QUEUE, {"q": f"#{pk}"})) == ["six.example.org"]


def test_requester_search_stays_within_their_teams(requester, catalogue):
    client = logged_in(requester)
    assert subjects(client.get(LIST, {"q": "six.example"})) == []
    assert subjects(client.get(LIST, {"q": "bücher"})) == ["xn--bcher-kva.example.org"]


def test_list_and_queue_show_idn_names_in_unicode(requester, approver, catalogue):
    list_html = logged_in(requester).get(LIST).content.decode()
    queue_html = logged_in(approver).get(QUEUE).content.decode()
    for html in (list_html, queue_html):
        assert "bücher.example.org" in html
        assert ">xn--bcher-kva.example.org<" not in html
    assert "müller.example.org" in queue_html


# --- filters and sort --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param({}, ["live.example.org", "svc-billing", "six.example.org",
                          "xn--bcher-kva.example.org"], id="all_newest_first"),
        pytest.param({"state": "active"}, ["live.example.org"], id="state"),
        pytest.param({"kind": "account"}, ["svc-billing"], id="kind"),
        pytest.param({"team": "blue"}, ["svc-billing", "six.example.org"], id="team"),
        pytest.param({"tier": "production"}, [], id="tier"),
        pytest.param({"sort": "subject"}, ["live.example.org", "six.example.org",
                                           "svc-billing", "xn--bcher-kva.example.org"],
                     id="sort_subject"),
        pytest.param({"sort": "-team", "kind": "server"},
                     ["live.example.org", "xn--bcher-kva.example.org", "six.example.org"],
                     id="sort_team_desc_ties_by_id_desc"),
    ],
)
def test_list_filters_and_sort_for_approvers(query, expected, approver, catalogue):
    assert subjects(logged_in(approver).get(LIST, query)) == expected


def test_equal_sort_values_keep_one_order_by_id(approver, team, requester):
    rows = RelayRequestFactory.create_batch(4, team=team, created_by=requester,
                                            state=S.PENDING_APPROVAL, fqdn="same.example.org")
    response = logged_in(approver).get(QUEUE, {"sort": "subject"})
    assert [r.pk for r in response.context["requests"]] == [r.pk for r in rows]
    response = logged_in(approver).get(QUEUE, {"sort": "-subject"})
    assert [r.pk for r in response.context["requests"]] == [r.pk for r in reversed(rows)]


@pytest.mark.parametrize("bad", ["fqdn; drop table", "password", "--team", "team,state"])
def test_sort_outside_the_whitelist_is_a_400_naming_it(bad, approver):
    response = logged_in(approver).get(QUEUE, {"sort": bad})
    assert response.status_code == 400
    assert "sort" in response.content.decode()


def test_column_headers_link_to_their_sort_and_announce_it(approver, catalogue):
    html = logged_in(approver).get(QUEUE, {"sort": "team", "kind": "server"}).content.decode()
    assert 'aria-sort="ascending"' in html
    assert "?kind=server&amp;sort=-team" in html  # a second click reverses, filters kept
    assert "?kind=server&amp;sort=subject" in html


def test_queue_default_is_open_requests_oldest_submitted_first(approver, team, requester):
    now = timezone.now()
    newer = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                                fqdn="new.example.org")
    older = RelayRequestFactory(team=team, created_by=requester, state=S.NEEDS_CHANGES,
                                fqdn="old.example.org")
    RelayRequestFactory(team=team, created_by=requester, state=S.REJECTED)
    RelayRequest.objects.filter(pk=newer.pk).update(submitted_at=now)
    RelayRequest.objects.filter(pk=older.pk).update(submitted_at=now - timedelta(days=2))
    assert subjects(logged_in(approver).get(QUEUE)) == ["old.example.org", "new.example.org"]


# --- claims: "assigned to me" ------------------------------------------------------------

def test_claim_assigns_audits_and_filters(approver, second_approver, catalogue):
    idn, v6 = catalogue["idn"], catalogue["v6"]
    client = logged_in(approver)
    response = client.post(reverse("requests:claim", args=[idn.pk]), {"next": QUEUE})
    assert response.status_code == 302 and response["Location"] == QUEUE
    idn.refresh_from_db()
    assert idn.assigned_to == approver and idn.assigned_at is not None
    event = RequestEvent.objects.get(request=idn, type=RequestEvent.Type.ASSIGNMENT)
    assert event.actor == approver
    assert event.parameters == {"action": "claim", "assigned_to": "bob", "previous": ""}
    mine = subjects(client.get(QUEUE, {"assigned": "me"}))
    assert mine == ["xn--bcher-kva.example.org"]
    assert v6.subject in subjects(client.get(QUEUE, {"assigned": "none"}))
    assert idn.subject not in subjects(client.get(QUEUE, {"assigned": "none"}))
    assert subjects(logged_in(second_approver).get(QUEUE, {"assigned": "me"})) == []


def test_claim_of_a_request_someone_else_holds_is_a_409_naming_them(
        approver, second_approver, catalogue):
    idn = catalogue["idn"]
    assignment.claim(request_id=idn.pk, by=approver)
    response = logged_in(second_approver).post(reverse("requests:claim", args=[idn.pk]))
    assert response.status_code == 409
    assert "claimed by bob" in response.content.decode()
    with pytest.raises(ActionConflict, match="claimed by bob"):
        assignment.release(request_id=idn.pk, by=second_approver)
    idn.refresh_from_db()
    assert idn.assigned_to == approver


def test_claim_and_release_through_the_api(approver, second_approver, requester, catalogue):
    idn = catalogue["idn"]
    bob, carol = APIClient(), APIClient()
    bob.force_authenticate(approver)
    carol.force_authenticate(second_approver)
    # when an approver claims through the API, the request says so and the filter finds it
    claimed = bob.post(f"/api/requests/{idn.pk}/claim/")
    assert claimed.status_code == 200 and claimed.json()["assigned_to"] == "bob"
    assert [r["id"] for r in bob.get("/api/requests/", {"assigned": "me"}).json()["results"]] \
        == [idn.pk]
    assert idn.pk not in [r["id"] for r in
                          bob.get("/api/requests/", {"assigned": "none"}).json()["results"]]
    # then another approver's claim or release is a 409 naming the holder
    for path in ("claim", "release"):
        refused = carol.post(f"/api/requests/{idn.pk}/{path}/")
        assert refused.status_code == 409 and "claimed by bob" in refused.content.decode()
    # and a requester may not claim (403); the holder releases it
    owner = APIClient()
    owner.force_authenticate(requester)
    assert owner.post(f"/api/requests/{idn.pk}/claim/").status_code == 403
    released = bob.post(f"/api/requests/{idn.pk}/release/")
    assert released.status_code == 200 and released.json()["assigned_to"] is None
    assert bob.get("/api/requests/", {"assigned": "bogus"}).status_code == 400


def test_release_then_another_approver_can_claim(approver, second_approver, catalogue):
    idn = catalogue["idn"]
    assignment.claim(request_id=idn.pk, by=approver)
    assignment.claim(request_id=idn.pk, by=approver)  # a double click records nothing new
    assert logged_in(approver).post(reverse("requests:release", args=[idn.pk])).status_code \
        == 302
    assignment.claim(request_id=idn.pk, by=second_approver)
    idn.refresh_from_db()
    assert idn.assigned_to == second_approver
    actions = list(RequestEvent.objects.filter(request=idn, type="assignment")
                   .order_by("pk").values_list("actor__username", "parameters__action"))
    assert actions == [("bob", "claim"), ("bob", "release"), ("carol", "claim")]


def test_only_an_approver_who_could_decide_may_claim(requester, team, catalogue):
    idn = catalogue["idn"]
    assert logged_in(requester).post(reverse("requests:claim", args=[idn.pk])).status_code \
        == 403
    insider = ApproverFactory(username="dora")
    Membership.objects.create(team=team, user=insider)  # an approver of the owning team
    assert logged_in(insider).post(reverse("requests:claim", args=[idn.pk])).status_code \
        == 403
    idn.refresh_from_db()
    assert idn.assigned_to is None


def test_a_request_that_waits_for_nobody_cannot_be_claimed(approver, catalogue):
    response = logged_in(approver).post(reverse("requests:claim",
                                                args=[catalogue["active"].pk]))
    assert response.status_code == 409
    assert "does not wait for an approver" in response.content.decode()


def test_claim_next_refuses_another_host(approver, catalogue):
    response = logged_in(approver).post(reverse("requests:claim", args=[catalogue["idn"].pk]),
                                        {"next": "https://evil.example/"})
    assert response["Location"] == catalogue["idn"].get_absolute_url()


# --- waiting time ------------------------------------------------------------------------

def test_waiting_time_is_highlighted_with_words_not_colour_alone(approver, team, requester):
    now = timezone.now()
    ages = {"fresh.example.org": timedelta(hours=2), "late.example.org": timedelta(days=2),
            "old.example.org": timedelta(days=4)}
    for fqdn, age in ages.items():
        r = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                                fqdn=fqdn)
        RelayRequest.objects.filter(pk=r.pk).update(submitted_at=now - age)
    response = logged_in(approver).get(QUEUE)
    marks = {r.subject: r.age for r in response.context["requests"]}
    assert marks == {"old.example.org": "old", "late.example.org": "late",
                     "fresh.example.org": ""}
    html = response.content.decode()
    assert html.count("over 3 days") == 1 and html.count("over 1 day<") == 1
    assert 'class="row-none age-old"' in html


# --- CSV of the filtered view ------------------------------------------------------------

def _csv(response) -> list[list[str]]:
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_csv_has_the_page_filters_and_order(approver, catalogue):
    client = logged_in(approver)
    query = {"kind": "server", "sort": "-subject"}
    page = subjects(client.get(LIST, query))
    rows = _csv(client.get(reverse("requests:list_csv"), query))
    assert rows[0][:3] == ["id", "kind", "subject"]
    assert [row[3] for row in rows[1:]] == page  # subject_ascii, in the page's order
    assert rows[1][2] == "bücher.example.org"  # xn--… sorts last, descending first
    queue_rows = _csv(client.get(reverse("requests:queue_csv"), {"q": "zed"}))
    assert sorted(row[2] for row in queue_rows[1:]) == ["six.example.org", "svc-billing"]


def test_csv_link_on_the_page_carries_the_filters(approver, catalogue):
    html = logged_in(approver).get(QUEUE, {"team": "blue", "sort": "state"}).content.decode()
    assert reverse("requests:queue_csv") + "?team=blue&amp;sort=state" in html


def test_csv_neutralises_formulas_and_respects_scope(requester, approver, team):
    evil = member_of(team, username="=cmd")
    RelayRequestFactory(team=team, created_by=evil, fqdn="x.example.org")
    RelayRequestFactory(team=TeamFactory(slug="other"), fqdn="hidden.example.org")
    rows = _csv(logged_in(requester).get(reverse("requests:list_csv")))
    assert [row[2] for row in rows[1:]] == ["x.example.org"]
    assert rows[1][8] == "'=cmd"
    assert logged_in(requester).get(reverse("requests:queue_csv")).status_code == 403
    assert len(_csv(logged_in(approver).get(reverse("requests:list_csv")))) == 3


# --- query counts ------------------------------------------------------------------------

def _count(client: Client, url: str, query: dict[str, str]) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, query)
        if isinstance(response, StreamingHttpResponse):
            b"".join(response.streaming_content)
    assert response.status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.parametrize(
    ("url", "query"),
    [
        pytest.param(LIST, {}, id="list"),
        pytest.param(LIST, {"q": "example", "sort": "assigned"}, id="list_search_sorted"),
        pytest.param(QUEUE, {}, id="queue"),
        pytest.param(QUEUE, {"q": "bücher", "assigned": "none", "sort": "-requester"},
                     id="queue_search_sorted"),
        pytest.param(reverse("requests:list_csv"), {}, id="list_csv"),
        pytest.param(reverse("requests:queue_csv"), {"sort": "team"}, id="queue_csv"),
    ],
)
def test_query_count_is_the_same_at_1_and_30_rows(url, query, approver, second_approver,
                                                   team, requester):
    client = logged_in(approver)
    def make(n: int) -> None:
        for i in range(n):
            r = RelayRequestFactory(team=TeamFactory(), state=S.PENDING_APPROVAL,
                                    fqdn=f"xn--bcher-kva{i}.example.org", check_verdict="pass",
                                    sender_domains=["example.org"])
            if i % 2:
                RelayRequest.objects.filter(pk=r.pk).update(assigned_to=second_approver,
                                                            assigned_at=timezone.now())
    make(1)
    one = _count(client, url, query)
    make(29)
    thirty = _count(client, url, query)
    assert one == thirty


def test_a_partial_update_answers_with_assigned_to_too(requester, team):
    # a PATCH answer is the whole request, assigned_to included (null: nobody claimed it)
    draft = RelayRequestFactory(team=team, created_by=requester)
    client = APIClient()
    client.force_authenticate(requester)
    response = client.patch(f"/api/requests/{draft.pk}/", {"chat_channel": "#mail"},
                            format="json")
    assert response.status_code == 200, response.content
    assert "assigned_to" in response.json() and response.json()["assigned_to"] is None
