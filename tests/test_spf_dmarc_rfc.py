"""SPF (RFC 7208) and DMARC (RFC 7489) to the letter, against the lab domains of
``tests/zones/spf_dmarc_rfc.zone`` served by the real DNS test server on loopback.

``sender_spf`` must say what a receiver's ``check_host()`` says when the relay sends:
the record is evaluated for the relay's own addresses, term by term and with the
limits, so a record that breaks *before* it reaches the relay's include fails. The
last test cross-checks those results with pyspf, an independent implementation, run
against the same server (never any other).
"""

from __future__ import annotations

from pathlib import Path

import dns.nameserver
import dns.resolver
import pytest
import spf

from requests_app.checks import CheckConfig
from requests_app.checks import CheckResult
from requests_app.checks import CheckSpec
from requests_app.checks import run_checks_sync
from tests.support.dnsserver import DnsTestServer

# pyspf 2.0.14 calls dnspython's deprecated dns.resolver.query()
pytestmark = pytest.mark.filterwarnings(
    "ignore:please use dns.resolver.resolve:DeprecationWarning")

ZONE = Path(__file__).parent / "zones" / "spf_dmarc_rfc.zone"
RELAY_INCLUDE = "_spf.relay.rfc.test"
RELAY_ADDRESSES = ("193.0.20.10", "2001:67c:99::10")
# what the include-only configuration evaluates with: the first address of each network
SAMPLED = ["193.0.20.0", "2001:67c:99::"]


@pytest.fixture(scope="module")
def server():
    with DnsTestServer(ZONE.read_text(), servfail={"broken.rfc.test"}) as srv:
        yield srv


def sender_check(server: DnsTestServer, check_id: str, domain: str,
                 **config: object) -> CheckResult:
    values: dict[str, object] = {"spf_include": RELAY_INCLUDE, "lifetime": 2.0}
    values.update(config)
    report = run_checks_sync(CheckSpec(None, (), (domain,)), CheckConfig(**values),
                             [server.nameserver])
    [result] = [c for c in report.checks if c.id == check_id]
    return result


def spf_of(server: DnsTestServer, domain: str, **config: object) -> CheckResult:
    return sender_check(server, "sender_spf", domain, **config)


def dmarc_of(server: DnsTestServer, domain: str) -> CheckResult:
    return sender_check(server, "sender_dmarc", domain)


# --- SPF: a record that breaks before the relay's include fails ---------------------------


def test_spf_third_void_lookup_before_the_include_is_a_permerror(server):
    # when: a:nx1, a:nx2, a:nx3 all answer NXDOMAIN before include: is reached
    result = spf_of(server, "void-before-include.rfc.test")
    # then
    assert result.status == "fail"
    assert result.evidence["result"] == "permerror"
    assert "more than 2 void look-ups (RFC 7208 4.6.4)" in result.detail
    assert "nx3.rfc.test" in result.detail
    assert result.evidence["void_lookups"] == 3
    assert result.evidence["include_found"] is False


def test_spf_two_void_lookups_are_within_the_limit(server):
    # when
    result = spf_of(server, "void-at-limit.rfc.test")
    # then
    assert result.status == "pass", result.detail
    assert result.evidence["void_lookups"] == 2
    assert result.evidence["include_found"] is True


def test_spf_mx_with_eleven_records_before_the_include_is_a_permerror(server):
    # when
    result = spf_of(server, "mx-over-ten.rfc.test")
    # then
    assert result.status == "fail"
    assert result.evidence["result"] == "permerror"
    assert "11 MX records, more than 10 (RFC 7208 4.6.4)" in result.detail


def test_spf_mx_with_ten_records_is_evaluated_and_passes_through_the_include(server):
    # when
    result = spf_of(server, "mx-ten.rfc.test")
    # then: 1 (mx) + 1 (include) DNS-querying terms; no MX host is the relay
    assert result.status == "pass", result.detail
    assert result.evidence["lookups"] == 2


