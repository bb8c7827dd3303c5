"""Typed DNS look-ups over dnspython's asyncio resolver (no Django imports).

Why a wrapper: dnspython signals "the name has no such record" with exceptions
(``NXDOMAIN``, ``NoAnswer``) and "we could not find out" with other exceptions (``Timeout``,
``NoNameservers``). The checks must never confuse the two: a missing record is a
definitive answer (the request fails), an unanswered query is not (the check is an
``error`` and the task retries). So look-ups here *return* definitive answers as frozen
dataclasses and *raise* only :class:`TransientDnsError`.

The resolver is built once from settings (``DNS_NAMESERVERS``, ``DNS_LIFETIME_SECONDS``)
by the caller and passed in, so tests point it at a real server on loopback.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

__all__ = [
    "DnsAnswer",
    "DnsStatus",
    "TransientDnsError",
    "lookup",
    "make_resolver",
    "parse_nameserver",
    "reverse_name",
    "to_text_name",
]

# Small and bounded: enough to share the relay's SPF include, organisational DMARC
# records and CNAME targets across a batch of rechecks without holding a whole zone.
_CACHE_SIZE = 10_000


class TransientDnsError(Exception):
    """DNS could not answer (timeout, SERVFAIL, no usable server): retry, never pass/fail."""


class DnsStatus(enum.StrEnum):
    """Definitive outcomes of a look-up."""

    FOUND = "found"
    NXDOMAIN = "nxdomain"  # the name does not exist
    NODATA = "nodata"  # the name exists, but has no record of this type


@dataclass(frozen=True)
class DnsAnswer:
    """One definitive answer, with what an approver needs to judge it without ``dig``.

    ``chain`` lists the names walked through CNAMEs, starting with the queried name and
    ending with ``canonical_name``; ``values`` are the records in presentation form (TXT
    strings of one record are concatenated, as SPF, DMARC and DKIM require).
    """

    name: str
    rdtype: str
    status: DnsStatus
    values: tuple[str, ...] = ()
    chain: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return self.status is DnsStatus.FOUND

    @property
    def canonical_name(self) -> str:
        return self.chain[-1] if self.chain else self.name

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "type": self.rdtype,
            "status": str(self.status),
            "values": list(self.values),
            "chain": list(self.chain),
        }


def parse_nameserver(text: str) -> tuple[str, int]:
    """Split ``HOST``, ``HOST:PORT``, ``V6`` or ``[V6]:PORT`` into an address and a port.

    Only literal addresses: resolving a nameserver's name would need a resolver first.
    """
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad nameserver {text!r}: expected [IPv6]:PORT")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = _port(rest, text)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(f"bad nameserver {text!r}: not an IP address") from None


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad nameserver {whole!r}: bad port")
    return int(text)


def make_resolver(nameservers: Sequence[str], lifetime: float, *,
                  cache: bool = True) -> dns.asyncresolver.Resolver:
    """A resolver for ``nameservers`` (``HOST[:PORT]``), or the system's when empty.

    Every query is bounded by ``lifetime`` seconds. The per-attempt timeout is shorter so
    a lost UDP packet is retried within the same lifetime. The cache honours TTLs,
    including negative answers; pass ``cache=False`` when a fresh answer matters more.
    """
    if lifetime <= 0:
        raise ValueError("lifetime must be positive")
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(*parse_nameserver(ns)) for ns in nameservers
        ]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = lifetime
    resolver.timeout = min(lifetime, max(lifetime / 2, 1.0))
    resolver.retry_servfail = False  # a SERVFAIL is reported as transient, not hammered
    if cache:
        resolver.cache = dns.resolver.LRUCache(_CACHE_SIZE)
    return resolver


def to_text_name(name: dns.name.Name | str) -> str:
    """Lower-case text without the trailing dot, the form every comparison here uses."""
    text = name.to_text() if isinstance(name, dns.name.Name) else name
    return text.rstrip(".").lower()


def reverse_name(address: str) -> str:
    """``in-addr.arpa``/``ip6.arpa`` name of an address, normalised."""
    return to_text_name(dns.reversename.from_address(address))


def _rdata_text(rdtype: int, rdata: object) -> str:
    if rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
    if rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        return to_text_name(rdata.target)  # type: ignore[attr-defined]
    if rdtype == dns.rdatatype.MX:
        return f"{rdata.preference} {to_text_name(rdata.exchange)}"  # type: ignore[attr-defined]
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(ipaddress.ip_address(rdata.address))  # type: ignore[attr-defined]
    return rdata.to_text()  # type: ignore[attr-defined]


def _chain(response: dns.message.Message | None, qname: str) -> tuple[str, ...]:
    """Names walked through the CNAMEs of a response, from the query name on."""
    chain = [qname]
    if response is None:
        return tuple(chain)
    try:
        cnames = response.resolve_chaining().cnames
    except Exception:  # a malformed chain: report just the name we asked for
        return tuple(chain)
    chain += [to_text_name(rrset[0].target) for rrset in cnames]
    return tuple(chain)


async def lookup(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str, *,
                 lifetime: float | None = None) -> DnsAnswer:
    """Query ``name``/``rdtype``; NXDOMAIN and NODATA are answers, the rest raises.

    ``name`` must already be normalised (see ``checks.normalise_fqdn``); it is treated as
    absolute, never completed with a search domain.
    """
    qname = to_text_name(name)
    rdtype_value = dns.rdatatype.from_text(rdtype)
    try:
        answer = await resolver.resolve(qname + ".", rdtype_value, raise_on_no_answer=False,
                                        lifetime=lifetime, search=False)
    except dns.resolver.NXDOMAIN as exc:
        response = exc.responses().get(dns.name.from_text(qname))
        return DnsAnswer(qname, rdtype, DnsStatus.NXDOMAIN, (), _chain(response, qname))
    except dns.exception.Timeout as exc:
        raise TransientDnsError(f"{qname} {rdtype}: no answer in time ({exc})") from exc
    except dns.resolver.NoNameservers as exc:
        raise TransientDnsError(f"{qname} {rdtype}: server failure ({exc})") from exc
    except (dns.resolver.YXDOMAIN, dns.exception.DNSException, OSError) as exc:
        raise TransientDnsError(f"{qname} {rdtype}: {exc}") from exc
    chain = _chain(answer.response, qname)
    if answer.rrset is None:
        return DnsAnswer(qname, rdtype, DnsStatus.NODATA, (), chain)
    values = tuple(_rdata_text(rdtype_value, rd) for rd in answer.rrset)
    return DnsAnswer(qname, rdtype, DnsStatus.FOUND, values, chain)
