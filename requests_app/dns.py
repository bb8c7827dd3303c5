"""Typed DNS look-ups over dnspython's asyncio resolver (no Django imports).

Why a wrapper: dnspython signals "the name has no such record" with exceptions
(``NXDOMAIN``, ``NoAnswer``) and "we could not find out" with other exceptions (``Timeout``,
``NoNameservers``). The checks must never confuse the two: a missing record is a
definitive answer (the request fails), an unanswered query is not (the check is an
``error`` and the task retries). So look-ups here *return* definitive answers as
(immutable) named tuples and *raise* only :class:`TransientDnsError`.

:class:`DnsClient` is the fast path for many concurrent look-ups (the check engine, the
benchmark): dnspython's asyncio resolver opens a socket and builds full message objects
per query, a CPU cost that capped a batch (docs/dns-checks.md); the client keeps one UDP
socket per server, matches replies by ID and question, decodes only the record types
the checks read (falling back to dnspython for TCP and any other type), and runs each
look-up from socket callbacks rather than as a task.

The resolver is built once from settings (``DNS_NAMESERVERS``, ``DNS_LIFETIME_SECONDS``)
by the caller and passed in, so tests point it at a real server on loopback.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import struct
import weakref
from collections import OrderedDict
from collections import deque
from collections.abc import Coroutine
from collections.abc import Sequence
from random import getrandbits
from socket import AF_INET
from socket import AF_INET6
from socket import inet_ntop
from typing import Any
from typing import NamedTuple

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

__all__ = [
    "DnsAnswer",
    "DnsClient",
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


class DnsAnswer(NamedTuple):
    """One definitive answer, with what an approver needs to judge it without ``dig``.

    ``chain`` lists the names walked through CNAMEs, starting with the queried name and
    ending with ``canonical_name``; ``values`` are the records in presentation form (TXT
    strings of one record are concatenated, as SPF, DMARC and DKIM require).

    A named tuple (immutable, like the frozen dataclass it was) because a batch makes
    one per look-up and a named tuple is the cheaper to build (docs/architecture.md,
    "Measured choices").
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
    resolver.timeout = min(lifetime, 2.0)  # dnspython's default per attempt
    resolver.retry_servfail = False  # a SERVFAIL is reported as transient, not hammered
    if cache:
        resolver.cache = dns.resolver.LRUCache(_CACHE_SIZE)
    return resolver


def to_text_name(name: dns.name.Name | str) -> str:
    """Lower-case text without the trailing dot, the form every comparison here uses."""
    text = name.to_text() if isinstance(name, dns.name.Name) else name
    return text.rstrip(".").lower()


@functools.lru_cache(maxsize=4096)
def reverse_name(address: str) -> str:
    """``in-addr.arpa``/``ip6.arpa`` name of an address, normalised.

    Computed here rather than with ``dns.reversename``, which builds dnspython names and
    is several times slower; memoised because a run asks it twice per address (asked
    ahead, then checked).
    """
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return ".".join(reversed(str(ip).split("."))) + ".in-addr.arpa"
    return ".".join(reversed(ip.exploded.replace(":", ""))) + ".ip6.arpa"


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


# --- the fast path ----------------------------------------------------------------------

_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28}
_NAME_TYPES = {2, 5, 12}
_SIMPLE = "abcdefghijklmnopqrstuvwxyz0123456789-_"
_SIMPLE_BYTES = frozenset(_SIMPLE.encode() + _SIMPLE.upper().encode())


class _Malformed(Exception):
    pass


def _wire_name(name: str) -> bytes:
    labels = [label for label in name.encode("ascii").split(b".") if label]
    if any(len(label) > 63 for label in labels):
        raise ValueError(f"label too long in {name!r}")
    return b"".join([bytes((len(label),)) + label for label in labels]) + b"\0"


def _read_name(buf: bytes, pos: int) -> tuple[str, int]:
    """Decode a (possibly compressed) name; returns it normalised and the next offset."""
    labels: list[bytes] = []
    end = -1
    for _ in range(128):  # bounds compression loops and absurd names
        length = buf[pos]
        if length >= 0xC0:
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | buf[pos + 1]
            continue
        if length > 63:
            raise _Malformed("bad label type")
        if length == 0:
            if not labels:
                return "", (end if end >= 0 else pos + 1)
            if all(_SIMPLE_BYTES.issuperset(lab) for lab in labels):
                text = b".".join(labels).decode("ascii").lower()
            else:  # odd bytes: let dnspython escape them exactly as it would
                text = to_text_name(dns.name.Name([*labels, b""]))
            return text, (end if end >= 0 else pos + 1)
        labels.append(buf[pos + 1 : pos + 1 + length])
        if len(labels[-1]) != length:
            raise _Malformed("truncated label")
        pos += 1 + length
    raise _Malformed("name too long or compression loop")


