"""The checks against a real authoritative DNS server on loopback (no resolver mocks).

Each scenario is a few records in one zone served by ``tests.support.dnsserver``; the
engine resolves them over UDP/TCP exactly as it would in production. Addresses named
in the zone are never contacted: only 127.0.0.1 sees packets.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import time

import dns.reversename
import pytest
from hypothesis import assume
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from requests_app.checks import DEADLINE_MARGIN
from requests_app.checks import CheckConfig
from requests_app.checks import CheckResult
from requests_app.checks import CheckSpec
from requests_app.checks import Report
from requests_app.checks import normalise_address
from requests_app.checks import normalise_fqdn
from requests_app.checks import run_checks
from requests_app.checks import run_checks_sync
from requests_app.checks import run_many
from requests_app.checks import run_many_sync
from requests_app.checks import run_sync
from requests_app.dns import DnsClient
from requests_app.dns import make_resolver
from requests_app.dns import parse_nameserver
from requests_app.dns import reverse_name
from requests_app.rules import LISTED_RANGES
from requests_app.rules import PLAIN_FQDN_RE
from requests_app.rules import PRIVATE_NETWORKS
from requests_app.rules import REFUSED_NETWORKS
from requests_app.rules import judge_address
from requests_app.rules import listed
from requests_app.rules import normalise_fqdn_in_full
from tests.support.dnsserver import DnsTestServer

RELAY_INCLUDE = "_spf.relay.test"


def ptr(address: str, target: str) -> str:
    return f"{dns.reversename.from_address(address)} IN PTR {target}"


def spf_chain(prefix: str, depth: int) -> str:
    """``prefix0`` includes ``prefix1`` ... includes the relay: ``depth`` include terms."""
    lines = [f'{prefix}{i}.spf.test. IN TXT "v=spf1 include:{prefix}{i + 1}.spf.test -all"'
             for i in range(depth - 1)]
    lines.append(f'{prefix}{depth - 1}.spf.test. IN TXT "v=spf1 include:{RELAY_INCLUDE} -all"')
    return "\n".join(lines)


ZONE = "\n".join([
    """
