"""A small, real authoritative DNS server on loopback, for tests and the benchmark.

Why not mock the resolver: the checks depend on what real servers send (CNAME chains in the
answer section, NXDOMAIN vs NODATA with an SOA in authority, truncation and a TCP retry for
large TXT sets, lost packets). This server speaks the wire protocol, so dnspython exercises
the same code paths it uses in production.

Why it precomputes: the benchmark sends ~20k queries. Answers are built once per
(lower-cased question, qtype) with dnslib; per packet we only splice in the query's ID, RD
bit and the question exactly as sent (0x20 mixed case), which costs a few microseconds.

Use in-process::

    with DnsTestServer(zone_text, servfail={"bad.test"}, drop={"slow.test"}) as srv:
        resolver = make_resolver([srv.nameserver], lifetime=2.0)

or as a subprocess (prints ``READY 127.0.0.1:PORT`` once it serves)::

    python -m tests.support.dnsserver --zone FILE [--port N] [--latency-ms 2]

It binds 127.0.0.1 only. Names not under an SOA of the zone text fall under a synthetic
root zone, so every name gets an authoritative NXDOMAIN/NODATA answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct
import sys
import threading
from collections.abc import Iterable

from dnslib import CLASS
from dnslib import QTYPE
from dnslib import RR
from dnslib import SOA
from dnslib import DNSHeader
from dnslib import DNSQuestion
from dnslib import DNSRecord

__all__ = ["DnsTestServer", "Zone", "serve"]

_CNAME, _SOA, _ANY = QTYPE.CNAME, QTYPE.SOA, QTYPE.ANY
_UDP_LIMIT = 512  # we never send EDNS, so larger answers are truncated and the client uses TCP


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


def _question_wire(name: str, qtype: int) -> bytes:
    """The question section as lower-case wire bytes: the lookup key for a packet."""
    labels = [label.encode("ascii") for label in _key(name).split(".") if label]
    return (
        b"".join(bytes([len(lab)]) + lab for lab in labels) + b"\0" + struct.pack("!HH", qtype, 1)
    )


class Zone:
    """Records of a zone text, and the wire answers derived from them."""

    def __init__(self, text: str, servfail: Iterable[str] = (), drop: Iterable[str] = ()):
        self.nodes: dict[str, dict[int, list[RR]]] = {}
        self.soas: dict[str, RR] = {}
        for rr in RR.fromZone(text, ttl=300):
            name = _key(str(rr.rname))
            self.nodes.setdefault(name, {}).setdefault(rr.rtype, []).append(rr)
            if rr.rtype == _SOA:
                self.soas[name] = rr
        if "." not in self.soas:  # synthetic root: authoritative for everything else
            self.soas["."] = RR(
                ".",
                _SOA,
                ttl=60,
                rdata=SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, 60)),
            )
        # Empty non-terminals (e.g. _domainkey.example.test) exist: NODATA, not NXDOMAIN.
        self.existing = set(self.nodes)
        for name in self.nodes:
            parts = name.split(".")
            self.existing.update(".".join(parts[i:]) for i in range(1, len(parts) - 1))
        self.servfail = {_key(n) for n in servfail}
        self.drop = {_key(n) for n in drop}
        self.answers: dict[bytes, bytes | None] = {}
        for name, node in self.nodes.items():  # precompute what is asked most
            for qtype in {*node, QTYPE.A, QTYPE.AAAA, QTYPE.TXT}:
                self.answers[_question_wire(name, qtype)] = self._build(name, qtype)

    def _soa_for(self, name: str) -> RR:
        labels = name.split(".")
        for i in range(len(labels)):
            apex = ".".join(labels[i:]) or "."
            if apex in self.soas:
                return self.soas[apex]
        return self.soas["."]

    def resolve(self, qname: str, qtype: int) -> tuple[int, list[RR], list[RR]]:
        """(rcode, answer, authority) as an authoritative server would give them."""
        name, answer, seen = _key(qname), [], set()
        while True:
            node = self.nodes.get(name)
            if node is None:
                rcode = 0 if name in self.existing else 3  # NODATA vs NXDOMAIN
                return rcode, answer, [self._soa_for(name)]
            if qtype == _ANY:
                return 0, answer + [rr for rrs in node.values() for rr in rrs], []
            if qtype in node:
                return 0, answer + node[qtype], []
            if _CNAME in node and qtype != _CNAME and name not in seen:
                # Follow the chain inside our data, like BIND does for in-zone targets.
                seen.add(name)
                cname = node[_CNAME][0]
                answer.append(cname)
                name = _key(str(cname.rdata.label))
                continue
            return 0, answer, [self._soa_for(name)]

    def _build(self, qname: str, qtype: int) -> bytes | None:
        """Wire answer (ID 0) for a question; None means: drop the query."""
        name = _key(qname)
        if name in self.drop:
            return None
        header = DNSHeader(id=0, qr=1, aa=1, ra=0)
        reply = DNSRecord(header, q=DNSQuestion(name, qtype))
        if name in self.servfail:
            header.rcode = 2
        else:
            header.rcode, answer, authority = self.resolve(name, qtype)
            reply.add_answer(*answer)
            reply.add_auth(*authority)
        return reply.pack()

    def respond(self, query: bytes, tcp: bool) -> bytes | None:
        """The reply to one query packet, or None to stay silent."""
        if len(query) < 17 or query[2] & 0xF8:  # too short, a response, or not opcode QUERY
            return None
        end = query.find(b"\0", 12)  # end of the qname; labels are <64 so no length byte is 0
        if end < 0 or len(query) < end + 5:
            return None
        question = query[12 : end + 5]
        key = question.lower()  # length bytes (<64) are unaffected by lower()
        wire = self.answers.get(key, b"")
        if wire == b"":
            wire = self._slow_path(query)
            if len(self.answers) < 1_000_000:
                self.answers[key] = wire
        if wire is None:
            return None
        flags = bytes([wire[2] | (query[2] & 0x01), wire[3]])  # copy RD
        reply = query[:2] + flags + wire[4:12] + question + wire[12 + len(question) :]
        if not tcp and len(reply) > _UDP_LIMIT:  # TC bit, question only: client retries on TCP
            reply = query[:2] + bytes([flags[0] | 0x02, flags[1]]) + b"\0\1\0\0\0\0\0\0" + question
        return reply

    def _slow_path(self, query: bytes) -> bytes | None:
        try:
            q = DNSRecord.parse(query).q
        except Exception:  # garbage: a real server would answer FORMERR; silence is fine here
            return None
        if q.qclass != CLASS.IN:
            return DNSRecord(DNSHeader(id=0, qr=1, rcode=5), q=q).pack()  # REFUSED
        return self._build(str(q.qname), q.qtype)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsTestServer):
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.server.questions is not None:
            with contextlib.suppress(Exception):  # garbage is not a question
                q = DNSRecord.parse(data).q
                self.server.questions.append((_key(str(q.qname)), QTYPE[q.qtype]))
        reply = self.server.zone.respond(data, tcp=False)
        if reply is None:
            return
        if self.server.latency:
            asyncio.get_running_loop().call_later(
                self.server.latency, self.transport.sendto, reply, addr
            )
        else:
            self.transport.sendto(reply, addr)


class DnsTestServer:
    """Serves a zone on 127.0.0.1 (UDP and TCP, same port) from a background thread."""

    def __init__(
        self,
        zone_text: str = "",
        *,
        servfail: Iterable[str] = (),
        drop: Iterable[str] = (),
        port: int = 0,
        latency_ms: float = 0.0,
        record: bool = False,
    ):
        self.servfail, self.drop = set(servfail), set(drop)
        # with record=True, every UDP question as (lower-case name, type), in arrival order
        self.questions: list[tuple[str, str]] | None = [] if record else None
        self.zone = Zone(zone_text, self.servfail, self.drop)
        self.latency = latency_ms / 1000.0
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def nameserver(self) -> str:
        """``HOST:PORT`` as DNS_NAMESERVERS and make_resolver() take it."""
        return f"127.0.0.1:{self.port}"

    def set_zone(
        self,
        zone_text: str,
        *,
        servfail: Iterable[str] | None = None,
        drop: Iterable[str] | None = None,
    ) -> None:
        """Replace the served data; one attribute swap, so in-flight packets see old or new."""
        if servfail is not None:
            self.servfail = set(servfail)
        if drop is not None:
            self.drop = set(drop)
        self.zone = Zone(zone_text, self.servfail, self.drop)

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        # UDP picks a free port; TCP must get the same number, so retry on a clash.
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # A benchmark burst is thousands of queries: a roomy buffer instead of drops.
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            udp.bind(("127.0.0.1", self.port))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                if self.port:
                    raise
                continue
            self.port = udp.getsockname()[1]
            return udp, tcp
        raise OSError("no free port for UDP and TCP")

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.zone.respond(await reader.readexactly(size), tcp=True)
                if reply is None:
                    continue
                if self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _serve(self, udp: socket.socket, tcp: socket.socket, ready: threading.Event):
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        server = await asyncio.start_server(self._tcp_client, sock=tcp)
        self._stopped = asyncio.Event()
        ready.set()
        await self._stopped.wait()
        transport.close()
        server.close()

    def run_forever(self, ready: threading.Event | None = None) -> None:
        """Serve on the calling thread until stop()."""
        udp, tcp = self._bind()
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve(udp, tcp, ready or threading.Event()))
        self._loop.close()

    def start(self) -> DnsTestServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self.run_forever, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("DNS test server did not start")
        return self

    def stop(self) -> None:
        if self._loop and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> DnsTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(argv: list[str] | None = None) -> None:
    """Command line entry point, used by bench/dns_checks.py to run the server apart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zone", required=True, help="zone file")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay every answer")
    parser.add_argument("--servfail", action="append", default=[], metavar="NAME")
    parser.add_argument("--drop", action="append", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    with open(args.zone, encoding="utf-8") as fh:
        server = DnsTestServer(
            fh.read(),
            servfail=args.servfail,
            drop=args.drop,
            port=args.port,
            latency_ms=args.latency_ms,
        )
    ready = threading.Event()
    threading.Thread(
        target=lambda: (ready.wait(), print(f"READY {server.nameserver}", flush=True)), daemon=True
    ).start()
    try:
        server.run_forever(ready)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    serve(sys.argv[1:])
