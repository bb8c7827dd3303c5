"""Exact fixes: every warn/fail check carries the records to publish, and they work.

The proof is end to end against the real DNS test server: for each broken case of
``tests/zones/broken.zone`` (served beside ``default.zone``), run the checks, publish
every proposed record in the server (add, replace or remove, as the fix says), run the
checks again, and they pass. The page, the checks-failed mail and the API show the same
records.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dnslib import QTYPE
from dnslib import RR

from requests_app.checks import CheckConfig
from requests_app.checks import CheckResult
from requests_app.checks import CheckSpec
from requests_app.checks import Report
from requests_app.checks import run_checks_sync
from requests_app.checks.fixes import TXT_STRING_LIMIT
from requests_app.checks.fixes import fixes_for
from requests_app.checks.fixes import spf_candidates
from requests_app.checks.fixes import txt_strings
from tests.conftest import ZONES
from tests.support.dnsserver import DnsTestServer

ZONE = (ZONES / "default.zone").read_text() + (ZONES / "broken.zone").read_text()
CONFIG = CheckConfig(spf_include="_spf.example.org",
                     approved_sender_domains=("example.org", "broken.test"), lifetime=2.0)
CONTACT = "ops@corp.example.net"


@pytest.fixture(scope="module")
def broken_dns() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE) as server:
        yield server


@pytest.fixture
def dns(broken_dns: DnsTestServer) -> Iterator[DnsTestServer]:
    """The broken zones, as they are in the file again after each test."""
    yield broken_dns
    broken_dns.set_zone(ZONE)


def check(server: DnsTestServer, spec: CheckSpec, config: CheckConfig = CONFIG) -> Report:
    return run_checks_sync(spec, config, [server.nameserver])


def dkim_public_key() -> str:
    """A real RSA-2048 public key, base64 DER, as a signer publishes it (p=)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def _txt(rr: RR) -> str:
    return b"".join(rr.rdata.data).decode()


def _quoted(value: str) -> str:
    return " ".join(f'"{part}"' for part in txt_strings(value))


def publish(server: DnsTestServer, rrs: list[RR], fixes: list[dict]) -> list[RR]:
    """Apply ``fixes`` to the served records as a DNS operator would, and serve them.

    ``replace`` removes the records of that type and name that the new one stands for
    (TXT: those of the same ``v=`` kind, so an unrelated TXT stays), then adds it.
    """
    for fix in fixes:
        action, rtype, name, value = fix["action"], fix["type"], fix["name"], fix["value"]
        if action == "none":
            continue
        key = name.lower().rstrip(".") + "."
        if "<public key>" in value:  # only the signer knows its key: publish a real one
            value = value.replace("<public key>", dkim_public_key())

        def same(rr: RR, key: str = key, rtype: str = rtype) -> bool:
            return str(rr.rname).lower() == key and QTYPE[rr.rtype] == rtype

        if action == "remove":
            rrs = [rr for rr in rrs if not (same(rr) and str(rr.rdata) == value)]
            continue
        if action == "replace":
            kind = value.split(maxsplit=1)[0].rstrip(";").lower()
            rrs = [rr for rr in rrs if not (same(rr) and (
                rtype != "TXT" or _txt(rr).split(maxsplit=1)[0].rstrip(";").lower() == kind))]
        text = _quoted(value) if rtype == "TXT" else (
            value + "." if rtype == "PTR" else value)
        rrs = rrs + RR.fromZone(f"{key} 300 IN {rtype} {text}")
    server.set_zone("\n".join(rr.toZone() for rr in rrs))
    return rrs


def unfixed(report: Report) -> list[CheckResult]:
    return [c for c in report.checks if c.status in ("warn", "fail")]


