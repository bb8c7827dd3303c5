"""One request-kind specification (requests_app/kinds.py): forms, validation, services,
checks, relay and snippets ask it instead of branching on ``kind``."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from requests_app import kinds
from requests_app.checking import spec_for
from requests_app.forms import form_class_for
from requests_app.models import RequestKind
from requests_app.models import RequestState as S
from requests_app.relay import relay_entries
from requests_app.relay_backend import AccountEntry
from requests_app.relay_backend import ServerEntry
from requests_app.services import EDITABLE_FIELDS
from requests_app.snippets import snippets_for
from requests_app.validators import validate_request
from tests.factories import RelayRequestFactory

APP = Path(__file__).resolve().parent.parent / "requests_app"
# A comparison of a request's kind with one kind's value, or a query for one kind.
_BRANCH = re.compile(
    r"kind\s*[!=]=\s*(?:RequestKind\.|[\"'](?:server|account)[\"'])"
    r"|kind=RequestKind\.|kind=[\"'](?:server|account)[\"']"
)


def test_every_kind_of_the_model_has_one_spec():
    assert list(kinds.KINDS) == list(RequestKind.values)


def test_no_module_branches_on_a_request_kind():
    # given every module of the app except the spec and the model (whose database
    # constraints the migrations record)
    offenders = [
        f"{path.relative_to(APP)}:{number}: {line.strip()}"
        for path in sorted(APP.rglob("*.py"))
        if path.name not in ("kinds.py", "models.py") and "migrations" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _BRANCH.search(line)
    ]
    # then none of them asks "which kind is this?" itself
    assert offenders == []


@pytest.mark.parametrize("value", list(kinds.KINDS))
def test_each_kind_form_asks_exactly_the_kind_fields(value):
    spec = kinds.kind_spec(value)
    fields = set(form_class_for(value).base_fields)
    assert set(spec.fields) <= fields
    assert not (set(kinds.KIND_FIELDS) - set(spec.fields)) & fields


def test_editable_fields_are_the_common_fields_and_every_kind_field():
    assert EDITABLE_FIELDS == (*kinds.COMMON_FIELDS, *kinds.KIND_FIELDS)


def test_an_unknown_kind_is_refused_naming_the_kinds_there_are():
    errors = validate_request({"kind": "printer", "sender_domains": ["example.org"],
                               "expected_daily_volume": 1})
    assert [e.messages for e in errors["kind"]] == [["Kind must be 'server' or 'account'."]]
    with pytest.raises(ValueError, match="unknown request kind 'printer'"):
        kinds.kind_spec("printer")


def test_validation_asks_the_kind_spec_for_its_rules(monkeypatch):
    # given a new kind declared only in the spec, with a rule of its own
    def needs_model(data, add):
        if not data.get("model"):
            add("model", "A printer request needs the printer model.", "required")

    printer = dataclasses.replace(kinds.KINDS["server"], value="printer",
                                  validate=needs_model)
    monkeypatch.setitem(kinds.KINDS, "printer", printer)
    # when a request of that kind is validated
    errors = validate_request({"kind": "printer", "sender_domains": ["example.org"],
                               "expected_daily_volume": 1})
    # then its rule decides, and no other kind's rule is applied
    assert {f: [e.messages for e in errs] for f, errs in errors.items()} == {
        "model": [["A printer request needs the printer model."]]}


@pytest.mark.django_db
def test_checks_relay_and_snippets_follow_the_kind_spec(team, requester):
    # given an active server and an active account
    server = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE)
    account = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                                  account=True, account_name="svc-shop")
    # then the host checks apply to the server only
    assert spec_for(server).fqdn == "app.example.org"
    assert spec_for(server).addresses == ("2a02:898:0:20::10", "81.2.69.10")
    assert (spec_for(account).fqdn, spec_for(account).addresses) == (None, ())
    # and the relay gets one entry of each, built as the spec says
    servers, accounts = relay_entries()
    # (senders, tier and volume too: the relay's sender policy and quotas need them)
    assert list(servers) == [ServerEntry(server.pk, "app.example.org", "payments",
                                         ("2a02:898:0:20::10", "81.2.69.10"),
                                         senders=("@example.org",), production=False,
                                         daily_volume=100)]
    assert list(accounts) == [AccountEntry(account.pk, "svc-shop", "payments",
                                           ("noreply@example.org", "@example.org"),
                                           production=False, daily_volume=100)]
    # and each gets its kind's snippets, and its subject is its kind's subject field
    assert [s.key for s in snippets_for(server)] == list(kinds.KINDS["server"].snippets)
    assert [s.key for s in snippets_for(account)] == list(kinds.KINDS["account"].snippets)
    assert (server.subject, account.subject) == ("app.example.org", "svc-shop")


@pytest.mark.django_db
def test_the_new_request_page_offers_every_kind_with_its_description(requester):
    # given a signed-in requester
    client = Client()
    client.force_login(requester)
    # when the "New request" page is shown
    page = client.get(reverse("requests:choose")).content.decode()
    # then it has one card per kind: a link to the kind's form, its label and description
    for value, spec in kinds.KINDS.items():
        assert f'href="{reverse("requests:create", args=[value])}"' in page
        assert f"<h2>{RequestKind(value).label}</h2>" in page
        assert str(spec.description) in page