@pytest.mark.parametrize(("domain", "macro"), [
    ("macro-c.rfc.test", "%{c}"),
    ("macro-r.rfc.test", "%{r}"),
])
def test_spf_exp_only_macro_before_the_include_is_a_permerror(server, domain, macro):
    # when
    result = spf_of(server, domain)
    # then
    assert result.status == "fail"
    assert result.evidence["result"] == "permerror"
    assert f"the macro {macro} is allowed only in explanation text (RFC 7208 7.2)" \
        in result.detail


def test_spf_exp_only_macro_is_a_syntax_error_even_after_the_include(server):
    # given: the include would match first; a syntax error anywhere voids the record
    # when
    result = spf_of(server, "macro-t-after.rfc.test")
    # then
    assert result.status == "fail"
    assert "%{t} is allowed only in explanation text (RFC 7208 7.2)" in result.detail


def test_spf_exp_only_macro_in_the_exp_domain_is_a_permerror(server):
    # when: exp=%{r}.rfc.test names a domain; only the explanation *text* may use %{r}
    result = spf_of(server, "macro-r-exp.rfc.test")
    # then
    assert result.status == "fail"
    assert "%{r} is allowed only in explanation text" in result.detail


def test_spf_percent_that_starts_no_macro_is_a_permerror(server):
    # when
    result = spf_of(server, "bad-percent.rfc.test")
    # then
    assert result.status == "fail"
    assert "a '%' that starts no macro (RFC 7208 7.1)" in result.detail


def test_spf_domain_ending_in_a_numeric_label_is_a_permerror(server):
    # when: a:203.0.113.5 is not a domain-spec (its top label is all digits)
    result = spf_of(server, "numeric-domain.rfc.test")
    # then
    assert result.status == "fail"
    assert "top-level label that is not all digits" in result.detail
    assert "(RFC 7208 7.1)" in result.detail


def test_spf_term_before_the_include_that_excludes_the_relay_decides(server):
    # when: -ip4:193.0.20.0/24 comes first; the include is never reached for IPv4
    result = spf_of(server, "relay-excluded-first.rfc.test")
    # then
    assert result.status == "fail"
    assert result.evidence["relay_results"] == {"193.0.20.0": "fail",
                                                "2001:67c:99::": "pass"}
    assert "does not authorise the relay (needs include:_spf.relay.rfc.test)" \
        in result.detail


def test_spf_is_evaluated_for_every_configured_relay_address(server):
    # when
    result = spf_of(server, "relay-excluded-first.rfc.test", spf_include=None,
                    relay_addresses=RELAY_ADDRESSES)
    # then
    assert result.status == "fail"
    assert result.evidence["evaluated_for"] == list(RELAY_ADDRESSES)
    assert result.evidence["addresses_from"] == "RELAY_ADDRESSES"
    assert result.evidence["relay_results"] == {"193.0.20.10": "fail",
                                                "2001:67c:99::10": "pass"}


def test_spf_include_only_evaluates_with_the_first_address_of_each_included_network(server):
    # when
    result = spf_of(server, "upper-version.rfc.test")
    # then
    assert result.evidence["evaluated_for"] == SAMPLED
    assert result.evidence["addresses_from"] == "include:_spf.relay.rfc.test"


# --- SPF: where the RFC is less strict than some checkers ---------------------------------


def test_spf_upper_case_version_is_a_record(server):
    # when: RFC 7208 4.5 and 12: "v=spf1" is an ABNF string, matched without case
    result = spf_of(server, "upper-version.rfc.test")
    # then
    assert result.status == "pass", result.detail
    assert result.evidence["record"] == "V=SPF1 include:_spf.relay.rfc.test -all"


def test_spf_include_that_servfails_is_a_temperror_not_a_fail(server):
    # when
    result = spf_of(server, "servfail-include.rfc.test")
    # then: RFC 7208 5.2: the included check_host() returned temperror
    assert result.status == "error"
    assert result.evidence["result"] == "temperror"
    assert "SPF temperror" in result.detail
    assert "broken.rfc.test" in result.detail