BROKEN = {
    "forward: name does not exist": (CheckSpec("nxhost.broken.test", ("81.2.69.60",)),
                                     {("forward", "fail")}),
    "forward: no A/AAAA match": (CheckSpec("wrongaddr.broken.test", ("81.2.69.21",)),
                                 {("forward", "fail")}),
    "reverse: no PTR (IPv4 and IPv6)": (
        CheckSpec("noptr.broken.test", ("81.2.69.30", "2a02:898:0:20::30")),
        {("reverse", "fail")}),
    "reverse: PTR not forward-confirmed": (CheckSpec("notconfirmed.broken.test",
                                                     ("81.2.69.40",)),
                                           {("forward", "fail"), ("reverse", "fail")}),
    "spf: missing": (CheckSpec(None, sender_domains=("nospf.broken.test",)),
                     {("sender_spf", "fail")}),
    "spf: without the relay's include": (
        CheckSpec(None, sender_domains=("noinclude.broken.test",)), {("sender_spf", "fail")}),
    "spf: two records": (CheckSpec(None, sender_domains=("twospf.broken.test",)),
                         {("sender_spf", "fail")}),
    "spf: own terms, not the include": (
        CheckSpec(None, sender_domains=("own-terms.broken.test",)), {("sender_spf", "fail")}),
    "dmarc: missing": (CheckSpec(None, sender_domains=("nodmarc.broken.test",),
                                 report_to=CONTACT), {("sender_dmarc", "fail")}),
    "dmarc: only monitors": (CheckSpec(None, sender_domains=("monitoring.broken.test",)),
                             {("sender_dmarc", "warn")}),
    "dkim: missing": (CheckSpec(None, sender_domains=("nodkim.broken.test",),
                                dkim_selector="s1"), {("sender_dkim", "fail")}),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_publishing_the_proposed_records_makes_the_checks_pass(dns, case):
    spec, broken = BROKEN[case]
    report = check(dns, spec)
    assert {(c.id, str(c.status)) for c in unfixed(report)} == broken
    rrs = list(RR.fromZone(ZONE))
    rounds = 0
    while unfixed(report):
        rounds += 1
        assert rounds <= 2, [c.as_dict() for c in unfixed(report)]
        for result in unfixed(report):
            fixes = result.evidence["fix"]
            assert fixes and all(f["action"] != "none" for f in fixes), result.as_dict()
            rrs = publish(dns, rrs, fixes)
        report = check(dns, spec)
        if case == "dmarc: missing" and rounds == 1:
            # the starter record only monitors: the check warns, and its fix tightens it
            (dmarc,) = unfixed(report)
            assert (dmarc.id, dmarc.status) == ("sender_dmarc", "warn")
    assert report.verdict == "pass", [c.as_dict() for c in report.checks]
    assert rounds == (2 if case == "dmarc: missing" else 1)


def fix_of(report: Report, check_id: str) -> list[dict]:
    (result,) = [c for c in report.checks if c.id == check_id and c.status != "pass"]
    return result.evidence["fix"]


def test_ptr_fix_names_the_reverse_name_of_each_address_and_the_fqdn(dns):
    report = check(dns, BROKEN["reverse: no PTR (IPv4 and IPv6)"][0])
    fixes = [c.evidence["fix"][0] for c in report.checks if c.id == "reverse"]
    assert [(f["type"], f["name"], f["value"]) for f in fixes] == [
        ("PTR", "30.69.2.81.in-addr.arpa", "noptr.broken.test"),
        ("PTR", "0.3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.0.0.0.8.9.8.0.2.0.a.2.ip6.arpa",
         "noptr.broken.test"),
    ]
    assert "hosting or network provider" in fixes[0]["note"]


def test_spf_fix_merges_into_the_existing_record_keeping_its_all_last(dns):
    (fix,) = fix_of(check(dns, BROKEN["spf: without the relay's include"][0]), "sender_spf")
    assert fix["action"] == "replace"
    assert fix["value"] == "v=spf1 mx a:mail.broken.test include:_spf.example.org ~all"
    assert "3 of 10 DNS look-ups" in fix["note"]


def test_spf_fix_merges_two_records_into_one(dns):
    (fix,) = fix_of(check(dns, BROKEN["spf: two records"][0]), "sender_spf")
    assert fix["value"] == "v=spf1 mx ip4:198.51.100.0/24 include:_spf.example.org -all"
    assert "remove the others" in fix["note"]


def test_spf_fix_puts_the_include_first_when_an_earlier_term_decides(dns):
    (fix,) = fix_of(check(dns, BROKEN["spf: own terms, not the include"][0]), "sender_spf")
    assert fix["value"] == "v=spf1 include:_spf.example.org ip4:81.2.69.0/24 -all"
    assert "comes first" in fix["note"]


def test_spf_merge_over_ten_lookups_is_refused_with_the_reason(dns):
    includes = " ".join(f"include:_spf{i}.full.broken.test" for i in range(10))
    record = _quoted(f"v=spf1 {includes} -all")  # ten look-ups already
    zone = ZONE + "\n$ORIGIN full.broken.test.\n" + f"@ IN TXT {record}\n" + \
        "".join(f'_spf{i} IN TXT "v=spf1 ip4:198.51.100.{i} -all"\n' for i in range(10))
    dns.set_zone(zone)
    report = check(dns, CheckSpec(None, sender_domains=("full.broken.test",)))
    (fix,) = fix_of(report, "sender_spf")
    assert (fix["action"], fix["value"]) == ("none", "")
    assert "more than 10" in fix["note"] and "ip4:/ip6:" in fix["note"]


def test_spf_merge_into_a_record_with_a_syntax_error_says_to_fix_it_first(dns):
    dns.set_zone(ZONE + '\n$ORIGIN typo.broken.test.\n@ IN TXT "v=spf1 ip4:198.51.100 -all"\n')
    (fix,) = fix_of(check(dns, CheckSpec(None, sender_domains=("typo.broken.test",))),
                    "sender_spf")
    assert fix["action"] == "none" and "bad network" in fix["note"]
    assert "fix the published record first" in fix["note"]


def test_dmarc_starter_sends_reports_to_the_contact_and_asks_its_domain_to_agree(dns):
    fixes = fix_of(check(dns, BROKEN["dmarc: missing"][0]), "sender_dmarc")
    assert [(f["type"], f["name"], f["value"]) for f in fixes] == [
        ("TXT", "_dmarc.nodmarc.broken.test", f"v=DMARC1; p=none; rua=mailto:{CONTACT}"),
        ("TXT", "nodmarc.broken.test._report._dmarc.corp.example.net", "v=DMARC1"),
    ]


def test_dkim_fix_names_the_selector_and_says_the_key_is_the_signers(dns):
    (fix,) = fix_of(check(dns, BROKEN["dkim: missing"][0]), "sender_dkim")
    assert (fix["type"], fix["name"]) == ("TXT", "s1._domainkey.nodkim.broken.test")
    assert fix["value"] == "v=DKIM1; k=rsa; p=<public key>"
    assert "cannot know it" in fix["note"]


def test_passing_and_unanswered_checks_carry_no_fix(dns):
    dns.set_zone(ZONE, servfail={"nodkim.broken.test"})
    report = check(dns, CheckSpec("app.example.org", ("81.2.69.10",),
                                  sender_domains=("nodkim.broken.test", "example.org")))
    assert report.checks and all("fix" not in c.evidence for c in report.checks
                                 if c.status in ("pass", "error"))
    dns.set_zone(ZONE, servfail=())


def test_spf_candidates_handle_redirect_and_long_records():
    (end, first) = spf_candidates(["v=spf1 mx redirect=_spf.other.test"], "relay.test", ())
    assert end.record == "v=spf1 mx include:relay.test redirect=_spf.other.test"
    assert first.record == "v=spf1 include:relay.test mx redirect=_spf.other.test"
    (with_all, _first) = spf_candidates(["v=spf1 mx redirect=x.test ?all"], "relay.test", ())
    assert with_all.record == "v=spf1 mx include:relay.test ?all"
    assert ["v=spf1 ip4:192.0.2.7 ip6:2001:db8::7 ~all"] == [
        c.record for c in spf_candidates([], None, ("192.0.2.7", "2001:db8::7"))]
    long = "v=spf1 " + " ".join(f"ip4:198.51.100.{i}" for i in range(20)) + " -all"
    strings = txt_strings(long)
    assert "".join(strings) == long and all(len(s) <= TXT_STRING_LIMIT for s in strings)
    assert len(strings) == 2


def test_long_spf_fix_is_given_as_strings_of_at_most_255():
    record = "v=spf1 " + " ".join(f"ip4:198.51.100.{i}" for i in range(20)) + \
        " include:_spf.example.org -all"
    result = CheckResult("sender_spf", "long.test", "fail", "x", {
        "proposal": {"record": record, "placement": "before all", "notes": [],
                     "replaces": ["v=spf1 -all"], "lookups": 1}})
    (fix,) = fixes_for(result, CONFIG)
    assert fix["strings"] == txt_strings(record) and "2 quoted strings" in fix["note"]


# --- the page, the mail, the API --------------------------------------------------------


@pytest.fixture
def failed_request(db, dns, settings, team, requester, django_capture_on_commit_callbacks):
    """A request sent back by its checks: no PTR for its address, no DMARC for its domain."""
    from requests_app import services
    from tests.factories import RelayRequestFactory

    settings.DNS_NAMESERVERS = [dns.nameserver]
    req = RelayRequestFactory(team=team, created_by=requester, fqdn="noptr.broken.test",
                              ipv4=["81.2.69.30"], ipv6=[], contact_email=CONTACT,
                              sender_domains=["nodmarc.broken.test"], sender_addresses=[],
                              dkim_selector="")
    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=req.pk, action="submit", by=requester)
    req.refresh_from_db()
    assert req.state == "needs_changes"
    return req