def _decode(buf: bytes, rtype: int, start: int, end: int) -> str:
    if rtype == 1 and end - start == 4:
        return inet_ntop(AF_INET, buf[start:end])
    if rtype == 28 and end - start == 16:
        text = inet_ntop(AF_INET6, buf[start:end])
        # the C text is Python's canonical form but for embedded IPv4 ("::ffff:1.2.3.4")
        return text if "." not in text else str(ipaddress.IPv6Address(buf[start:end]))
    if rtype in _NAME_TYPES:
        return _read_name(buf, start)[0]
    if rtype == 15:
        return f"{struct.unpack_from('!H', buf, start)[0]} {_read_name(buf, start + 2)[0]}"
    if rtype == 16:
        parts, pos = [], start
        while pos < end:
            size = buf[pos]
            parts.append(buf[pos + 1 : pos + 1 + size])
            pos += 1 + size
        if pos != end:
            raise _Malformed("bad TXT")
        return b"".join(parts).decode("utf-8", "replace")
    raise _Malformed(f"bad rdata for type {rtype}")


def _parse(buf: bytes, qname: str, rtype: int, question_size: int = 0
           ) -> tuple[int, tuple[str, ...], tuple[str, ...], int]:
    """(rcode, chain, values, min TTL) of a reply, following CNAMEs in the answer section.

    ``question_size``: length of the one question already matched against ours (UDP).
    """
    try:
        _id, flags, qdcount, ancount = struct.unpack_from("!4H", buf)
        pos = 12
        if question_size and qdcount == 1:
            pos += question_size
        else:
            for _ in range(qdcount):
                pos = _read_name(buf, pos)[1] + 4
        records: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        for _ in range(ancount):
            if question_size and buf[pos] == 0xC0 and buf[pos + 1] == 12:
                owner, pos = qname, pos + 2  # a pointer to our own question's name
            else:
                owner, pos = _read_name(buf, pos)
            rr_type, rr_class, ttl, size = struct.unpack_from("!HHIH", buf, pos)
            pos += 10
            if pos + size > len(buf):
                raise _Malformed("truncated record")
            if rr_class == 1:
                records.setdefault((owner, rr_type), []).append((pos, pos + size, ttl))
            pos += size
        chain, ttls, values = [qname], [], ()
        for _ in range(32):
            found = records.get((chain[-1], rtype))
            if found:
                values = tuple(dict.fromkeys(_decode(buf, rtype, a, b) for a, b, _t in found))
                ttls += [t for _a, _b, t in found]
                break
            cname = records.get((chain[-1], 5))
            if not cname or rtype == 5:
                break
            chain.append(_read_name(buf, cname[0][0])[0])
            ttls.append(cname[0][2])
        return flags & 0xF, tuple(chain), values, min(ttls, default=0)
    except (IndexError, struct.error, ValueError) as exc:
        raise _Malformed(str(exc)) from exc


class _Udp(asyncio.DatagramProtocol):
    """One connected socket; a reply goes to the query with its ID *and* question."""

    def __init__(self, client: DnsClient) -> None:
        self.client = client
        self.pending: dict[int, _Query] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        query = self.pending.get(int.from_bytes(data[:2], "big"))
        if query is None or len(data) < 12 or not data[2] & 0x80:
            return
        if data[12 : 12 + len(query.question)].lower() == query.question:
            del self.pending[query.qid]
            self.client._answered(query, data)

    def error_received(self, exc: Exception) -> None:
        pass  # e.g. ICMP port unreachable: the query times out and goes to the next server

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _Query:
    """One look-up: what dnspython's retry loop keeps in its locals, kept for callbacks."""

    __slots__ = ("qname", "rdtype", "rtype", "question", "future", "deadline", "next_server",
                 "timed_out", "failures", "qid", "proto", "server", "timer")

    def __init__(self, qname: str, rdtype: str, rtype: int, question: bytes,
                 future: asyncio.Future[DnsAnswer], deadline: float):
        self.qname, self.rdtype, self.rtype, self.question = qname, rdtype, rtype, question
        self.future, self.deadline = future, deadline
        self.next_server = 0
        self.timed_out = False
        self.failures: list[str] = []
        self.qid = 0
        self.proto: _Udp | None = None
        self.server: tuple[str, int] = ("", 0)
        self.timer: asyncio.TimerHandle | None = None

    def where(self) -> str:
        return f"{self.server[0]}:{self.server[1]}"