def test_spf_valid_macros_are_expanded_for_the_relay_address(server):
    # when: exists:%{ir}.%{v}.%{l1r-}.allow.rfc.test is asked (NXDOMAIN), then the include
    result = spf_of(server, "macros-allowed.rfc.test")
    # then
    assert result.status == "pass", result.detail
    assert result.evidence["lookups"] == 2
    assert result.evidence["void_lookups"] == 1


def test_spf_own_terms_pass_for_the_relay_addresses_when_they_are_configured(server):
    # when
    result = spf_of(server, "own-terms.rfc.test", spf_include=None,
                    relay_addresses=RELAY_ADDRESSES)
    # then
    assert result.status == "pass", result.detail
    assert result.evidence["relay_results"] == {a: "pass" for a in RELAY_ADDRESSES}


def test_spf_own_terms_without_the_include_fail_when_only_the_include_is_configured(server):
    # when: receivers pass the sampled addresses, but the relay's others are only listed
    # in its include
    result = spf_of(server, "own-terms.rfc.test")
    # then
    assert result.status == "fail"
    assert result.evidence["relay_results"] == {a: "pass" for a in SAMPLED}
    assert result.evidence["include_found"] is False
    assert "not include:_spf.relay.rfc.test" in result.detail


# --- DMARC ----------------------------------------------------------------------------


def test_dmarc_lower_case_version_value_is_not_a_record(server):
    # when
    result = dmarc_of(server, "lowercase-version.rfc.test")
    # then
    assert result.status == "fail"
    assert "the version must be exactly DMARC1 (RFC 7489 6.3)" in result.detail
    assert result.evidence["discarded"] == ["v=dmarc1; p=reject"]


def test_dmarc_lower_case_record_is_skipped_for_the_organisational_domains(server):
    # when
    result = dmarc_of(server, "lowercase.fallback-org.test")
    # then: the subdomain's "v=dmarc1" record is discarded; the org's sp= applies
    assert result.status == "pass", result.detail
    assert result.evidence["found_at"] == "_dmarc.fallback-org.test"
    assert result.evidence["policy"] == "quarantine"
    assert result.evidence["discarded"] == ["v=dmarc1; p=none"]


def test_dmarc_upper_case_tag_name_is_valid(server):
    # when: the tag *name* is case-insensitive; only its value must be exactly DMARC1
    result = dmarc_of(server, "uppercase-tag.rfc.test")
    # then
    assert result.status == "pass", result.detail
    assert result.evidence["policy"] == "reject"


def test_dmarc_invalid_sp_on_the_domains_own_record_without_rua_means_no_dmarc(server):
    # when
    result = dmarc_of(server, "bad-sp.rfc.test")
    # then
    assert result.status == "fail"
    assert "sp='bogus' is not a valid policy" in result.detail
    assert "RFC 7489 6.6.3 step 6" in result.detail
    assert result.evidence["invalid_tags"] == {"sp": "bogus"}
    assert "policy" not in result.evidence


def test_dmarc_invalid_sp_with_a_valid_rua_falls_back_to_p_none(server):
    # when
    result = dmarc_of(server, "bad-sp-rua.rfc.test")
    # then
    assert result.status == "warn"
    assert result.evidence["policy"] == "none"
    assert result.evidence["invalid_tags"] == {"sp": "bogus"}
    assert result.evidence["rua_valid"] == ["mailto:dmarc@rfc.test"]
    assert "receivers act as if p=none" in result.detail


@pytest.mark.parametrize("domain", ["bad-p-rua-no-uri.rfc.test", "bad-p-empty-mailto.rfc.test"])
def test_dmarc_invalid_p_with_rua_that_is_no_valid_uri_means_no_dmarc(server, domain):
    # when
    result = dmarc_of(server, domain)
    # then: a rua tag alone is not enough (RFC 7489 6.6.3 step 6.1)
    assert result.status == "fail"
    assert "p='bogus' is not a valid policy and rua= holds no valid URI" in result.detail
    assert result.evidence["rua_valid"] == []


