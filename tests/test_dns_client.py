"""The callback-driven DNS client against real test servers on loopback.

The check engine trusts :class:`DnsClient` to keep dnspython's rules (next server on a
timeout, every server's SERVFAIL ends the look-up, TCP after a truncated reply, the
lifetime bounds everything) while it drives look-ups by callbacks instead of tasks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from requests_app.dns import DnsClient
from requests_app.dns import DnsStatus
from requests_app.dns import TransientDnsError
from requests_app.dns import _decode
from requests_app.dns import make_resolver
from tests.support.dnsserver import DnsTestServer

ZONE = """
$ORIGIN example.test.
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 86400 300
host    IN A    193.0.10.1
alias   IN CNAME host
""" + "\n".join(f'big.example.test. IN TXT "{i}{"x" * 200}"' for i in range(10))


def run(coro):
    return asyncio.run(coro)


async def ask(nameservers: list[str], name: str, rdtype: str = "A", *, timeout: float = 2.0,
              lifetime: float = 2.0, **client_args) -> object:
    resolver = make_resolver(nameservers, lifetime, cache=False)
    resolver.timeout = timeout
    async with DnsClient(resolver, **client_args) as client:
        return await client.lookup(name, rdtype)


def test_an_answer_follows_cnames_and_decodes_the_records():
    with DnsTestServer(ZONE) as server:
        answer = run(ask([server.nameserver], "Alias.Example.Test."))
    assert answer.status is DnsStatus.FOUND
    assert answer.values == ("193.0.10.1",)
    assert answer.chain == ("alias.example.test", "host.example.test")


def test_nxdomain_and_nodata_are_answers():
    with DnsTestServer(ZONE) as server:
        missing = run(ask([server.nameserver], "nope.example.test"))
        nodata = run(ask([server.nameserver], "host.example.test", "AAAA"))
    assert missing.status is DnsStatus.NXDOMAIN and missing.values == ()
    assert nodata.status is DnsStatus.NODATA


def test_a_truncated_reply_is_asked_again_over_tcp():
    with DnsTestServer(ZONE) as server:
        answer = run(ask([server.nameserver], "big.example.test", "TXT"))
    assert len(answer.values) == 10
    assert all(len(v) == 201 for v in answer.values)


def test_a_silent_server_is_skipped_for_the_next_one_after_the_attempt_timeout():
    # given: the first server drops the name, the second answers it
    with DnsTestServer(ZONE, drop={"host.example.test"}) as mute, DnsTestServer(ZONE) as ok:
        started = time.monotonic()
        # when
        answer = run(ask([mute.nameserver, ok.nameserver], "host.example.test", timeout=0.3))
        elapsed = time.monotonic() - started
    # then: one attempt's timeout, then the answer
    assert answer.values == ("193.0.10.1",)
    assert 0.3 <= elapsed < 1.0


def test_servfail_from_every_server_ends_the_look_up_at_once():
    with DnsTestServer(ZONE, servfail={"host.example.test"}) as a, \
            DnsTestServer(ZONE, servfail={"host.example.test"}) as b:
        started = time.monotonic()
        with pytest.raises(TransientDnsError, match="server failure") as failure:
            run(ask([a.nameserver, b.nameserver], "host.example.test", lifetime=5.0))
        elapsed = time.monotonic() - started
    assert elapsed < 1.0  # not retried until the lifetime is spent
    assert str(failure.value).count("SERVFAIL") == 2


def test_no_answer_is_an_error_when_the_lifetime_ends():
    with DnsTestServer(ZONE, drop={"host.example.test"}) as mute:
        started = time.monotonic()
        with pytest.raises(TransientDnsError, match="no answer in time"):
            run(ask([mute.nameserver], "host.example.test", timeout=0.2, lifetime=0.7))
        elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 1.2  # attempts repeat within the lifetime, then stop


def test_a_closed_port_is_an_error_not_a_hang():
    # given: a port where nothing listens (the server is stopped)
    with DnsTestServer(ZONE) as gone:
        nameserver = gone.nameserver
    started = time.monotonic()
    with pytest.raises(TransientDnsError):
        run(ask([nameserver], "host.example.test", timeout=0.2, lifetime=0.5))
    assert time.monotonic() - started < 1.0


def test_queries_beyond_the_bound_wait_for_a_free_slot():
    async def scenario(nameserver: str) -> tuple[int, int, list[object]]:
        resolver = make_resolver([nameserver], 5.0, cache=False)
        async with DnsClient(resolver, max_in_flight=4) as client:
            futures = [client.query(f"n{i}.example.test", "A") for i in range(20)]
            while client._in_flight == 0:  # the socket opens first
                await asyncio.sleep(0.001)
            in_flight, waiting = client._in_flight, len(client._waiting)
            return in_flight, waiting, await asyncio.gather(*futures)

    with DnsTestServer(ZONE, latency_ms=50) as slow:
        in_flight, waiting, answers = run(scenario(slow.nameserver))
    assert (in_flight, waiting) == (4, 16)
    assert [a.status for a in answers] == [DnsStatus.NXDOMAIN] * 20


def test_a_cancelled_query_leaves_the_others_and_the_client_working():
    async def scenario(nameserver: str) -> tuple[bool, object]:
        resolver = make_resolver([nameserver], 2.0, cache=False)
        async with DnsClient(resolver) as client:
            first = client.query("host.example.test", "A")
            first.cancel()
            second = await client.query("host.example.test", "A")
            await asyncio.sleep(0.05)  # the first reply arrives for a cancelled query
            return first.cancelled(), second

    with DnsTestServer(ZONE, latency_ms=20) as server:
        cancelled, answer = run(scenario(server.nameserver))
    assert cancelled
    assert answer.values == ("193.0.10.1",)


def test_closing_the_client_cancels_what_is_still_waiting():
    async def scenario(nameserver: str) -> asyncio.Future:
        resolver = make_resolver([nameserver], 5.0, cache=False)
        client = DnsClient(resolver)
        pending = client.query("host.example.test", "A")
        await asyncio.sleep(0.05)
        client.close()
        return pending

    with DnsTestServer(ZONE, drop={"host.example.test"}) as mute:
        pending = run(scenario(mute.nameserver))
    assert pending.cancelled()


def test_answers_are_cached_within_their_ttl():
    async def scenario(nameserver: str, server: DnsTestServer) -> tuple[object, object]:
        resolver = make_resolver([nameserver], 2.0)
        async with DnsClient(resolver) as client:
            first = await client.lookup("host.example.test", "A")
            server.set_zone(ZONE.replace("193.0.10.1", "193.0.10.99"))
            return first, await client.lookup("host.example.test", "A")

    with DnsTestServer(ZONE) as server:
        first, second = run(scenario(server.nameserver, server))
    assert first.values == second.values == ("193.0.10.1",)


@settings(max_examples=500, deadline=None)
@given(st.ip_addresses())
@example(ipaddress.IPv6Address("::ffff:193.0.10.1"))  # where C and Python texts differ
@example(ipaddress.IPv6Address("::193.0.10.1"))
@example(ipaddress.IPv6Address("2001:db8:0:1::1"))
def test_addresses_are_decoded_in_pythons_canonical_text(ip):
    # the C decoder must write what the requests store (str of ipaddress), or a stored
    # address would not match its own DNS answer
    packed = ip.packed
    rtype = 1 if ip.version == 4 else 28
    assert _decode(packed, rtype, 0, len(packed)) == str(ip)