def test_the_page_shows_the_records_to_publish(failed_request, client, requester):
    client.force_login(requester)
    html = client.get(f"/requests/{failed_request.pk}/").content.decode()
    section = html[html.index('id="checks"'):]
    assert "What to publish" in section
    assert "30.69.2.81.in-addr.arpa" in section and "noptr.broken.test" in section
    assert f"v=DMARC1; p=none; rua=mailto:{CONTACT}" in section


def test_the_checks_failed_mail_lists_the_records(failed_request, mailoutbox):
    (mail,) = [m for m in mailoutbox if "failed" in m.body]
    assert re.search(r"Add: PTR 30\.69\.2\.81\.in-addr\.arpa\n\s+noptr\.broken\.test", mail.body)
    assert f"Add: TXT _dmarc.nodmarc.broken.test\n    v=DMARC1; p=none; rua=mailto:{CONTACT}" \
        in mail.body


def test_the_api_carries_the_fix_and_the_schema_documents_it(failed_request, client,
                                                             requester):
    client.force_login(requester)
    data = client.get(f"/api/requests/{failed_request.pk}/").json()
    reverse = next(c for c in data["checks"] if c["id"] == "reverse")
    assert reverse["evidence"]["fix"][0]["name"] == "30.69.2.81.in-addr.arpa"
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    evidence = schema["components"]["schemas"]["CheckResult"]["properties"]["evidence"]
    assert set(evidence["properties"]["fix"]["items"]["required"]) == {
        "action", "type", "name", "value", "note"}