def test_dmarc_invalid_p_with_a_valid_rua_uri_and_size_falls_back_to_p_none(server):
    # when
    result = dmarc_of(server, "bad-p-rua.rfc.test")
    # then
    assert result.status == "warn"
    assert result.evidence["rua_valid"] == ["mailto:dmarc@rfc.test!10m"]
    assert "p='bogus'" in result.detail


def test_dmarc_missing_p_with_a_valid_rua_falls_back_to_p_none(server):
    # when
    result = dmarc_of(server, "no-p-rua.rfc.test")
    # then
    assert result.status == "warn"
    assert "a missing p=" in result.detail
    assert result.evidence["invalid_tags"] == {"p": None}


def test_dmarc_pct_below_100_is_stated(server):
    # when
    result = dmarc_of(server, "pct-25.rfc.test")
    # then
    assert result.status == "pass", result.detail
    assert result.evidence["pct"] == 25
    assert "p=reject applies to 25% of failing mail (pct=25); the rest gets quarantine" \
        in result.detail


def test_dmarc_quarantine_for_zero_percent_quarantines_nothing(server):
    # when
    result = dmarc_of(server, "pct-0-quarantine.rfc.test")
    # then: RFC 7489 6.6.4: the rest gets the next policy down, none
    assert result.status == "warn"
    assert result.evidence["pct"] == 0
    assert "quarantines no mail" in result.detail


def test_dmarc_invalid_pct_is_named(server):
    # when
    result = dmarc_of(server, "pct-invalid.rfc.test")
    # then
    assert result.status == "warn"
    assert result.evidence["invalid_tags"] == {"pct": "150"}
    assert "pct='150' is not an integer from 0 to 100 (RFC 7489 6.3)" in result.detail


def test_dmarc_other_txt_beside_the_record_is_ignored(server):
    # when
    result = dmarc_of(server, "beside-other-txt.rfc.test")
    # then
    assert result.status == "pass", result.detail
    assert result.evidence["record"] == "v=DMARC1; p=reject"


# --- cross-check with pyspf -----------------------------------------------------------

# Cases where RFC 7208 and pyspf 2.0.14 agree (pyspf counts the address look-ups of MX
# hosts as void look-ups, and counts redirect= before it is used, so those are left out).
CROSS_CHECKED = [
    "void-before-include.rfc.test", "void-at-limit.rfc.test", "mx-over-ten.rfc.test",
    "mx-ten.rfc.test", "macro-c.rfc.test", "macro-r.rfc.test", "macro-t-after.rfc.test",
    "macro-r-exp.rfc.test", "bad-percent.rfc.test", "numeric-domain.rfc.test",
    "relay-excluded-first.rfc.test", "upper-version.rfc.test", "servfail-include.rfc.test",
    "macros-allowed.rfc.test", "own-terms.rfc.test",
]


@pytest.fixture
def pyspf_on_loopback(server, monkeypatch):
    """pyspf resolves through dnspython's default resolver: point it at the test server."""
    host, port = server.nameserver.rsplit(":", 1)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, int(port))]
    resolver.lifetime = 2.0
    monkeypatch.setattr(dns.resolver, "default_resolver", resolver)


@pytest.mark.parametrize("domain", CROSS_CHECKED)
@pytest.mark.parametrize("relay_addresses", [(), RELAY_ADDRESSES], ids=["include", "addresses"])
def test_spf_results_agree_with_pyspf(server, pyspf_on_loopback, domain, relay_addresses):
    # given
    ours = spf_of(server, domain, relay_addresses=relay_addresses)
    # when: pyspf evaluates the same record for each address the check evaluated
    theirs = {address: spf.query(i=address, s=f"postmaster@{domain}", h=domain,
                                 timeout=2).check()[0]
              for address in ours.evidence["evaluated_for"]}
    # then
    assert {a: r.split(":")[0] for a, r in ours.evidence["relay_results"].items()} == theirs