class _TtlCache:
    """Small LRU of definitive answers, honouring TTLs; lives as long as its resolver."""

    def __init__(self, size: int):
        self.size = size
        self.data: OrderedDict[tuple[str, str], tuple[float, DnsAnswer]] = OrderedDict()

    def get(self, key: tuple[str, str], now: float) -> DnsAnswer | None:
        entry = self.data.get(key)
        if entry is None or entry[0] <= now:
            return None
        self.data.move_to_end(key)
        return entry[1]

    def put(self, key: tuple[str, str], answer: DnsAnswer, ttl: int, now: float) -> None:
        if ttl > 0:
            self.data[key] = (now + ttl, answer)
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


_CACHES: weakref.WeakKeyDictionary[dns.asyncresolver.Resolver, _TtlCache] = (
    weakref.WeakKeyDictionary())


class DnsClient:
    """Many concurrent look-ups through one resolver's servers; use ``async with``.

    Same contract as :func:`lookup` (definitive answers returned, the rest raises
    :class:`TransientDnsError`), with dnspython's retry rules: each server gets
    ``resolver.timeout`` per attempt, attempts repeat until the lifetime is spent, a
    SERVFAIL/REFUSED from every server ends the look-up at once.

    Why callbacks: :meth:`query` returns a future that the socket's reply callback
    completes, with no task or coroutine per look-up. Once answers are quick a batch is
    CPU-bound, and a task per look-up (created, scheduled, woken, finished) was a
    measurable share of the engine's instructions (docs/dns-checks.md).
    """

    def __init__(self, resolver: dns.asyncresolver.Resolver, *, max_in_flight: int = 100):
        self.resolver = resolver
        # Bursts of thousands of queries overflow socket buffers (ours and the server's)
        # and turn into timeouts; a bound keeps a batch fast and polite to the resolver.
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._waiting: deque[_Query] = deque()
        self.servers: list[tuple[str, int]] | None = []
        for ns in resolver.nameservers:
            if isinstance(ns, str):
                self.servers.append((ns, resolver.port))
            elif isinstance(ns, dns.nameserver.Do53Nameserver):
                self.servers.append((ns.address, ns.port))
            else:  # DoH/DoT: leave it all to dnspython
                self.servers = None
                break
        self.cache = None
        if resolver.cache is not None:
            self.cache = _CACHES.setdefault(resolver, _TtlCache(_CACHE_SIZE))
        self._sockets: dict[tuple[str, int], _Udp] = {}
        self._opening: dict[tuple[str, int], list[_Query]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # socket openings and TCP retries

    async def __aenter__(self) -> DnsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets; look-ups still waiting are cancelled."""
        for task in self._tasks:
            task.cancel()
        waiting = [*self._waiting, *(q for qs in self._opening.values() for q in qs)]
        for proto in self._sockets.values():
            waiting += proto.pending.values()
            proto.pending.clear()
            if proto.transport is not None:
                proto.transport.close()
        for query in waiting:
            if query.timer is not None:
                query.timer.cancel()
            query.future.cancel()
        self._waiting.clear()
        self._opening.clear()
        self._sockets.clear()
        self._in_flight = 0

    async def lookup(self, name: str, rdtype: str, *, lifetime: float | None = None
                     ) -> DnsAnswer:
        """Query ``name``/``rdtype`` (A, AAAA, CNAME, PTR, MX, TXT, NS; others via dnspython)."""
        return await self.query(name, rdtype, lifetime=lifetime)

    def query(self, name: str, rdtype: str, *, lifetime: float | None = None
              ) -> asyncio.Future[DnsAnswer]:
        """Start a look-up now; the future ends as :meth:`lookup` would return or raise.

        Cancelling the future abandons the look-up (its packet may still be answered).
        """
        qname = to_text_name(name)
        rtype = _TYPES.get(rdtype)
        if self.servers is None or rtype is None or not self.servers:
            return asyncio.ensure_future(lookup(self.resolver, qname, rdtype,
                                                lifetime=lifetime))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DnsAnswer] = loop.create_future()
        now = loop.time()
        if self.cache is not None and (hit := self.cache.get((qname, rdtype), now)):
            future.set_result(hit)
            return future
        try:
            name_wire = _wire_name(qname)
        except (ValueError, UnicodeError) as exc:
            future.set_exception(ValueError(f"cannot query {name!r}: {exc}"))
            return future
        deadline = now + (lifetime if lifetime is not None else self.resolver.lifetime)
        self._attempt(_Query(qname, rdtype, rtype,
                             name_wire.lower() + struct.pack("!HH", rtype, 1), future,
                             deadline))
        return future

    # The steps of a look-up, each run by a callback: attempt -> send -> answered or
    # timed out -> (next attempt | finish).

    def _attempt(self, query: _Query) -> None:
        """Ask the next server; after a round, start another only if one timed out."""
        if query.future.done():  # cancelled by its caller
            return
        if query.next_server == len(self.servers or ()):
            if not query.timed_out:  # every server refused or failed: retrying won't help now
                self._fail(query, f"server failure ({'; '.join(query.failures)})")
                return
            query.next_server, query.timed_out = 0, False
        if self._in_flight >= self.max_in_flight:
            self._waiting.append(query)
        else:
            self._send(query)

    def _send(self, query: _Query) -> None:
        loop = asyncio.get_running_loop()
        remaining = query.deadline - loop.time()
        if remaining <= 0:
            self._fail(query, f"no answer in time ({'; '.join(query.failures) or 'timeout'})")
            return
        assert self.servers is not None
        server = self.servers[query.next_server]
        proto = self._sockets.get(server)
        if proto is None or proto.transport is None:
            self._open(server, query)
            return
        query.next_server += 1
        query.server, query.proto = server, proto
        qid = getrandbits(16)  # not a secret: spoofing is out of scope
        while qid in proto.pending:
            qid = getrandbits(16)
        query.qid = qid
        try:
            proto.transport.sendto(struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + query.question)
        except OSError as exc:
            self._next(query, f"{type(exc).__name__}: {exc}")
            return
        proto.pending[qid] = query
        self._in_flight += 1
        query.timer = loop.call_later(min(self.resolver.timeout, remaining),
                                      self._timed_out, query)

    def _release(self) -> None:
        """One attempt ended: send what waits for a free slot."""
        self._in_flight -= 1
        waiting = self._waiting
        while waiting and self._in_flight < self.max_in_flight:
            query = waiting.popleft()
            if not query.future.done():
                self._send(query)

    def _timed_out(self, query: _Query) -> None:
        assert query.proto is not None
        query.proto.pending.pop(query.qid, None)
        self._release()
        query.timed_out = True
        self._next(query, "timed out")

    def _answered(self, query: _Query, reply: bytes) -> None:
        assert query.timer is not None
        query.timer.cancel()
        self._release()
        if query.future.done():
            return
        if reply[2] & 0x02:  # truncated: ask again over TCP, as resolvers do
            self._spawn(self._tcp(query))
            return
        self._finish(query, reply, len(query.question))

    def _finish(self, query: _Query, reply: bytes, question_size: int) -> None:
        try:
            rcode, chain, values, ttl = _parse(reply, query.qname, query.rtype, question_size)
        except _Malformed as exc:
            self._next(query, f"{type(exc).__name__}: {exc}")
            return
        if rcode not in (0, 3):
            self._next(query, f"answered {dns.rcode.to_text(rcode)}")  # type: ignore[arg-type]
            return
        status = (DnsStatus.NXDOMAIN if rcode == 3 else
                  DnsStatus.FOUND if values else DnsStatus.NODATA)
        answer = DnsAnswer(query.qname, query.rdtype, status, values, chain)
        if self.cache is not None and values:
            self.cache.put((query.qname, query.rdtype), answer, ttl,
                           asyncio.get_running_loop().time())
        query.future.set_result(answer)

    def _next(self, query: _Query, why: str) -> None:
        """This attempt failed (``why`` is kept for the error): go on to the next one."""
        query.failures.append(f"{query.where()} {why}")
        self._attempt(query)

    def _fail(self, query: _Query, why: str) -> None:
        query.future.set_exception(TransientDnsError(f"{query.qname} {query.rdtype}: {why}"))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)

    async def _tcp(self, query: _Query) -> None:
        loop = asyncio.get_running_loop()
        server = query.server
        try:
            reply = (await dns.asyncquery.tcp(
                dns.message.make_query(query.qname + ".", query.rdtype), server[0],
                timeout=max(query.deadline - loop.time(), 0.01), port=server[1],
            )).to_wire()
        except (TimeoutError, dns.exception.Timeout):
            query.timed_out = True
            self._next(query, "timed out")
            return
        except (OSError, dns.exception.DNSException) as exc:
            self._next(query, f"{type(exc).__name__}: {exc}")
            return
        if not query.future.done():
            self._finish(query, reply, 0)

    def _open(self, server: tuple[str, int], query: _Query) -> None:
        """Queue ``query`` behind the opening of ``server``'s socket (opened once)."""
        waiting = self._opening.get(server)
        if waiting is not None:
            waiting.append(query)
            return
        self._opening[server] = [query]
        self._spawn(self._connect(server))

    async def _connect(self, server: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            _transport, proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self), remote_addr=server)
        except OSError as exc:
            for query in self._opening.pop(server, []):
                query.server = server
                query.next_server += 1
                self._next(query, f"{type(exc).__name__}: {exc}")
            return
        self._sockets[server] = proto
        for query in self._opening.pop(server, []):
            self._attempt(query)
