"""Field validators: examples for each rule, and properties checked with hypothesis."""

from __future__ import annotations

import ipaddress

import pytest
from django.core.exceptions import ValidationError
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from requests_app.rules import address_policy
from requests_app.validators import split_list
from requests_app.validators import validate_account_name
from requests_app.validators import validate_dkim_selector
from requests_app.validators import validate_fqdn
from requests_app.validators import validate_ip_list
from requests_app.validators import validate_request
from requests_app.validators import validate_sender_addresses
from requests_app.validators import validate_sender_domains


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("App.Example.ORG.", "app.example.org"),
        ("  mail.example.org ", "mail.example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        # labels separated by an ideographic full stop: two labels by the rules (IDNA
        # maps it to a dot), so the form accepts it too (no ASCII-dot count of its own)
        ("host\u3002example", "host.example"),
    ],
)
def test_fqdn_normalised(raw, expected):
    assert validate_fqdn(raw) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("*.example.org", "invalid_fqdn"),
        ("a..example.org", "invalid_fqdn"),
        (".example.org", "invalid_fqdn"),
        ("-bad.example.org", "invalid_fqdn"),
        ("under_score.example.org", "invalid_fqdn"),
        ("x" * 64 + ".example.org", "invalid_fqdn"),
        (("a" * 60 + ".") * 5 + "org", "invalid_fqdn"),
        ("localhost", "not_fully_qualified"),
        ("localhost.", "not_fully_qualified"),
        ("bücher", "not_fully_qualified"),
        ("", "invalid_fqdn"),
    ],
)
def test_fqdn_refused_with_code(raw, code):
    with pytest.raises(ValidationError) as info:
        validate_fqdn(raw)
    assert info.value.code == code


def test_ip_lists_normalise_and_dedupe():
    assert validate_ip_list(["2a02:0898:0000:0020::0010", "2a02:898:0:20::10"], version=6) == [
        "2a02:898:0:20::10"
    ]
    assert validate_ip_list(["81.2.69.10", "81.2.69.10", "81.2.69.9"], version=4) == [
        "81.2.69.10", "81.2.69.9"]


@pytest.mark.parametrize(
    ("raw", "version", "code"),
    [
        ("10.0.0.0/8", 4, "prefix_not_allowed"),
        ("2001:db8::/64", 6, "prefix_not_allowed"),
        ("1.2.3", 4, "invalid_ip"),
        ("81.2.69.10", 6, "wrong_ip_version"),
        ("::1", 4, "wrong_ip_version"),
        ("fe80::1%eth0", 6, "invalid_ip"),
    ],
)
def test_ip_refused_with_code(raw, version, code):
    with pytest.raises(ValidationError) as info:
        validate_ip_list([raw], version=version)
    assert info.value.code == code


def test_sender_addresses_accept_address_or_domain():
    assert validate_sender_addresses(["NoReply@Example.org", "@Example.NET"]) == [
        "noreply@example.org", "@example.net"]
    with pytest.raises(ValidationError):
        validate_sender_addresses(["no-at-sign"])
    with pytest.raises(ValidationError):
        validate_sender_addresses(["a b@example.org"])


def test_account_and_selector_rules():
    assert validate_account_name(" Svc-Orders ") == "svc-orders"
    for bad in ("x", "9starts-with-digit", "has space", "ends-", "a" * 65):
        with pytest.raises(ValidationError):
            validate_account_name(bad)
    assert validate_dkim_selector("S1") == "s1"
    with pytest.raises(ValidationError):
        validate_dkim_selector("two.labels")


def test_cross_field_rules_name_fields():
    errors = validate_request({"kind": "server", "expected_daily_volume": 0})
    assert set(errors) == {"fqdn", "ipv6", "purpose", "sender_domains", "expected_daily_volume"}
    errors = validate_request({"kind": "account", "account_name": "svc", "use_case": "x",
                               "tls_mode": "plain", "sender_domains": ["a.org"],
                               "expected_daily_volume": 1})
    assert set(errors) == {"tls_mode"}


# --- properties -------------------------------------------------------------------

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
top_label = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)  # a numeric TLD is refused
hostnames = st.tuples(st.lists(label, min_size=1, max_size=4), top_label).map(
    lambda parts: ".".join([*parts[0], parts[1]]))


@given(hostnames, st.booleans(), st.booleans())
def test_fqdn_normalisation_is_idempotent_and_case_insensitive(name, upper, dot):
    raw = (name.upper() if upper else name) + ("." if dot else "")
    once = validate_fqdn(raw)
    assert once == name
    assert validate_fqdn(once) == once


@given(st.text(max_size=300))
@hsettings(max_examples=300)
def test_fqdn_validator_only_ever_raises_validation_error(text):
    try:
        result = validate_fqdn(text)
    except ValidationError:
        return
    assert result == result.lower() and not result.endswith(".")
    assert all(0 < len(part) <= 63 for part in result.split("."))


# Normalisation alone: a policy whose lab networks hold every address (the address
# policy itself is tested in tests/test_intake_rules.py).
EVERY_ADDRESS = address_policy(("0.0.0.0/0", "::/0"))


@given(st.ip_addresses(v=6))
def test_ipv6_long_and_short_forms_are_one_address(address):
    long_form = address.exploded
    assert validate_ip_list([long_form], version=6, policy=EVERY_ADDRESS) == [str(address)]
    assert validate_ip_list([long_form.upper()], version=6, policy=EVERY_ADDRESS) == [
        str(address)]


@given(st.ip_addresses(v=4))
def test_ipv4_round_trip(address):
    assert validate_ip_list([str(address)], version=4, policy=EVERY_ADDRESS) == [str(address)]


@given(st.lists(st.text(max_size=40), max_size=8))
def test_list_validators_never_crash(items):
    for fn in (validate_sender_domains, validate_sender_addresses,
               lambda v: validate_ip_list(v, version=4)):
        try:
            fn(split_list(items))
        except ValidationError:
            pass


def test_split_list_accepts_lines_commas_and_lists():
    assert split_list("a.org, b.org\nc.org  d.org") == ["a.org", "b.org", "c.org", "d.org"]
    assert split_list(["a.org", " ", "b.org"]) == ["a.org", "b.org"]
    assert ipaddress.ip_address("81.2.69.10")