$ORIGIN example.test.
$TTL 300
@            IN SOA ns1 hostmaster 1 3600 600 86400 300
@            IN NS ns1
host         IN A 193.0.10.1
host         IN AAAA 2001:67c:2e8::1
alias        IN CNAME mid
mid          IN CNAME real
real         IN A 193.0.10.2
real         IN AAAA 2001:67c:2e8::2
extra        IN A 193.0.10.3
extra        IN A 193.0.10.33
extra        IN AAAA 2001:67c:2e8::3
missing      IN A 193.0.10.4
noptr        IN A 193.0.10.5
otherptr     IN A 193.0.10.6
multiptr     IN A 193.0.10.7
xn--bcher-kva IN A 193.0.10.9
dangling     IN CNAME gone
; senders
good         IN TXT "v=spf1 include:_spf.relay.test -all"
good         IN TXT "google-site-verification=abc"
_dmarc.good  IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@example.test"
s1._domainkey.good IN TXT "v=DKIM1; k=rsa; " "p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"
s2._domainkey.good IN CNAME s2.dkim.provider.test.
old._domainkey.good IN TXT "v=DKIM1; p="
ipauth       IN TXT "v=spf1 ip4:193.0.20.0/24 ip6:2001:67c:99::/48 -all"
_dmarc.ipauth IN TXT "v=DMARC1; p=quarantine"
halfauth     IN TXT "v=spf1 ip4:193.0.20.0/24 -all"
mxauth       IN TXT "v=spf1 mx a:relay-host.example.test -all"
mxauth       IN MX 10 mx1.mxauth
mx1.mxauth   IN A 193.0.20.10
relay-host   IN AAAA 2001:67c:99::10
redir        IN TXT "v=spf1 redirect=spf.corp.test"
nospf        IN TXT "just some text"
_dmarc.nospf IN TXT "v=DMARC1; p=none"
notauth      IN TXT "v=spf1 include:spf.other.test -all"
allfirst     IN TXT "v=spf1 -all include:_spf.relay.test"
twospf       IN TXT "v=spf1 include:_spf.relay.test -all"
twospf       IN TXT "v=spf1 -all"
deep         IN TXT "v=spf1 include:d0.spf.test -all"
ten          IN TXT "v=spf1 include:t0.spf.test -all"
slowspf      IN TXT "v=spf1 include:silent.spf.test -all"
monitor      IN TXT "v=spf1 include:_spf.relay.test -all"
_dmarc.monitor IN TXT "v=DMARC1; p=none; rua=mailto:d@example.test"
""",
    '_spf.relay.test. IN TXT "v=spf1 ip4:193.0.20.0/24 ip6:2001:67c:99::/48 -all"',
    'spf.corp.test. IN TXT "v=spf1 include:_spf.relay.test ~all"',
    'spf.other.test. IN TXT "v=spf1 ip4:203.0.114.0/24 -all"',
    's2.dkim.provider.test. IN TXT "p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC"',
    # 11 nested includes (over the limit) and exactly 10 (at the limit)
    spf_chain("d", 10),
    spf_chain("t", 9),
    # mail.example.co.uk has no DMARC record: its organisational domain has one
    'mail.example.co.uk. IN TXT "v=spf1 include:_spf.relay.test -all"',
    '_dmarc.example.co.uk. IN TXT "v=DMARC1; p=reject; sp=quarantine"',
    ptr("193.0.10.1", "host.example.test."),
    ptr("2001:67c:2e8::1", "host.example.test."),
    ptr("193.0.10.2", "real.example.test."),  # the canonical name of alias
    ptr("2001:67c:2e8::2", "Alias.Example.TEST."),  # the FQDN itself, odd case
    ptr("193.0.10.3", "extra.example.test."),
    ptr("2001:67c:2e8::3", "extra.example.test."),
    ptr("193.0.10.4", "missing.example.test."),
    ptr("193.0.10.6", "somewhere-else.example.net."),
    ptr("193.0.10.7", "first.example.net."),
    ptr("193.0.10.7", "multiptr.example.test."),
    ptr("193.0.10.7", "third.example.net."),
    ptr("193.0.10.9", "xn--bcher-kva.example.test."),
])

SERVFAIL = {"broken.example.test", "sfail.example.test", "_dmarc.sfail.example.test"}
DROP = {"silent.example.test", "silent.spf.test"}
HOST_V6_LONG = "2001:067C:02E8:0000:0000:0000:0000:0001"


@pytest.fixture(scope="module")
def server():
    with DnsTestServer(ZONE, servfail=SERVFAIL, drop=DROP) as srv:
        yield srv


def config(**overrides) -> CheckConfig:
    values = dict(spf_include=RELAY_INCLUDE, approved_sender_domains=("example.test",),
                  lifetime=2.0)
    values.update(overrides)
    return CheckConfig(**values)


def check(server: DnsTestServer, fqdn: str | None, addresses=(), senders=(), selector=None,
          **overrides) -> Report:
    spec = CheckSpec(fqdn, tuple(addresses), tuple(senders), selector)
    return run_checks_sync(spec, config(**overrides), [server.nameserver])


def one(report: Report, check_id: str, subject: str | None = None) -> CheckResult:
    found = [c for c in report.checks
             if c.id == check_id and (subject is None or c.subject == subject)]
    assert len(found) == 1, (check_id, subject, report.as_dict())
    return found[0]


# --- report shape -----------------------------------------------------------------------


def test_report_shape_is_the_contract(server):
    # when
    report = check(server, "host.example.test", ["193.0.10.1", "2001:67c:2e8::1"],
                   ["good.example.test"], "s1")
    data = json.loads(json.dumps(report.as_dict()))
    # then
    assert set(data) == {"verdict", "checks"}
    assert data["verdict"] == "pass"
    assert all(set(c) == {"id", "subject", "status", "detail", "evidence"}
               for c in data["checks"])
    assert [(c["id"], c["subject"], c["status"]) for c in data["checks"]] == [
        ("address_policy", "193.0.10.1", "pass"),
        ("address_policy", "2001:67c:2e8::1", "pass"),
        ("forward", "host.example.test", "pass"),
        ("reverse", "193.0.10.1", "pass"),
        ("reverse", "2001:67c:2e8::1", "pass"),
        ("sender_spf", "good.example.test", "pass"),
        ("sender_dmarc", "good.example.test", "pass"),
        ("sender_dkim", "good.example.test", "pass"),
        ("sender_domain_policy", "good.example.test", "pass"),
    ]


# --- forward ----------------------------------------------------------------------------


def test_forward_follows_a_cname_chain(server):
    # when
    report = check(server, "alias.example.test", ["193.0.10.2", "2001:67c:2e8::2"])
    # then
    forward = one(report, "forward")
    assert forward.status == "pass"
    assert forward.evidence["chain"] == ["alias.example.test", "mid.example.test",
                                         "real.example.test"]
    assert forward.evidence["A"] == ["193.0.10.2"]
    assert forward.evidence["AAAA"] == ["2001:67c:2e8::2"]


def test_forward_warns_on_addresses_not_in_the_request(server):
    # when
    report = check(server, "extra.example.test", ["193.0.10.3", "2001:67c:2e8::3"])
    # then
    forward = one(report, "forward")
    assert forward.status == "warn"
    assert forward.evidence["extra"] == ["193.0.10.33"]
    assert report.verdict == "warn"


def test_forward_fails_on_a_missing_address(server):
    # when
    report = check(server, "missing.example.test", ["193.0.10.4", "2001:67c:2e8::4"])
    # then
    forward = one(report, "forward")
    assert forward.status == "fail"
    assert forward.evidence["missing"] == ["2001:67c:2e8::4"]
    assert "2001:67c:2e8::4" in forward.detail


def test_forward_fails_on_nxdomain(server):
    # when
    report = check(server, "nonexistent.example.test", ["193.0.10.1"])
    # then
    assert one(report, "forward").status == "fail"
    assert "NXDOMAIN" in one(report, "forward").detail
    assert report.verdict == "fail"


def test_forward_fails_on_a_dangling_cname(server):
    # when
    forward = one(check(server, "dangling.example.test", ["193.0.10.1"]), "forward")
    # then
    assert forward.status == "fail"
    assert forward.evidence["chain"] == ["dangling.example.test", "gone.example.test"]
    assert "gone.example.test" in forward.detail


def test_ipv6_long_and_short_forms_are_one_address(server):
    # when
    report = check(server, "host.example.test", ["193.0.10.1", HOST_V6_LONG])
    # then
    assert report.verdict == "pass"
    assert one(report, "reverse", "2001:67c:2e8::1").status == "pass"
    assert one(report, "forward").evidence["expected"] == ["193.0.10.1", "2001:67c:2e8::1"]


def test_mixed_case_and_trailing_dot_are_normalised(server):
    # when
    report = check(server, "HOST.Example.TEST.", ["193.0.10.1"], ["GOOD.example.test."])
    # then
    assert one(report, "forward").subject == "host.example.test"
    assert one(report, "reverse").status == "pass"
    assert one(report, "sender_spf").subject == "good.example.test"
    assert one(report, "forward").status == "warn"  # the IPv6 address was not requested


def test_idn_names_are_checked_as_punycode(server):
    # when
    report = check(server, "Bücher.example.test", ["193.0.10.9"])
    # then
    assert one(report, "forward").subject == "xn--bcher-kva.example.test"
    assert one(report, "forward").status == "pass"
    assert one(report, "reverse").status == "pass"


# --- reverse ----------------------------------------------------------------------------


def test_reverse_accepts_the_canonical_name_and_the_fqdn(server):
    # when
    report = check(server, "alias.example.test", ["193.0.10.2", "2001:67c:2e8::2"])
    # then
    v4, v6 = one(report, "reverse", "193.0.10.2"), one(report, "reverse", "2001:67c:2e8::2")
    assert (v4.status, v4.evidence["matched"]) == ("pass", "real.example.test")
    assert (v6.status, v6.evidence["matched"]) == ("pass", "alias.example.test")


def test_reverse_fails_without_ptr(server):
    # when
    reverse = one(check(server, "noptr.example.test", ["193.0.10.5"]), "reverse")
    # then
    assert reverse.status == "fail"
    assert reverse.evidence["ptr"] == []
    assert "no PTR" in reverse.detail


def test_reverse_fails_when_ptr_names_another_host(server):
    # when
    reverse = one(check(server, "otherptr.example.test", ["193.0.10.6"]), "reverse")
    # then
    assert reverse.status == "fail"
    assert reverse.evidence["ptr"] == ["somewhere-else.example.net"]


def test_reverse_passes_if_one_of_several_ptrs_matches(server):
    # when
    reverse = one(check(server, "multiptr.example.test", ["193.0.10.7"]), "reverse")
    # then
    assert reverse.status == "pass"
    assert reverse.evidence["ptr"] == ["first.example.net", "multiptr.example.test",
                                       "third.example.net"]


# --- transient failures -----------------------------------------------------------------


def test_servfail_is_an_error_never_a_fail(server):
    # when
    report = check(server, "broken.example.test", ["193.0.10.1"], ["sfail.example.test"])
    # then
    assert one(report, "forward").status == "error"
    assert one(report, "sender_spf").status == "error"
    assert one(report, "sender_dmarc").status == "error"
    assert report.verdict == "error"


def test_a_dropped_query_is_an_error_within_the_lifetime(server):
    # given
    lifetime = 1.0
    started = time.monotonic()
    # when
    report = check(server, "silent.example.test", ["193.0.10.1"], ["slowspf.example.test"],
                   lifetime=lifetime)
    elapsed = time.monotonic() - started
    # then
    assert one(report, "forward").status == "error"
    assert one(report, "sender_spf").status == "error"
    assert "temperror" in one(report, "sender_spf").detail
    # the domain has no DMARC record for certain: a definite fail outranks the errors
    assert one(report, "sender_dmarc").status == "fail"
    assert report.verdict == "fail"
    assert elapsed < lifetime + DEADLINE_MARGIN + 0.3


def test_whole_run_is_bounded_even_when_every_query_is_dropped(server):
    # given a server that answers nothing at all
    with DnsTestServer(ZONE, drop={"host.example.test", "good.example.test",
                                   "_dmarc.good.example.test", "s1._domainkey.good.example.test",
                                   "1.10.0.193.in-addr.arpa"}) as mute:
        started = time.monotonic()
        # when
        report = check(mute, "host.example.test", ["193.0.10.1"], ["good.example.test"], "s1",
                       lifetime=0.8)
        elapsed = time.monotonic() - started
    # then
    assert {c.status for c in report.checks if c.id not in (
        "address_policy", "sender_domain_policy")} == {"error"}
    assert elapsed < 0.8 + DEADLINE_MARGIN + 0.3


def test_an_unanswered_name_does_not_hold_back_the_other_checks():
    # given: the host's own name goes unanswered, the sender domain answers (with an include)
    with DnsTestServer(ZONE, drop={"host.example.test"}) as partial:
        # when
        report = check(partial, "host.example.test", ["193.0.10.1"], ["good.example.test"],
                       "s1", lifetime=0.8)
    # then: only the forward check waits in vain; the include was followed meanwhile
    status = {(c.id, c.subject): c.status for c in report.checks}
    assert status["forward", "host.example.test"] == "error"
    assert status["reverse", "193.0.10.1"] == "pass"  # the PTR names the FQDN itself
    assert status["sender_spf", "good.example.test"] == "pass"
    assert status["sender_dmarc", "good.example.test"] == "pass"
    assert status["sender_dkim", "good.example.test"] == "pass"
    assert report.verdict == "error"


# --- address_policy ---------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    pytest.param("0.0.0.0", id="unspecified-v4"),
    pytest.param("::", id="unspecified-v6"),
    pytest.param("127.0.0.1", id="loopback-v4"),
    pytest.param("::1", id="loopback-v6"),
    pytest.param("169.254.10.1", id="link-local-v4"),
    pytest.param("fe80::1", id="link-local-v6"),
    pytest.param("224.0.0.1", id="multicast-v4"),
    pytest.param("ff02::1", id="multicast-v6"),
    pytest.param("240.0.0.1", id="reserved-v4"),
    pytest.param("255.255.255.255", id="broadcast"),
    pytest.param("192.0.2.10", id="doc-test-net-1"),
    pytest.param("198.51.100.10", id="doc-test-net-2"),
    pytest.param("203.0.113.10", id="doc-test-net-3"),
    pytest.param("2001:db8::10", id="doc-v6"),
    pytest.param("100.64.0.1", id="shared-cgnat"),
    pytest.param("::ffff:193.0.10.1", id="ipv4-mapped"),
    pytest.param("::193.0.10.1", id="ipv4-compatible"),
    pytest.param("2002:c100:a01::1", id="6to4"),
    pytest.param("2001:0:4136:e378:8000:63bf:3fff:fdd2", id="teredo"),
    pytest.param("64:ff9b::c100:a01", id="nat64"),
    pytest.param("10.1.2.3", id="rfc1918-10"),
    pytest.param("172.16.5.4", id="rfc1918-172"),
    pytest.param("192.168.1.1", id="rfc1918-192"),
    pytest.param("fd12:3456::1", id="ula"),
    pytest.param("193.0.10.0/24", id="prefix"),
    pytest.param("193.0.10.1/32", id="host-prefix"),
    pytest.param("fe80::1%eth0", id="scoped"),
    pytest.param("not-an-address", id="garbage"),
])
def test_address_policy_refuses(server, address):
    # when: no FQDN, so only the address is judged and no DNS is asked
    report = check(server, None, [address])
    # then
    result = one(report, "address_policy")
    assert result.status == "fail", result
    assert result.detail
    assert report.verdict == "fail"


@pytest.mark.parametrize("address", ["10.1.2.3", "172.16.5.4", "192.168.1.1", "fd12:3456::1"])
def test_private_addresses_pass_when_allowed(server, address):
    # when
    result = one(check(server, None, [address], allow_private=True), "address_policy")
    # then
    assert result.status == "pass"
    assert "RELAY_ALLOW_PRIVATE" in result.detail


def test_allowing_private_does_not_allow_shared_or_loopback(server):
    # when
    report = check(server, None, ["100.64.0.1", "127.0.0.1"], allow_private=True)
    # then
    assert [c.status for c in report.checks] == ["fail", "fail"]


@pytest.mark.parametrize("address", ["10.20.1.1", "127.0.0.5", "fd00:1::5"])
def test_lab_networks_are_accepted_anyway(server, address):
    # when
    result = one(check(server, None, [address],
                       lab_networks=("10.20.0.0/16", "127.0.0.0/8", "fd00:1::/64")),
                 "address_policy")
    # then
    assert result.status == "pass"
    assert "RELAY_LAB_NETWORKS" in result.detail


def test_global_addresses_pass(server):
    report = check(server, None, ["193.0.10.1", "2001:67c:2e8::1"])
    assert [c.status for c in report.checks] == ["pass", "pass"]


def _full_rules(ip) -> CheckResult:
    """The address rules in full, without the shortcut for unlisted addresses."""
    ruling = judge_address(ip, config().allow_private, str(ip))
    return CheckResult("address_policy", str(ip), "pass" if ruling.allowed else "fail",
                       ruling.detail)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6),
                 st.ip_addresses(network="2000::/3")))
def test_the_unlisted_shortcut_is_taken_only_where_every_rule_passes(ip):
    # given: an address outside every network the rules read
    assume(not listed(ip))
    # when / then: the full rules agree it is a plain global address
    result = _full_rules(ip)
    assert (result.status, result.detail) == ("pass", f"{ip} is a global host address")


def test_every_network_the_rules_read_is_listed_up_to_its_edges():
    # given: our tables and the stdlib's own special networks
    nets = [net for table in (REFUSED_NETWORKS, PRIVATE_NETWORKS) for rows in table.values()
            for net, _why in rows]
    for constants in (ipaddress._IPv4Constants, ipaddress._IPv6Constants):
        for value in vars(constants).values():
            nets += [v for v in (value if isinstance(value, list) else [value])
                     if isinstance(v, ipaddress.IPv4Network | ipaddress.IPv6Network)]
    # then: first and last address of each are listed (the full rules judge them) ...
    assert len(nets) > 40
    for net in nets:
        assert listed(net.network_address) and listed(net.broadcast_address), net
    # ... and just outside each listed range, the shortcut is right too
    for version, (firsts, lasts) in LISTED_RANGES.items():
        kind = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        limit = 2 ** (32 if version == 4 else 128) - 1
        for value in [f - 1 for f in firsts if f > 0] + [x + 1 for x in lasts if x < limit]:
            ip = kind(value)
            if not listed(ip):
                assert _full_rules(ip).status == "pass", ip


# --- SPF --------------------------------------------------------------------------------


def test_spf_include_chain_over_ten_lookups_is_a_permerror(server):
    # when
    spf = one(check(server, None, senders=["deep.example.test"]), "sender_spf")
    # then
    assert spf.status == "fail"
    assert "permerror" in spf.detail
    assert spf.evidence["result"] == "permerror"
    assert spf.evidence["lookups"] == 11


def test_spf_include_chain_of_exactly_ten_lookups_passes(server):
    # when
    spf = one(check(server, None, senders=["ten.example.test"]), "sender_spf")
    # then
    assert spf.status == "pass", spf.detail
    assert spf.evidence["lookups"] == 10


def test_spf_authorises_via_include(server):
    spf = one(check(server, None, senders=["good.example.test"]), "sender_spf")
    assert spf.status == "pass"
    assert spf.evidence["include_found"] is True
    assert spf.evidence["records"]["_spf.relay.test"].startswith("v=spf1 ip4:193.0.20.0/24")


def test_spf_authorises_via_ip4_and_ip6_of_the_relay(server):
    # when: no include configured, only the relay's addresses
    spf = one(check(server, None, senders=["ipauth.example.test"], spf_include=None,
                    relay_addresses=("193.0.20.10", "2001:67c:99::10")), "sender_spf")
    # then
    assert spf.status == "pass"
    assert spf.evidence["relay_results"] == {"193.0.20.10": "pass", "2001:67c:99::10": "pass"}


def test_spf_must_authorise_every_relay_address(server):
    spf = one(check(server, None, senders=["halfauth.example.test"], spf_include=None,
                    relay_addresses=("193.0.20.10", "2001:67c:99::10")), "sender_spf")
    assert spf.status == "fail"
    assert spf.evidence["relay_results"] == {"193.0.20.10": "pass", "2001:67c:99::10": "fail"}


def test_spf_a_and_mx_mechanisms_are_evaluated(server):
    spf = one(check(server, None, senders=["mxauth.example.test"], spf_include=None,
                    relay_addresses=("193.0.20.10", "2001:67c:99::10")), "sender_spf")
    assert spf.status == "pass"


def test_spf_redirect_is_followed(server):
    spf = one(check(server, None, senders=["redir.example.test"]), "sender_spf")
    assert spf.status == "pass"
    assert set(spf.evidence["records"]) == {"redir.example.test", "spf.corp.test",
                                            "_spf.relay.test"}


@pytest.mark.parametrize(("domain", "words"), [
    ("nospf.example.test", "no SPF record"),
    ("notauth.example.test", "does not authorise"),
    ("allfirst.example.test", "does not authorise"),  # terms after "all" never count
    ("twospf.example.test", "permerror"),
    ("gone.example.test", "no SPF record"),
])
def test_spf_failures(server, domain, words):
    spf = one(check(server, None, senders=[domain]), "sender_spf")
    assert spf.status == "fail"
    assert words in spf.detail


# --- DMARC, DKIM, domain policy ---------------------------------------------------------


def test_dmarc_p_none_warns(server):
    dmarc = one(check(server, None, senders=["monitor.example.test"]), "sender_dmarc")
    assert dmarc.status == "warn"
    assert dmarc.evidence["found_at"] == "_dmarc.monitor.example.test"


def test_dmarc_falls_back_to_the_organisational_domain(server):
    # when
    dmarc = one(check(server, None, senders=["mail.example.co.uk"]), "sender_dmarc")
    # then
    assert dmarc.status == "pass"
    assert dmarc.evidence["organisational_domain"] == "example.co.uk"
    assert dmarc.evidence["found_at"] == "_dmarc.example.co.uk"
    assert dmarc.evidence["policy"] == "quarantine"  # sp= applies to the subdomain
    assert list(dmarc.evidence["queried"]) == ["_dmarc.mail.example.co.uk",
                                               "_dmarc.example.co.uk"]


def test_dmarc_missing_fails(server):
    dmarc = one(check(server, None, senders=["halfauth.example.test"]), "sender_dmarc")
    assert dmarc.status == "fail"
    assert "_dmarc.example.test" in dmarc.detail


@pytest.mark.parametrize(("selector", "status", "via"), [
    ("s1", "pass", None),
    ("s2", "pass", "s2.dkim.provider.test"),
    ("missing", "fail", None),
    ("old", "fail", None),
])
def test_dkim(server, selector, status, via):
    # when
    dkim = one(check(server, None, senders=["good.example.test"], selector=selector),
               "sender_dkim")
    # then
    assert dkim.status == status, dkim.detail
    if via:
        assert dkim.evidence["chain"][-1] == via


def test_no_dkim_check_without_selector(server):
    report = check(server, None, senders=["good.example.test"])
    assert "sender_dkim" not in {c.id for c in report.checks}


def test_sender_domain_policy(server):
    # when
    report = check(server, None, senders=["good.example.test", "mail.example.co.uk"])
    # then
    assert one(report, "sender_domain_policy", "good.example.test").status == "pass"
    outside = one(report, "sender_domain_policy", "mail.example.co.uk")
    assert outside.status == "warn"
    assert "rewritten" in outside.detail


def test_functional_account_runs_only_sender_checks(server):
    report = check(server, None, senders=["good.example.test"])
    assert [c.id for c in report.checks] == ["sender_spf", "sender_dmarc",
                                             "sender_domain_policy"]


# --- engine -----------------------------------------------------------------------------


def test_checks_run_concurrently():
    # given: every answer takes 150 ms; serially this request needs over 8 round trips
    with DnsTestServer(ZONE, latency_ms=150) as slow:
        started = time.monotonic()
        # when
        report = check(slow, "alias.example.test", ["193.0.10.2", "2001:67c:2e8::2"],
                       ["good.example.test"], "s2", lifetime=3.0)
        elapsed = time.monotonic() - started
    # then: the longest dependency chain is 2-3 round trips
    assert report.verdict == "pass", report.as_dict()
    assert elapsed < 0.8


def test_run_many_keeps_order_and_shares_lookups(server):
    # given
    specs = [CheckSpec("host.example.test", ("193.0.10.1", "2001:67c:2e8::1"),
                       ("good.example.test",)),
             CheckSpec("missing.example.test", ("193.0.10.4", "2001:67c:2e8::4"),
                       ("good.example.test",))] * 5
    resolver = make_resolver([server.nameserver], 2.0)
    # when
    reports = asyncio.run(run_many(specs, config(), resolver, concurrency=3))
    # then
    assert [r.verdict for r in reports] == ["pass", "fail"] * 5


def _counting_tasks(coro):
    """Run ``coro`` on a fresh loop; return its result and how many tasks it made."""
    made = []

    def factory(loop, task_coro, **kwargs):
        made.append(task_coro)
        return asyncio.Task(task_coro, loop=loop, **kwargs)

    async def main():
        asyncio.get_running_loop().set_task_factory(factory)
        result = await coro
        return result, len(made)  # not the loop's own shutdown tasks

    return asyncio.run(main())


def test_a_batch_runs_checks_whose_answers_are_in_without_a_task_each(server):
    # given 40 requests of 6 checks each (forward, 2 reverse, SPF, DMARC, DKIM)
    specs = [CheckSpec("host.example.test", ("193.0.10.1", "2001:67c:2e8::1"),
                       ("good.example.test",), "s1")] * 40
    resolver = make_resolver([server.nameserver], 2.0, cache=False)
    # when
    reports, tasks = _counting_tasks(run_many(specs, config(), resolver, concurrency=10))
    # then: answers asked ahead are in when a request's turn comes, so checks finish in
    # their first step; the tasks are the 10 workers and the few checks that wait (the
    # shared SPF include, asked first by the earliest requests): 21 here; 71 when a
    # request does not wait for its answers asked ahead
    assert [r.verdict for r in reports] == ["pass"] * 40
    assert tasks < 0.15 * 6 * 40, tasks


def test_look_ups_are_not_tasks(server):
    # given
    async def many(resolver):
        async with DnsClient(resolver) as client:
            return await asyncio.gather(*(client.query(f"n{i}.example.test", "A")
                                          for i in range(50)))

    resolver = make_resolver([server.nameserver], 2.0, cache=False)
    # when
    answers, tasks = _counting_tasks(many(resolver))
    # then: one task opened the socket (and gather wraps nothing: they are futures)
    assert len(answers) == 50
    assert tasks == 1


def test_asking_ahead_asks_nothing_the_checks_would_not_ask():
    # given: requests of every shape (server with DKIM, CNAME, IDN, account, no PTR ...)
    specs = [
        CheckSpec("host.example.test", ("193.0.10.1", "2001:67c:2e8::1"),
                  ("good.example.test",), "s1"),
        CheckSpec("alias.example.test", ("193.0.10.2",), ("mail.example.co.uk",), "s2"),
        CheckSpec("noptr.example.test", ("193.0.10.5", "10.0.0.1"), ("nospf.example.test",)),
        CheckSpec(None, (), ("redir.example.test", "mxauth.example.test")),
        CheckSpec("missing.example.test", ("193.0.10.4",), ()),
    ]
    with DnsTestServer(ZONE, record=True) as one_by_one, \
            DnsTestServer(ZONE, record=True) as batched:
        # when: each request on its own (nothing asked ahead), then as one batch
        alone = [run_checks_sync(s, config(), [one_by_one.nameserver]) for s in specs]
        together = asyncio.run(run_many(specs, config(),
                                        make_resolver([batched.nameserver], 2.0, cache=False),
                                        concurrency=2))
    # then: the same reports from the same questions, each asked once in the batch
    assert [r.as_dict() for r in together] == [r.as_dict() for r in alone]
    assert set(batched.questions) == set(one_by_one.questions)
    assert len(batched.questions) == len(set(batched.questions))


def test_an_invalid_request_in_a_batch_raises_as_before_any_other_is_reported(server):
    specs = [CheckSpec("host.example.test", ("193.0.10.1",)), CheckSpec("*.example.test"),
             CheckSpec("host.example.test", ("193.0.10.1",))]
    resolver = make_resolver([server.nameserver], 2.0)
    with pytest.raises(ValueError, match="wildcards"):
        asyncio.run(run_many(specs, config(), resolver, concurrency=1))


def test_run_many_sync_runs_a_batch_on_uvloop_with_the_collector_paused(server):
    # given: the collector is on, as in any worker
    uvloop = pytest.importorskip("uvloop")
    specs = [CheckSpec("host.example.test", ("193.0.10.1", "2001:67c:2e8::1"),
                       ("good.example.test",))] * 3
    resolver = make_resolver([server.nameserver], 2.0)
    seen = {}

    async def batch():
        seen["loop"] = asyncio.get_running_loop()
        seen["gc"] = gc.isenabled()
        return await run_many(specs, config(), resolver)

    assert gc.isenabled()
    # when
    reports = run_sync(batch(), loop_factory=uvloop.new_event_loop)
    plain = run_many_sync(specs, config(), resolver)
    # then: answered on uvloop with no collector passes, and the collector is back after
    assert isinstance(seen["loop"], uvloop.Loop)
    assert seen["gc"] is False
    assert gc.isenabled()
    assert [r.verdict for r in reports] == [r.verdict for r in plain] == ["pass"] * 3


def test_run_sync_restores_the_collector_after_an_error():
    async def boom():
        raise RuntimeError("bad batch")

    with pytest.raises(RuntimeError):
        run_sync(boom())
    assert gc.isenabled()
    gc.disable()
    try:
        run_sync(asyncio.sleep(0))
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


def test_invalid_names_raise_value_error(server):
    resolver = make_resolver([server.nameserver], 1.0)
    with pytest.raises(ValueError):
        asyncio.run(run_checks(CheckSpec("*.example.test"), config(), resolver))
    with pytest.raises(ValueError):
        asyncio.run(run_checks(CheckSpec(None, sender_domains=("a..b",)), config(), resolver))


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1", ("127.0.0.1", 53)),
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("::1", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)),
    ("[0:0::1]", ("::1", 53)),
])
def test_parse_nameserver(text, expected):
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["ns.example.test", "127.0.0.1:0", "[::1", "1.2.3.4:x"])
def test_parse_nameserver_rejects(text):
    with pytest.raises(ValueError):
        parse_nameserver(text)


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="RELAY_LAB_NETWORKS"):
        CheckConfig(lab_networks=("10.0.0.1/8",))
    with pytest.raises(ValueError):
        CheckConfig(relay_addresses=("relay.example.test",))


# --- normalisation properties -----------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("Host.Example.TEST.", "host.example.test"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("BÜCHER.example", "xn--bcher-kva.example"),
    ("straße.example", "xn--strae-oqa.example"),  # IDNA 2008: ß is not "ss"
    ("Ｂücher.example", "xn--bcher-kva.example"),  # fullwidth letters are mapped (UTS #46)
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("mail。example。com", "mail.example.com"),
    (" a-b.example.org ", "a-b.example.org"),
])
def test_normalise_fqdn_examples(raw, expected):
    assert normalise_fqdn(raw) == expected


@pytest.mark.parametrize("raw", [
    "", ".", "example", "*.example.test", "a..example.test", ".example.test",
    "-a.example.test", "a-.example.test", "a_b.example.test", "x" * 64 + ".test",
    ".".join(["a" * 63] * 4) + ".test", "1.2.3.4", "a b.test", "a.example.test..",
    "😀.example", "xn--ls8h.example", "xn--abc.example", "⒈example.test",
])
def test_normalise_fqdn_rejects(raw):
    with pytest.raises(ValueError):
        normalise_fqdn(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_normalise_fqdn_raises_only_value_error_and_is_idempotent(text):
    try:
        name = normalise_fqdn(text)
    except ValueError:
        return
    assert normalise_fqdn(name) == name
    assert name == name.lower() and name.isascii() and not name.endswith(".")
    assert len(name) <= 253 and all(0 < len(label) <= 63 for label in name.split("."))


_LABEL = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(alphabet="abz09-._xnAZ", max_size=40),
                 st.lists(_LABEL, min_size=1, max_size=4).map(".".join)))
def test_the_normal_form_shortcut_agrees_with_the_full_rules(text):
    # the shortcut returns a name as it is only where the full rules would return it too
    try:
        full = normalise_fqdn_in_full(text)
    except ValueError:
        full = None
    try:
        fast = normalise_fqdn(text)
    except ValueError:
        fast = None
    assert fast == full
    if PLAIN_FQDN_RE.fullmatch(text) and "xn--" not in text:
        assert full == text


@settings(max_examples=200, deadline=None)
@given(st.lists(_LABEL, min_size=1, max_size=5), st.sampled_from(["com", "Example", "TEST"]),
       st.booleans())
def test_normalise_fqdn_of_valid_names_is_lower_case_without_dot(labels, tld, dot):
    raw = ".".join([*labels, tld]) + ("." if dot else "")
    assert normalise_fqdn(raw) == ".".join([*labels, tld]).lower()


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses())
def test_normalise_address_long_and_short_forms_agree(ip):
    forms = {str(ip), ip.exploded, ip.exploded.upper(), f" {ip} "}
    assert {normalise_address(f) for f in forms} == {str(ip)}
    assert normalise_address(normalise_address(ip.exploded)) == str(ip)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_normalise_address_raises_only_value_error(text):
    try:
        result = normalise_address(text)
    except ValueError:
        return
    assert result == str(ipaddress.ip_address(result))


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses())
def test_reverse_name_matches_dnspython(ip):
    # dnspython names IPv4-mapped IPv6 addresses under in-addr.arpa; we keep ip6.arpa
    # (address_policy refuses them anyway)
    assume(ip.version == 4 or ip.ipv4_mapped is None)
    expected = dns.reversename.from_address(str(ip)).to_text().rstrip(".")
    assert reverse_name(str(ip)) == expected
