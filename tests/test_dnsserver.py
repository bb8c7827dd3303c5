"""The loopback DNS test server answers like a real authoritative server.

Checked with dnspython's own stub resolver and raw queries, because every DNS check test
trusts this server: if it answered wrongly, those tests would prove nothing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.nameserver
import dns.query
import dns.rcode
import dns.resolver
import dns.reversename
import pytest

from tests.support.dnsserver import DnsTestServer

ZONE = """
$ORIGIN example.test.
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 86400 300
@       IN NS  ns1
ns1     IN A   127.0.0.1
www     IN CNAME alias
alias   IN CNAME web
web     IN A    198.51.100.7
web     IN AAAA 2001:db8::7
@       IN MX 10 mail
mail    IN A    198.51.100.25
txt     IN TXT "one" "two"
sel._domainkey IN TXT "v=DKIM1; p=abc"
7.100.51.198.in-addr.arpa. IN PTR web.example.test.
"""


def _resolver(server: DnsTestServer) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", server.port)]
    resolver.lifetime = 2.0
    return resolver


@pytest.fixture(scope="module")
def server():
    with DnsTestServer(ZONE, servfail={"broken.example.test"},
                       drop={"silent.example.test"}) as srv:
        yield srv


def test_cname_chain_is_in_the_answer(server):
    # when
    answer = _resolver(server).resolve("www.example.test", "A")
    # then
    assert [rrset.rdtype for rrset in answer.response.answer] == [5, 5, 1]
    assert answer.canonical_name.to_text() == "web.example.test."
    assert [r.to_text() for r in answer] == ["198.51.100.7"]


def test_names_are_case_insensitive_and_question_case_is_echoed(server):
    # given
    query = dns.message.make_query("WeB.ExAmPlE.tEsT", "AAAA")
    # when
    reply = dns.query.udp(query, "127.0.0.1", port=server.port, timeout=2)
    # then
    assert reply.id == query.id
    assert reply.question[0].name.to_text() == "WeB.ExAmPlE.tEsT."
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.RD
    assert [r.to_text() for r in reply.answer[0]] == ["2001:db8::7"]


def test_nxdomain_and_nodata_carry_the_soa():
    with DnsTestServer(ZONE) as srv:
        # when
        nx = dns.query.udp(dns.message.make_query("nope.example.test", "A"), "127.0.0.1",
                           port=srv.port, timeout=2)
        nodata = dns.query.udp(dns.message.make_query("web.example.test", "MX"), "127.0.0.1",
                               port=srv.port, timeout=2)
        ent = dns.query.udp(dns.message.make_query("_domainkey.example.test", "TXT"),
                            "127.0.0.1", port=srv.port, timeout=2)
    # then
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == 6
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].name.to_text() == "example.test."
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer  # empty non-terminal


def test_names_outside_any_zone_get_an_answer_from_the_synthetic_root(server):
    with pytest.raises(dns.resolver.NXDOMAIN):
        _resolver(server).resolve("elsewhere.invalid", "A")


def test_txt_mx_ptr(server):
    # given
    resolver = _resolver(server)
    # when
    txt = resolver.resolve("txt.example.test", "TXT")
    mx = resolver.resolve("example.test", "MX")
    ptr = resolver.resolve(dns.reversename.from_address("198.51.100.7"), "PTR")
    # then
    assert [r.strings for r in txt] == [(b"one", b"two")]
    assert [r.to_text() for r in mx] == ["10 mail.example.test."]
    assert [r.to_text() for r in ptr] == ["web.example.test."]


def test_large_answers_are_truncated_on_udp_and_complete_on_tcp():
    # given 10 distinct 200-byte strings: about 2 kB, far over 512 bytes
    big = "\n".join(f'big.example.test. IN TXT "{i}{"x" * 200}"' for i in range(10))
    with DnsTestServer(ZONE + big) as srv:
        query = dns.message.make_query("big.example.test", "TXT")
        # when
        udp = dns.query.udp(query, "127.0.0.1", port=srv.port, timeout=2)
        answer = _resolver(srv).resolve("big.example.test", "TXT")
    # then
    assert udp.flags & dns.flags.TC and not udp.answer
    assert len(answer) == 10


def test_servfail_and_dropped_names(server):
    # given
    resolver = _resolver(server)
    resolver.lifetime = 0.5
    # when / then
    with pytest.raises(dns.resolver.NoNameservers):
        resolver.resolve("broken.example.test", "A")
    started = time.monotonic()
    with pytest.raises(dns.exception.Timeout):
        resolver.resolve("silent.example.test", "A")
    assert time.monotonic() - started < 1.5


def test_set_zone_reloads():
    with DnsTestServer(ZONE) as srv:
        resolver = _resolver(srv)
        assert [r.to_text() for r in resolver.resolve("web.example.test", "A")] == [
            "198.51.100.7"]
        # when
        srv.set_zone(ZONE.replace("198.51.100.7", "198.51.100.8"), drop={"web.example.test"})
        srv.set_zone(ZONE.replace("198.51.100.7", "198.51.100.8"), drop=())
        # then
        assert [r.to_text() for r in resolver.resolve("web.example.test", "A")] == [
            "198.51.100.8"]


def test_runs_as_a_subprocess(tmp_path: Path):
    # given
    zone = tmp_path / "zone"
    zone.write_text(ZONE)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.dnsserver", "--zone", str(zone)],
        cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        # when
        line = proc.stdout.readline().split()
        assert line[0] == "READY"
        host, port = line[1].split(":")
        reply = dns.query.udp(dns.message.make_query("web.example.test", "A"), host,
                              port=int(port), timeout=2)
        # then
        assert [r.to_text() for r in reply.answer[0]] == ["198.51.100.7"]
    finally:
        proc.terminate()
        proc.wait(5)
