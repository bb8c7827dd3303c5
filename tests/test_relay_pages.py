"""Relay config pages: one version and its files (view and download), a compare form
that needs no JavaScript, and change summaries that are right for merged lines."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from requests_app.models import RelayConfigChange
from requests_app.models import RelayConfigVersion
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.relay import relay_config_rebuild
from tests.factories import RelayRequestFactory

pytestmark = pytest.mark.django_db

ADDRESS_LINE = "81.2.69.10/32 OK"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def summary(version: int) -> set[tuple[str, str, str, int | None]]:
    """The stored changes of one version: (action, file, line, request)."""
    return set(RelayConfigChange.objects.filter(version__number=version)
               .values_list("action", "file", "line", "request_id"))


@pytest.fixture
def shared(team, requester):
    """Versions 1-6: a, then b on a's address, accounts x and y on one sender, then a
    and x leave. Returns the requests by name."""
    def active(**fields):
        return RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE, **fields)

    def leaves(req):
        RelayRequest.objects.filter(pk=req.pk).update(state=S.REVOKED)

    made = {}
    made["a"] = active(fqdn="a.example.org", ipv4=["81.2.69.10"], ipv6=[])
    relay_config_rebuild(reason="a")
    made["b"] = active(fqdn="b.example.org", ipv4=["81.2.69.10"], ipv6=[])
    relay_config_rebuild(reason="b")
    made["x"] = active(account=True, account_name="svc-x", sender_addresses=["shop@example.org"],
                       sender_domains=[])
    relay_config_rebuild(reason="x")
    made["y"] = active(account=True, account_name="svc-y", sender_addresses=["shop@example.org"],
                       sender_domains=[])
    relay_config_rebuild(reason="y")
    leaves(made["a"])
    relay_config_rebuild(reason="a leaves")
    leaves(made["x"])
    relay_config_rebuild(reason="x leaves")
    assert RelayConfigVersion.objects.count() == 6
    return made


# --- summaries of merged lines -------------------------------------------------------------

def test_a_shared_address_is_attributed_to_each_request(shared):
    a, b = shared["a"].pk, shared["b"].pk
    # The cidr map writes the address once per request: b's copy is b's addition (it was
    # lost before: identical lines collapsed into one, attributed to the last comment).
    assert summary(2) == {("added", "client_access.cidr", ADDRESS_LINE, b)}
    # a leaves: a's copy goes, b's stays; the policy line passes from a to b.
    assert summary(5) == {
        ("removed", "client_access.cidr", ADDRESS_LINE, a),
        ("removed", "relay_policy", f"client 81.2.69.10 {a} 200/86400,1/1 @example.org sandbox",
         a),
        ("added", "relay_policy", f"client 81.2.69.10 {b} 200/86400,1/1 @example.org sandbox",
         b),
    }


def test_a_sender_two_accounts_share_is_attributed_per_login(shared):
    x, y = shared["x"].pk, shared["y"].pk
    files = RelayConfigVersion.objects.get(number=4).files["sender_login_maps"]
    assert "shop@example.org  svc-x,svc-y\n" in files  # one merged line in the file
    # y's share is y's; x's share did not change (before: x "removed" and "added" the line)
    assert {c for c in summary(4) if c[1] == "sender_login_maps"} == {
        ("added", "sender_login_maps", "shop@example.org  svc-y", y)}
    # x leaves: only x's share goes (before: y was said to have added the line)
    assert {c for c in summary(6) if c[1] == "sender_login_maps"} == {
        ("removed", "sender_login_maps", "shop@example.org  svc-x", x)}


def test_diff_page_summarises_any_two_versions_by_request(shared, approver):
    b, y = shared["b"].pk, shared["y"].pk
    html = logged_in(approver).get(reverse("relay:diff", args=[1, 4])).content.decode()
    for pk in (b, y):
        assert f'<a href="{reverse("requests:detail", args=[pk])}">#{pk}</a>' in html
    assert "<code>shop@example.org  svc-y</code>" in html
    assert "<code>shop@example.org  svc-x</code>" in html
    assert "+shop@example.org  svc-x,svc-y" in html  # the diff shows the file as it is
    # the same summary from the files as the one stored with each version
    consecutive = logged_in(approver).get(reverse("relay:diff", args=[5, 6]))
    shown = {(action, file, line, req) for file, action, line, req
             in consecutive.context["changes"]}
    assert shown == summary(6)


# --- compare without JavaScript ------------------------------------------------------------

def test_compare_form_is_a_plain_get_form_with_two_selects(shared, approver):
    html = logged_in(approver).get(reverse("relay:versions")).content.decode()
    assert f'method="get" action="{reverse("relay:compare")}"' in html
    assert "onsubmit" not in html
    assert '<select name="old">' in html and '<select name="new">' in html
    assert '<option value="5" selected>v5</option>' in html
    assert '<option value="6" selected>v6</option>' in html


def test_compare_goes_to_the_diff_and_refuses_bad_numbers(shared, approver):
    client = logged_in(approver)
    response = client.get(reverse("relay:compare"), {"old": "2", "new": "6"})
    assert response.status_code == 302
    assert response["Location"] == reverse("relay:diff", args=[2, 6])
    assert client.get(response["Location"]).status_code == 200
    for query, name in (({"new": "6"}, "old"), ({"old": "x", "new": "6"}, "old"),
                        ({"old": "1", "new": "١"}, "new")):
        bad = client.get(reverse("relay:compare"), query)
        assert bad.status_code == 400
        assert f"&#x27;{name}&#x27;" in bad.content.decode()
    assert client.get(reverse("relay:diff", args=[1, 99])).status_code == 404


# --- one version, each file ---------------------------------------------------------------

def test_version_page_lists_each_file_with_view_and_download(shared, approver):
    version = RelayConfigVersion.objects.get(number=4)
    html = logged_in(approver).get(reverse("relay:version", args=[4])).content.decode()
    for name in version.files:
        url = reverse("relay:version_file", args=[4, name])
        assert f'href="{url}"' in html
        assert f'href="{url}?download=1"' in html


def test_file_view_and_download_are_the_stored_bytes(shared, approver):
    client = logged_in(approver)
    text = RelayConfigVersion.objects.get(number=4).files["sender_login_maps"]
    url = reverse("relay:version_file", args=[4, "sender_login_maps"])
    page = client.get(url)
    assert page.status_code == 200 and page.context["text"] == text
    assert "shop@example.org  svc-x,svc-y" in page.content.decode()
    download = client.get(url, {"download": "1"})
    assert download.content == text.encode()
    assert download["Content-Disposition"] == 'attachment; filename="v4-sender_login_maps"'
    assert download["Content-Type"].startswith("text/plain")
    assert client.get(reverse("relay:version_file", args=[4, "passwd"])).status_code == 404
    assert client.get(reverse("relay:version", args=[99])).status_code == 404


def test_version_pages_are_for_approvers_and_auditors(shared, requester, auditor):
    urls = [reverse("relay:version", args=[1]),
            reverse("relay:version_file", args=[1, "client_access.cidr"]),
            reverse("relay:compare") + "?old=1&new=2"]
    for url in urls:
        assert logged_in(requester).get(url).status_code == 403
        assert logged_in(auditor).get(url).status_code in (200, 302)


# --- query counts ------------------------------------------------------------------------

def _queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_version_list_costs_the_same_at_1_and_30_versions(approver):
    client = logged_in(approver)
    RelayConfigVersion.objects.create(number=1, files={"client_access.cidr": ""}, digest="0")
    one = _queries(client, reverse("relay:versions"))
    for n in range(2, 31):
        RelayConfigVersion.objects.create(number=n, files={"client_access.cidr": ""},
                                          digest=str(n))
    assert _queries(client, reverse("relay:versions")) == one


def test_diff_and_file_pages_cost_the_same_at_1_and_30_entries(approver, team, requester):
    client = logged_in(approver)

    def grow(start: int, count: int) -> int:
        for i in range(start, start + count):
            RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                                fqdn=f"h{i}.example.org", ipv4=[f"81.2.69.{i + 10}"], ipv6=[])
        relay_config_rebuild(reason="grow")
        return RelayConfigVersion.objects.order_by("-number").first().number

    relay_config_rebuild(reason="empty")
    first = grow(0, 1)
    small = [_queries(client, reverse("relay:diff", args=[first - 1, first])),
             _queries(client, reverse("relay:version", args=[first])),
             _queries(client, reverse("relay:version_file", args=[first, "relay_policy"]))]
    last = grow(1, 29)
    large = [_queries(client, reverse("relay:diff", args=[first, last])),
             _queries(client, reverse("relay:version", args=[last])),
             _queries(client, reverse("relay:version_file", args=[last, "relay_policy"]))]
    assert small == large
