"""One rule set from intake to map: what the forms, the API and the admin accept is
exactly what the Postfix renderer writes (``requests_app/rules.py``).

The properties generate values from hostile alphabets (quotes, ``#``, ``%``, ``|``, ``$``,
whitespace, NUL, non-ASCII, IPv6 spellings, mapped, multicast ...) and compare the
intake validators with the renderer, for each kind of value and for every combination of
lab networks and ``allow_private``. "The value as stored" is the intake's normal form of an
accepted value, or the value itself when the intake refuses it: for it, accepted at intake
⇔ rendered. The examples go through the API, the form and the admin, and show that a
malformed row already in the database no longer stops the checks.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from hypothesis import example
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from requests_app.artifacts_io import write_artifacts_atomically
from requests_app.checking import check_config
from requests_app.drift import recheck_active_entries
from requests_app.forms import ServerRequestForm
from requests_app.models import ApprovedSenderDomain
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.models import Team
from requests_app.postfix import ACCESS_MAP_NAME
from requests_app.postfix import LOGIN_MAP_NAME
from requests_app.postfix import AccountEntry
from requests_app.postfix import RelaySettings
from requests_app.postfix import ServerEntry
from requests_app.postfix import normalise_host_address
from requests_app.postfix import render_client_access
from requests_app.postfix import render_sender_login_maps
from requests_app.relay import relay_settings
from requests_app.rules import address_policy
from requests_app.validators import validate_account_name
from requests_app.validators import validate_fqdn
from requests_app.validators import validate_ip_list
from requests_app.validators import validate_sender_addresses
from requests_app.validators import validate_sender_domains
from tests.factories import PASSWORD
from tests.factories import RelayRequestFactory
from tests.support.postfix import minimal_config_dir
from tests.support.postfix import require_tool

# --- the two sides ------------------------------------------------------------------------


def _intake(fn, *args, **kwargs):
    """What the intake stores for a value, or None when it refuses it (a field error)."""
    try:
        return fn(*args, **kwargs)
    except ValidationError:
        return None


def intake_sender(value: str) -> str | None:
    stored = _intake(validate_sender_addresses, [value])
    return None if stored is None else stored[0]


def intake_domain(value: str) -> str | None:
    stored = _intake(validate_sender_domains, [value])
    return None if stored is None else stored[0]


def intake_fqdn(value: str) -> str | None:
    return _intake(validate_fqdn, value)


def intake_account(value: str) -> str | None:
    return _intake(validate_account_name, value)


def intake_team(value: str) -> str | None:
    # The admin's team form: the model field's own validation (slug rule, max length)
    return _intake(Team._meta.get_field("slug").clean, value, None)


def intake_address(value: str, policy) -> str | None:
    """The ipv4 or the ipv6 field, whichever accepts it (the other says "wrong version")."""
    for version in (4, 6):
        stored = _intake(validate_ip_list, [value], version=version, policy=policy)
        if stored is not None:
            return stored[0]
    return None


def _rendered_lines(render, *args) -> list[str] | None:
    """The effective lines of a single-entry render, or None when the renderer refuses.

    A refused entry either raises ``ValueError`` or is left out: both count as "not
    rendered".
    """
    try:
        text = render(*args)
    except ValueError:
        return None
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return lines or None


def render_sender(value: str) -> str | None:
    lines = _rendered_lines(render_sender_login_maps,
                            [AccountEntry(1, "svc-test", "ops", (value,))])
    if lines is None:
        return None
    [line] = lines
    key, owner = line.split("  ")
    assert owner == "svc-test"
    return key


def render_domain(value: str) -> str | None:
    key = render_sender("@" + value)
    return None if key is None else key[1:]


def render_fqdn(value: str) -> str | None:
    try:
        text = render_client_access([ServerEntry(1, value, "ops", ("81.2.69.10",))])
    except ValueError:
        return None
    first = text.splitlines()[0] if text else ""
    prefix = "# request 1 "
    assert not text or first.startswith(prefix) and first.endswith(" team ops")
    return first[len(prefix):-len(" team ops")] if text else None


def render_account(value: str) -> str | None:
    lines = _rendered_lines(render_sender_login_maps,
                            [AccountEntry(1, value, "ops", ("a@example.org",))])
    return None if lines is None else lines[0].split("  ")[1]


def render_team(value: str) -> str | None:
    try:
        text = render_client_access([ServerEntry(1, "host.example.org", value, ("81.2.69.10",))])
    except ValueError:
        return None
    return text.splitlines()[0].rpartition(" team ")[2] if text else None


def render_address(value: str, relay: RelaySettings) -> str | None:
    lines = _rendered_lines(render_client_access,
                            [ServerEntry(1, "host.example.org", "ops", (value,))], relay)
    if lines is None:
        return None
    [line] = lines
    network, ok = line.split(" ")
    assert ok == "OK"
    return network.rpartition("/")[0]


def assert_one_rule(value: str, intake, render) -> None:
    """Accepted at intake ⇔ rendered, for the value as stored; and the same normal form."""
    stored = intake(value)
    as_stored = value if stored is None else stored
    assert (intake(as_stored) is not None) == (render(as_stored) is not None), as_stored
    if stored is not None:
        assert render(stored) == stored, (value, stored)  # rendered exactly as stored
        assert intake(stored) == stored  # the normal form is a fixed point
    rendered = render(value)
    if rendered is not None:
        assert stored == rendered, (value, rendered)  # nothing the renderer takes is refused


# --- strategies ---------------------------------------------------------------------------

HOSTILE = list("'\"#%|$!&*/?^`{}~()<>[]\\,;: \t\n\r\x00\x0b") + [
    "\u00a0", "\u200b", "\u202e", "ä", "ß", "İ", "\u212a", "٣", "@", ".", "-", "_", "+", "="]
HOSTILE_TEXT = st.text(st.sampled_from([*"abcXYZ019", *HOSTILE]), max_size=16)

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
top_label = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
plain_names = st.builds(lambda ls, top: ".".join([*ls, top]),
                        st.lists(label, min_size=1, max_size=3), top_label)
domains = st.one_of(
    plain_names,
    plain_names.map(str.upper),
    plain_names.map(lambda n: n + "."),
    st.sampled_from([
        "bücher.example", "straße.de", "ÄBC.example", "xn--bcher-kva.example",
        "XN--BCHER-KVA.example", "xn--broken-.org", "xn--zz.org", "1.2.3.4", "a.123",
        "exa mple.org", "ex#ample.org", "a..b.org", ".a.org", "-a.org", "a-.org", "a_b.org",
        "localhost", "*.example.org", "a" * 63 + ".org", "a" * 64 + ".org",
        ("a" * 62 + ".") * 4 + "org", "example.org\n", " example.org", "example.org\x00",
        "ab--cd.org", "@example.org", "e\u0301xample.org", "exa\u200bmple.org",
    ]),
    st.builds(lambda a, b: a + b, plain_names, HOSTILE_TEXT),
    st.builds(lambda a, b: a + b, HOSTILE_TEXT, plain_names),
    HOSTILE_TEXT,
)
local_parts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9._+=-]{0,20}[a-z0-9])?", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9._+=-]{1,12}", fullmatch=True),
    st.sampled_from(["o'brien", "a#b", "a%b", "a|b", "$x", '"quoted"', '"a b"', "a!b",
                     "a..b", ".a", "a.", "a" * 64, "a" * 65, "user+tag", "x=y", "ünicode",
                     "\u212aelvin", "a\x00b", "a b", "a\tb", "a,b", "a;b", "~x", "x/y"]),
    HOSTILE_TEXT,
)
senders = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains),
    domains.map(lambda d: "@" + d),
    st.builds(lambda local, domain: f"{local}@@{domain}", local_parts, domains),
    HOSTILE_TEXT,
)
accounts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9._-]{1,62}[a-z0-9]", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9._@+-]{1,70}", fullmatch=True),
    st.sampled_from(["svc", "Svc-Orders", " svc-x ", "svc x", "svc,other", "#svc", "svc@x",
                     "9svc", "svc-", "s\u212avc"]),
    HOSTILE_TEXT,
)
teams = st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,60}", fullmatch=True), HOSTILE_TEXT)

# Addresses: the special ranges, every spelling, and hostile text around them.
SPECIAL_ADDRESSES = [
    "0.0.0.0", "224.0.0.1", "::", "::ffff:158.37.10.10", "ff02::1", "127.0.0.1",
    "10.0.0.1", "255.255.255.255", "169.254.1.1", "fe80::1", "100.64.0.1", "192.0.2.10",
    "2001:db8::1", "2002:c100:a01::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "64:ff9b::c100:a01", "::193.0.10.1", "fd12:3456::1", "fd00:1::5", "10.20.1.1",
    "127.0.0.5", "172.16.5.4", "192.168.1.1", "81.2.69.10", "2a02:898:0:20::10",
    "240.0.0.1", "198.18.0.1", "3fff::1", "::1", "100::1", "fec0::1", "192.0.0.9",
]
SPECIAL_NETWORKS = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "224.0.0.0/4", "240.0.0.0/4", "::ffff:0:0/96", "::/96", "64:ff9b::/96", "2001::/23",
    "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8", "fd00:1::/64",
]


def _spellings(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> st.SearchStrategy[str]:
    forms = [str(ip)]
    if ip.version == 6:
        groups = ip.exploded.split(":")
        forms += [ip.exploded, ip.exploded.upper(),
                  ":".join(groups[:6]) + ":" + str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))]
    else:
        forms += [".".join(f"0{octet}" for octet in str(ip).split("."))]  # leading zeros
    return st.sampled_from(forms)


addresses = st.one_of(
    st.sampled_from(SPECIAL_ADDRESSES),
    st.ip_addresses().flatmap(_spellings),
    st.sampled_from(SPECIAL_NETWORKS).flatmap(
        lambda net: st.ip_addresses(network=net)).flatmap(_spellings),
    st.builds(lambda a, b: a + b, st.sampled_from(SPECIAL_ADDRESSES), HOSTILE_TEXT),
    st.builds(lambda a, b: a + b, HOSTILE_TEXT, st.sampled_from(SPECIAL_ADDRESSES)),
    st.text(st.sampled_from([*"0123456789abcdefABCDEF:./%", " ", "\t", "\x00", "#", "٣"]),
            max_size=45),
)
LAB = ("10.20.0.0/16", "127.0.0.0/8", "fd00:1::/64", "192.0.2.0/24")
policy_settings = st.tuples(st.sampled_from([(), LAB]), st.booleans())


# --- properties: accepted at intake ⇔ rendered --------------------------------------------


@hsettings(max_examples=400, deadline=None)
@given(senders)
@example("o'brien@x.org")
@example("a#b@x.org")
@example("a%b@x.org")
@example("a|b@x.org")
@example("$x@x.org")
@example('"quoted"@x.org')
@example("a@1.2.3.4")
@example("a@xn--zz.org")
@example("@@x.org")
def test_sender_addresses_accepted_at_intake_are_exactly_those_rendered(value):
    assert_one_rule(value, intake_sender, render_sender)


@hsettings(max_examples=300, deadline=None)
@given(domains)
@example("1.2.3.4")
@example("xn--zz.org")
@example("exa mple.org")
def test_sender_domains_accepted_at_intake_are_exactly_those_rendered(value):
    assert_one_rule(value, intake_domain, render_domain)


@hsettings(max_examples=300, deadline=None)
@given(domains)
@example("1.2.3.4")
@example("xn--zz.org")
def test_fqdns_accepted_at_intake_are_exactly_those_rendered(value):
    assert_one_rule(value, intake_fqdn, render_fqdn)


@hsettings(max_examples=200, deadline=None)
@given(accounts)
@example("Svc@x")
def test_account_names_accepted_at_intake_are_exactly_those_rendered(value):
    assert_one_rule(value, intake_account, render_account)


@hsettings(max_examples=200, deadline=None)
@given(teams)
def test_team_slugs_accepted_by_the_admin_are_exactly_those_rendered(value):
    assert_one_rule(value, intake_team, render_team)


@hsettings(max_examples=600, deadline=None)
@given(addresses, policy_settings)
@example("0.0.0.0", ((), False))
@example("::ffff:158.37.10.10", ((), False))
@example("10.0.0.1", ((), False))
@example("10.0.0.1", ((), True))
@example("127.0.0.2", (LAB, False))
def test_addresses_accepted_at_intake_are_exactly_those_rendered(value, policy_setting):
    # given the same settings on both sides (lab networks on/off, private on/off)
    lab, allow_private = policy_setting
    relay = RelaySettings("relay.example.org", lab_networks=lab, allow_private=allow_private)
    policy = address_policy(lab, allow_private)
    # then
    assert_one_rule(value, lambda v: intake_address(v, policy),
                    lambda v: render_address(v, relay))


@hsettings(max_examples=300, deadline=None)
@given(st.sampled_from(SPECIAL_NETWORKS).flatmap(lambda net: st.ip_addresses(network=net)),
       policy_settings)
def test_the_renderer_and_the_checks_judge_every_address_alike(ip, policy_setting):
    # given an address from a special range and the check engine with the same settings
    lab, allow_private = policy_setting
    config = check_config_for(lab, allow_private)
    relay = RelaySettings("relay.example.org", lab_networks=lab, allow_private=allow_private)
    # when
    from requests_app.checks.policy import check_address

    result = check_address(str(ip), config)
    # then the check passes exactly when the renderer writes the address
    assert (result.status == "pass") == (render_address(str(ip), relay) is not None), result


@pytest.mark.parametrize("lab", [(), LAB])
def test_the_renderers_shortcuts_agree_with_the_policy_at_every_range_edge(lab):
    # given the policy's screened ranges (special-purpose and lab), and the renderer's
    # coarse per-block table in front of them
    policy = address_policy(lab, False)
    for version, (firsts, lasts) in policy.screen.items():
        kind = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        limit = 2 ** (32 if version == 4 else 128) - 1
        edges = {*firsts, *lasts, *(f - 1 for f in firsts if f > 0),
                 *(last + 1 for last in lasts if last < limit)}
        for value in sorted(edges):
            ip = kind(value)
            # when the renderer takes the address
            try:
                normalise_host_address(str(ip), policy)
                rendered = True
            except ValueError:
                rendered = False
            # then it decides as the policy's full rules do
            assert rendered == policy.rule(ip).allowed, ip


def check_config_for(lab, allow_private):
    from requests_app.checks import CheckConfig

    return CheckConfig(lab_networks=lab, allow_private=allow_private)


# --- examples: the values the probe found ---------------------------------------------------

ACCOUNT = {
    "kind": "account", "team": "payments", "account_name": "svc-orders",
    "use_case": "Order mails from the shop", "tls_mode": "smtps",
    "contact_email": "ops@example.org", "sender_addresses": ["noreply@example.org"],
    "expected_daily_volume": 50,
}
SERVER = {
    "kind": "server", "team": "payments", "fqdn": "app.example.org",
    "ipv4": ["81.2.69.10"], "ipv6": ["2a02:898:0:20::10"], "purpose": "Order confirmations",
    "contact_email": "ops@example.org", "sender_domains": ["example.org"],
    "expected_daily_volume": 500,
}
BAD_SENDERS = ["o'brien@example.org", "a#b@example.org", "a%b@example.org", "a|b@example.org",
               "$x@example.org", '"quoted"@example.org', '"a b"@example.org', "a!b@example.org",
               "user@@example.org", "a..b@example.org", "a@exa mple.org", "ünicode@example.org"]
POLICY_REFUSED = [
    ("ipv4", "0.0.0.0", "unspecified"), ("ipv4", "224.0.0.1", "multicast"),
    ("ipv6", "::", "unspecified"), ("ipv6", "::ffff:158.37.10.10", "IPv4-mapped"),
    ("ipv6", "ff02::1", "multicast"), ("ipv4", "127.0.0.1", "loopback"),
    ("ipv4", "10.0.0.1", "private"), ("ipv4", "255.255.255.255", "reserved"),
    ("ipv6", "fe80::1", "link-local"), ("ipv4", "100.64.0.1", "shared"),
    ("ipv6", "2001:db8::10", "documentation"), ("ipv6", "2002:c100:a01::1", "6to4"),
    ("ipv6", "fd12:3456::1", "unique local"),
]


@pytest.fixture
def api(client, requester):
    client.force_login(requester)

    def post(data):
        return client.post("/api/requests/", data, content_type="application/json")

    return post


@pytest.mark.django_db
@pytest.mark.parametrize("sender", BAD_SENDERS)
def test_api_refuses_a_sender_the_renderer_refuses(api, sender):
    # when
    response = api({**ACCOUNT, "sender_addresses": [sender]})
    # then a 400 naming the field and the rule, nothing saved, and the renderer agrees
    assert response.status_code == 400, response.content
    errors = response.json()
    assert set(errors) == {"sender_addresses"}, errors
    assert "not a valid sender" in errors["sender_addresses"][0]
    assert not RelayRequest.objects.exists()
    assert render_sender(sender) is None


@pytest.mark.django_db
def test_api_accepts_the_full_sender_alphabet_and_stores_what_is_rendered(api):
    # given a local part with every allowed character, and an IDN domain
    sender = "No.Reply_1+tag=x-y@Bücher.Example."
    # when
    response = api({**ACCOUNT, "sender_addresses": [sender]})
    # then
    assert response.status_code == 201, response.content
    [stored] = response.json()["sender_addresses"]
    assert stored == "no.reply_1+tag=x-y@xn--bcher-kva.example"
    assert render_sender(stored) == stored


@pytest.mark.django_db
@pytest.mark.parametrize(("field", "address", "why"), POLICY_REFUSED)
def test_api_refuses_a_policy_refused_address_at_once(api, field, address, why):
    # when
    response = api({**SERVER, field: [address]})
    # then
    assert response.status_code == 400, response.content
    errors = response.json()
    assert set(errors) == {field}, errors
    message = errors[field][0]
    assert message.startswith("Address policy: ") and why in message, message
    assert not RelayRequest.objects.exists()
    assert render_address(address, relay_settings()) is None


@pytest.mark.django_db
def test_every_refused_address_of_a_list_is_named(api):
    response = api({**SERVER, "ipv4": ["81.2.69.10", "0.0.0.0", "224.0.0.1"]})
    assert response.status_code == 400
    messages = response.json()["ipv4"]
    assert len(messages) == 2
    assert "0.0.0.0" in messages[0] and "224.0.0.1" in messages[1]


@pytest.mark.django_db
def test_private_addresses_need_allow_private_and_loopback_stays_refused(api, settings):
    # given RELAY_ALLOW_PRIVATE off: refused
    assert api({**SERVER, "ipv4": ["10.0.0.1"]}).status_code == 400
    # when it is on
    settings.RELAY_ALLOW_PRIVATE = True
    accepted = api({**SERVER, "ipv4": ["10.0.0.1"], "ipv6": ["fd12:3456::1"]})
    loopback = api({**SERVER, "ipv4": ["127.0.0.1"]})
    # then private ones are accepted and rendered, loopback is still refused
    assert accepted.status_code == 201, accepted.content
    assert render_address("10.0.0.1", relay_settings()) == "10.0.0.1"
    assert loopback.status_code == 400
    assert "loopback" in loopback.json()["ipv4"][0]


@pytest.mark.django_db
def test_lab_networks_are_accepted_at_intake_and_rendered(api, settings):
    # given
    settings.RELAY_LAB_NETWORKS = ["127.0.0.0/8"]
    # when
    response = api({**SERVER, "ipv4": ["127.0.0.2"]})
    # then
    assert response.status_code == 201, response.content
    assert render_address("127.0.0.2", relay_settings()) == "127.0.0.2"
    assert api({**SERVER, "ipv4": ["127.0.0.2"], "ipv6": ["::1"]}).status_code == 400


@pytest.mark.django_db
def test_the_server_form_names_each_refused_address(requester):
    # given the web form with two refused addresses in one field
    form = ServerRequestForm(data={**SERVER, "ipv4": "0.0.0.0\n224.0.0.1", "ipv6": "",
                                   "sender_domains": "example.org", "team": "payments"},
                             user=requester)
    # then
    assert not form.is_valid()
    assert [m.split(" is ")[0] for m in form.errors["ipv4"]] == [
        "Address policy: 0.0.0.0", "Address policy: 224.0.0.1"]


def test_relay_settings_carry_the_address_policy(settings):
    # given lab networks and private addresses allowed
    settings.RELAY_LAB_NETWORKS = ["127.0.0.0/8"]
    settings.RELAY_ALLOW_PRIVATE = True
    entries = [ServerEntry(1, "lab.example.org", "ops", ("127.0.0.2", "10.0.0.1"))]
    # then both render
    assert render_client_access(entries, relay_settings(include_db=False)).count(" OK\n") == 2
    # when both are off again, the renderer refuses the entry, naming the rule
    settings.RELAY_LAB_NETWORKS = []
    settings.RELAY_ALLOW_PRIVATE = False
    with pytest.raises(ValueError, match="address policy: 127.0.0.2 is a loopback"):
        render_client_access(entries, relay_settings(include_db=False))


@pytest.mark.parametrize("bad", [("10.0.0.1/8",), ("not-a-network",)])
def test_malformed_lab_networks_are_a_settings_error(bad):
    relay = RelaySettings("relay.example.org", lab_networks=bad)
    with pytest.raises(ValueError, match="relay settings: invalid lab_networks"):
        render_client_access([], relay)


# --- the admin's approved sender domains ----------------------------------------------------


# What the browser sends besides the domain: the creation time the add form fills in.
ADMIN_FORM = {"note": "", "created_at_0": "2026-01-02", "created_at_1": "03:04:05"}


@pytest.fixture
def admin_client(client):
    root = get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    client.force_login(root)
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("domain", ["exa mple.org", "ex#ample.org", "localhost", "a..b.org",
                                    "*.example.org", "example.org\nevil.org"])
def test_admin_refuses_a_malformed_approved_sender_domain(admin_client, domain):
    # when
    response = admin_client.post("/admin/requests_app/approvedsenderdomain/add/",
                                 {**ADMIN_FORM, "domain": domain})
    # then the form comes back with an error on the domain field, and nothing is saved
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["domain"], errors
    assert "not a valid domain" in errors["domain"][0]
    assert not ApprovedSenderDomain.objects.exists()


@pytest.mark.django_db
def test_admin_stores_an_approved_domain_in_normal_form(admin_client):
    response = admin_client.post("/admin/requests_app/approvedsenderdomain/add/",
                                 {**ADMIN_FORM, "domain": " Bücher.Example. "})
    assert response.status_code == 302
    assert list(ApprovedSenderDomain.objects.values_list("domain", flat=True)) == [
        "xn--bcher-kva.example"]


@pytest.mark.django_db
def test_saving_a_malformed_approved_domain_outside_the_admin_is_refused():
    with pytest.raises(ValidationError) as info:
        ApprovedSenderDomain(domain="exa mple.org").save()
    assert list(info.value.message_dict) == ["domain"]
    assert not ApprovedSenderDomain.objects.exists()


@pytest.fixture
def malformed_stored_domain(db):
    """A row from before the admin validated (bulk_create skips save(), as old data did)."""
    ApprovedSenderDomain.objects.bulk_create([
        ApprovedSenderDomain(domain="exa mple.org"), ApprovedSenderDomain(domain="example.net"),
    ])


def test_a_malformed_stored_domain_is_ignored_by_the_checks_with_a_log_line(
        malformed_stored_domain, caplog):
    # when
    with caplog.at_level(logging.WARNING, logger="requests_app.checking"):
        config = check_config()
    # then the good rows still count, the bad one is left out and said so
    assert "example.net" in config.approved_sender_domains
    assert not any(" " in d for d in config.approved_sender_domains)
    assert "approved sender domain row" in caplog.text and "exa mple.org" in caplog.text


def test_quick_check_and_check_task_survive_a_malformed_stored_domain(
        malformed_stored_domain, client, team, requester, django_capture_on_commit_callbacks):
    from requests_app import services

    client.force_login(requester)
    # when the quick check runs
    quick = client.post("/api/quick-check/", {"fqdn": "app.example.org",
                                              "ipv4": ["81.2.69.10"]},
                        content_type="application/json")
    # then it answers
    assert quick.status_code == 200, quick.content
    # when a request is submitted (the check task runs)
    req = RelayRequestFactory(team=team, created_by=requester)
    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=req.pk, action="submit", by=requester)
    req.refresh_from_db()
    # then the checks ran to a verdict
    assert (req.state, req.check_verdict) == (S.PENDING_APPROVAL, "pass")


def test_the_nightly_recheck_survives_a_malformed_stored_domain(
        malformed_stored_domain, team, requester):
    RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE)
    stats = recheck_active_entries()
    assert (stats.checked, stats.drifted) == (1, 0)


# --- real Postfix reads what the rules let through -----------------------------------------

EDGE_SENDERS = [
    "a@example.org", "no.reply_1+tag=x-y@example.org", "a" * 64 + "@example.org",
    "@" + "a" * 63 + ".example.org", "@" + ("b" * 62 + ".") * 3 + "c" * 60,
    "x@xn--bcher-kva.example", "=x@ab--cd.org", "-@a.b", "_@a.b", "+@a.b",
]
EDGE_ADDRESSES = ["81.2.69.10", "2a02:898:0:20::10", "2a02:898::1", "1.0.0.1",
                  "127.0.0.2", "10.20.0.1", "fd00:1::5", "192.0.2.200"]


def _postmap_query(table: str, keys: list[str], config_dir: Path) -> subprocess.CompletedProcess:
    """``postmap -q - TABLE``: one process answers every key read from stdin."""
    tool = require_tool("postmap")
    env = {"PATH": os.pathsep.join(("/usr/sbin", "/sbin", "/usr/bin", "/bin")), "LANG": "C"}
    return subprocess.run([tool, "-c", str(config_dir), "-q", "-", table], input="\n".join(keys),
                          capture_output=True, text=True, timeout=60, env=env, check=False)


@pytest.mark.postfix
def test_postfix_reads_every_edge_value_the_intake_accepts():
    # given edge values, each accepted at intake, rendered through build's atomic write
    stored_senders = [intake_sender(s) for s in EDGE_SENDERS]
    policy = address_policy(LAB, False)
    stored_addresses = [intake_address(a, policy) for a in EDGE_ADDRESSES]
    assert None not in stored_senders and None not in stored_addresses
    relay = RelaySettings("relay.example.org", lab_networks=LAB)
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "relay"
        files = {
            LOGIN_MAP_NAME: render_sender_login_maps(
                [AccountEntry(1, "svc-edge", "ops", tuple(stored_senders))]).encode(),
            ACCESS_MAP_NAME: render_client_access(
                [ServerEntry(2, "edge.example.org", "ops", tuple(stored_addresses))],
                relay).encode(),
        }
        write_artifacts_atomically(out, files)
        conf = minimal_config_dir(Path(work) / "conf")
        # when Postfix looks every key up
        logins = _postmap_query(f"texthash:{out / LOGIN_MAP_NAME}", stored_senders, conf)
        clients = _postmap_query(f"cidr:{out / ACCESS_MAP_NAME}", stored_addresses, conf)
    # then it reads both tables without a warning and finds every key with its value
    assert (logins.returncode, logins.stderr) == (0, ""), logins.stderr
    assert sorted(logins.stdout.splitlines()) == sorted(f"{s}\tsvc-edge" for s in stored_senders)
    assert (clients.returncode, clients.stderr) == (0, ""), clients.stderr
    assert sorted(clients.stdout.splitlines()) == sorted(f"{a}\tOK" for a in stored_addresses)
