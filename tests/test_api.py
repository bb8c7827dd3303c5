"""The JSON API: token auth, CRUD with validation, lifecycle actions, visibility."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from tests.factories import PASSWORD
from tests.factories import RelayRequestFactory
from tests.factories import member_of

pytestmark = pytest.mark.django_db

SERVER = {
    "kind": "server",
    "team": "payments",
    "fqdn": "App.Example.org.",
    "ipv4": ["81.2.69.10"],
    "ipv6": ["2a02:0898:0000:0020:0000:0000:0000:0010"],
    "purpose": "Order confirmations",
    "contact_email": "ops@example.org",
    "sender_domains": ["Example.ORG"],
    "expected_daily_volume": 500,
}
ACCOUNT = {
    "kind": "account",
    "team": "payments",
    "account_name": "svc-orders",
    "use_case": "Order mails from the shop",
    "tls_mode": "smtps",
    "contact_email": "ops@example.org",
    "sender_addresses": ["noreply@example.org"],
    "expected_daily_volume": 50,
}


def client_for(user) -> APIClient:
    client = APIClient()
    response = client.post("/api/token/", {"username": user.username, "password": PASSWORD},
                           format="json")
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    return client


def test_token_obtained_with_password_and_required(requester):
    anonymous = APIClient()
    assert anonymous.get("/api/requests/").status_code == 401
    bad = anonymous.post("/api/token/", {"username": "alice", "password": "wrong"},
                         format="json")
    assert bad.status_code == 400
    assert client_for(requester).get("/api/requests/").status_code == 200


def test_create_server_request_normalises_fields(requester):
    # when
    response = client_for(requester).post("/api/requests/", SERVER, format="json")
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "draft"
    assert body["team"] == "payments"
    assert body["fqdn"] == "app.example.org"
    assert body["ipv6"] == ["2a02:898:0:20::10"]
    assert body["sender_domains"] == ["example.org"]
    event = RequestEvent.objects.get(request_id=body["id"])
    assert (event.type, event.actor_name, event.source_ip) == ("created", "alice", "127.0.0.1")


def test_create_and_submit_runs_checks(requester, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(requester).post("/api/requests/", {**SERVER, "submit": True},
                                              format="json")
    assert response.status_code == 201, response.content
    req = RelayRequest.objects.get(pk=response.json()["id"])
    assert req.state == S.PENDING_APPROVAL
    assert req.check_verdict == "pass"
    checks = client_for(requester).get(f"/api/requests/{req.pk}/").json()["checks"]
    assert {c["id"] for c in checks} >= {"address_policy", "forward", "reverse", "sender_spf",
                                          "sender_dmarc", "sender_domain_policy"}
    assert all(set(c) == {"id", "subject", "status", "detail", "evidence"} for c in checks)


def test_create_account_request(requester):
    response = client_for(requester).post("/api/requests/", ACCOUNT, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["kind"], body["account_name"], body["tls_mode"]) == (
        "account", "svc-orders", "smtps")
    assert body["ipv4"] == [] and body["fqdn"] == ""


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        pytest.param({"fqdn": "bad..name"}, "fqdn", "empty label", id="fqdn_empty_label_case"),
        pytest.param({"fqdn": "*.example.org"}, "fqdn", "wildcard", id="fqdn_wildcard_case"),
        pytest.param({"fqdn": "a" * 64 + ".org"}, "fqdn", "63", id="fqdn_long_label_case"),
        pytest.param({"ipv4": ["300.1.1.1"]}, "ipv4", "not a valid IPv4", id="ipv4_syntax_case"),
        pytest.param({"ipv4": ["10.0.0.0/8"]}, "ipv4", "network", id="ipv4_prefix_case"),
        pytest.param({"ipv4": ["2a02:898::1"]}, "ipv4", "not an IPv4", id="ipv4_family_case"),
        pytest.param({"ipv6": ["zz::1"]}, "ipv6", "not a valid IPv6", id="ipv6_syntax_case"),
        pytest.param({"ipv4": [], "ipv6": []}, "ipv6", "at least one", id="no_address_case"),
        pytest.param({"contact_email": "nope"}, "contact_email", "valid email",
                     id="email_case"),
        pytest.param({"expected_daily_volume": 0}, "expected_daily_volume", "greater than",
                     id="volume_zero_case"),
        pytest.param({"expected_daily_volume": "lots"}, "expected_daily_volume",
                     "valid integer", id="volume_text_case"),
        pytest.param({"sender_domains": ["no_underscore!.org"]}, "sender_domains",
                     "not a valid domain", id="sender_domain_case"),
        pytest.param({"sender_domains": []}, "sender_domains", "sender domains",
                     id="sender_required_case"),
        pytest.param({"team": "nope"}, "team", "member", id="team_not_member_case"),
        pytest.param({"kind": "fax"}, "kind", "valid choice", id="kind_case"),
        pytest.param({"ipv4": "81.2.69.10"}, None, None, id="string_list_accepted_case"),
    ],
)
def test_validation_errors_name_field_and_rule(requester, change, field, fragment):
    before = RelayRequest.objects.count()
    response = client_for(requester).post("/api/requests/", {**SERVER, **change},
                                          format="json")
    if field is None:
        assert response.status_code == 201, response.content
        return
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors, errors
    assert fragment.lower() in " ".join(errors[field]).lower()
    assert RelayRequest.objects.count() == before  # nothing half-saved


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tls_mode": "plain"}, "tls_mode"),
        ({"tls_mode": ""}, "tls_mode"),
        ({"account_name": "Bad Name"}, "account_name"),
        ({"use_case": ""}, "use_case"),
        ({"ipv4": ["81.2.69.10"]}, "ipv4"),
        ({"sender_addresses": ["no-at-sign"]}, "sender_addresses"),
    ],
)
def test_account_validation(requester, change, field):
    response = client_for(requester).post("/api/requests/", {**ACCOUNT, **change},
                                          format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not RelayRequest.objects.exists()


@pytest.mark.parametrize("payload", [[], "text", {"kind": None}, {"ipv4": {"a": 1}},
                                     {"expected_daily_volume": 10**30}])
def test_garbage_never_gives_500(requester, payload):
    response = client_for(requester).post("/api/requests/", payload, format="json")
    assert response.status_code == 400


def test_requester_sees_only_own_teams_and_gets_404_for_others(requester, team):
    mine = RelayRequestFactory(team=team, created_by=requester)
    theirs = RelayRequestFactory()
    client = client_for(requester)
    listed = [r["id"] for r in client.get("/api/requests/").json()["results"]]
    assert listed == [mine.pk]
    assert client.get(f"/api/requests/{theirs.pk}/").status_code == 404
    assert client.get(f"/api/requests/{theirs.pk}/events/").status_code == 404
    assert client.post(f"/api/requests/{theirs.pk}/withdraw/").status_code == 404
    assert client.patch(f"/api/requests/{theirs.pk}/", {"purpose": "x"},
                        format="json").status_code == 404


def test_approver_and_auditor_see_everything(approver, auditor):
    RelayRequestFactory.create_batch(3)
    for user in (approver, auditor):
        assert client_for(user).get("/api/requests/").json()["count"] == 3


def test_patch_edits_draft_and_audits_diff(requester, server_request):
    client = client_for(requester)
    response = client.patch(f"/api/requests/{server_request.pk}/",
                            {"purpose": "Invoices", "ipv4": ["81.2.69.77"]}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["purpose"] == "Invoices"
    event = RequestEvent.objects.get(request=server_request, type="updated")
    assert event.parameters["changes"]["purpose"] == ["Order confirmations", "Invoices"]
    assert event.parameters["changes"]["ipv4"] == [["81.2.69.10"], ["81.2.69.77"]]


def test_patch_refused_outside_editable_states(requester, team):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL)
    response = client_for(requester).patch(f"/api/requests/{req.pk}/", {"purpose": "x"},
                                           format="json")
    assert response.status_code == 409
    assert "cannot be edited" in response.json()["detail"]
    req.refresh_from_db()
    assert req.purpose == "Order confirmations"


def test_patch_validates_merged_request(requester, server_request):
    response = client_for(requester).patch(f"/api/requests/{server_request.pk}/",
                                           {"ipv4": [], "ipv6": []}, format="json")
    assert response.status_code == 400
    assert "ipv6" in response.json()


def test_actions_answer_403_for_wrong_role_and_409_for_wrong_state(requester, approver, team):
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass")
    wrong_role = client_for(requester).post(f"/api/requests/{req.pk}/approve/")
    assert wrong_role.status_code == 403
    assert "approvers" in wrong_role.json()["detail"].lower()
    ok = client_for(approver).post(f"/api/requests/{req.pk}/approve/", {"comment": "fine"},
                                   format="json")
    assert ok.status_code == 200, ok.content
    assert ok.json()["state"] in ("provisioning", "active")
    again = client_for(approver).post(f"/api/requests/{req.pk}/reject/", {"comment": "no"},
                                      format="json")
    assert again.status_code == 409
    assert "already decided" in again.json()["detail"].lower()


def test_events_endpoint_returns_trail(requester, server_request):
    client = client_for(requester)
    client.post(f"/api/requests/{server_request.pk}/withdraw/", {"comment": "not needed"},
                format="json")
    events = client.get(f"/api/requests/{server_request.pk}/events/").json()
    assert [(e["actor"], e["from_state"], e["to_state"], e["comment"]) for e in events] == [
        ("alice", "draft", "withdrawn", "not needed")
    ]
    assert events[0]["source_ip"] == "127.0.0.1"


def test_openapi_schema_lists_contract_paths(requester):
    response = client_for(requester).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path in ("/api/token/", "/api/requests/", "/api/requests/{id}/",
                 "/api/requests/{id}/events/", "/api/requests/{id}/approve/",
                 "/api/requests/{id}/withdraw/", "/api/requests/{id}/recheck/"):
        assert path in paths, sorted(paths)


def test_list_query_count_constant(requester, team, django_assert_max_num_queries):
    client = client_for(requester)
    RelayRequestFactory.create_batch(5, team=team, created_by=requester)
    with django_assert_max_num_queries(8) as small:
        client.get("/api/requests/")
    RelayRequestFactory.create_batch(45, team=team, created_by=requester)
    with django_assert_max_num_queries(8) as large:
        client.get("/api/requests/")
    assert len(small.captured_queries) == len(large.captured_queries)


def test_single_request_looks_up_its_host_overlaps_once(requester, team,
                                                        django_assert_max_num_queries):
    # given a server request of the caller's team (a host: warnings and overlaps apply)
    mine = RelayRequestFactory(team=team, created_by=requester)
    client = client_for(requester)
    # when it is read alone: token, groups, the request, its checks, its host overlaps
    with django_assert_max_num_queries(5) as queries:
        response = client.get(f"/api/requests/{mine.pk}/")
    # then warnings and overlaps come from one host look-up, not one each
    assert response.status_code == 200
    assert response.json()["warnings"] == response.json()["overlaps"] == []
    lookups = [q["sql"] for q in queries.captured_queries
               if 'LOWER("requests_app_relayrequest"."fqdn")' in q["sql"]]
    assert len(lookups) == 1, lookups


def test_outsider_member_of_other_team_cannot_create_for_team(team):
    outsider = member_of(RelayRequestFactory().team)
    response = client_for(outsider).post("/api/requests/", SERVER, format="json")
    assert response.status_code == 400
    assert "member" in " ".join(response.json()["team"])


FIELDS = ["kind", "team", "fqdn", "ipv4", "ipv6", "purpose", "contact_email",
          "sender_domains", "sender_addresses", "dkim_selector", "expected_daily_volume",
          "account_name", "use_case", "tls_mode", "chat_channel", "submit", "state", "id"]
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=8,
)


@given(payload=st.dictionaries(st.sampled_from(FIELDS), ANY_VALUE, max_size=10),
       base=st.sampled_from([{}, SERVER, ACCOUNT]))
@hsettings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzed_create_answers_201_or_400_never_500(requester, payload, base):
    client = APIClient()
    client.force_authenticate(requester)
    before = RelayRequest.objects.count()
    response = client.post("/api/requests/", {**base, **payload}, format="json")
    assert response.status_code in (201, 400), (response.status_code, response.content[:300])
    if response.status_code == 400:
        assert isinstance(response.json(), dict)
        assert RelayRequest.objects.count() == before  # nothing half-saved


def test_fields_of_the_other_kind_are_refused(requester):
    response = client_for(requester).post(
        "/api/requests/", {**SERVER, "account_name": "svc-x", "tls_mode": "smtps"},
        format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"account_name", "tls_mode"}
    assert not RelayRequest.objects.exists()
