"""Benchmark: requests checked per second, concurrent engine vs. a sequential baseline.

    python bench/dns_checks.py [--n 2000] [--latency-ms 0 2] [--concurrency 200]

Generates N server requests (FQDN, one IPv4 and one IPv6 address, one sender domain) as
zone data, serves it from ``tests.support.dnsserver`` in a *subprocess* (so the server
does not share the client's CPU time slice or GIL), and measures

(a) the engine: ``checks.run_many_sync`` (asyncio on uvloop when installed, concurrent,
    look-ups shared in the batch, the cyclic collector paused for the batch);
(b) the naive way: the same look-ups one at a time with a blocking
    ``dns.resolver.Resolver`` and no cache.

Honesty notes: on loopback with no added latency a query costs only CPU, so the ratio
measures client CPU per query, not concurrency. ``--latency-ms`` makes the server delay
every answer (as a real recursive resolver's round trip would); concurrency hides that
wait, the sequential loop pays it per query. Every figure printed is measured here.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.nameserver
import dns.resolver
import dns.reversename

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from requests_app.checks import CheckConfig  # noqa: E402
from requests_app.checks import CheckSpec  # noqa: E402
from requests_app.checks import organisational_domain  # noqa: E402
from requests_app.checks import run_many_sharded  # noqa: E402
from requests_app.checks import run_many_sync  # noqa: E402
from requests_app.dns import make_resolver  # noqa: E402

__all__ = ["main"]

RELAY_INCLUDE = "_spf.relay.bench"


def build(n: int) -> tuple[str, list[CheckSpec]]:
    """Zone text and specs: every request passes; half the DMARC records sit on the org."""
    lines = [
        "bench.test. IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 300",
        f'{RELAY_INCLUDE}. IN TXT "v=spf1 ip4:193.0.20.0/24 ip6:2001:67c:99::/48 -all"',
        '_dmarc.mail.bench. IN TXT "v=DMARC1; p=reject"',
    ]
    specs = []
    for i in range(n):
        v4 = str(ipaddress.IPv4Address("145.0.0.0") + i)
        v6 = str(ipaddress.IPv6Address("2001:67c:1000::") + i)
        host, sender = f"h{i}.bench.test", f"s{i}.mail.bench"
        lines += [
            f"{host}. IN A {v4}",
            f"{host}. IN AAAA {v6}",
            f"{dns.reversename.from_address(v4)} IN PTR {host}.",
            f"{dns.reversename.from_address(v6)} IN PTR {host}.",
            f'{sender}. IN TXT "v=spf1 include:{RELAY_INCLUDE} -all"',
        ]
        if i % 2:
            lines.append(f'_dmarc.{sender}. IN TXT "v=DMARC1; p=quarantine"')
        specs.append(CheckSpec(host, (v4, v6), (sender,)))
    return "\n".join(lines) + "\n", specs


def start_server(zone_file: str, latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.dnsserver", "--zone", zone_file,
         "--latency-ms", str(latency_ms)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != "READY":
        proc.kill()
        raise RuntimeError("DNS server did not start")
    return proc, line[1]


def concurrent(specs: list[CheckSpec], config: CheckConfig, nameserver: str,
               concurrency: int) -> tuple[float, int]:
    resolver = make_resolver([nameserver], config.lifetime)
    started = time.perf_counter()
    reports = run_many_sync(specs, config, resolver, concurrency=concurrency)
    elapsed = time.perf_counter() - started
    return elapsed, sum(r.verdict == "pass" for r in reports)


def sharded(specs: list[CheckSpec], config: CheckConfig, nameserver: str,
            concurrency: int, processes: int) -> tuple[float, int]:
    """The same engine on ``processes`` cores (as several Celery worker processes would)."""
    started = time.perf_counter()
    reports = run_many_sharded(specs, config, [nameserver], processes=processes,
                               concurrency=concurrency)
    elapsed = time.perf_counter() - started
    return elapsed, sum(r.verdict == "pass" for r in reports)


def sequential(specs: list[CheckSpec], nameserver: str, lifetime: float) -> tuple[float, int]:
    """The naive checker: one blocking query at a time, nothing cached or shared."""
    host, port = nameserver.rsplit(":", 1)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, int(port))]
    resolver.lifetime = lifetime

    def q(name: str, rdtype: str) -> list[str]:
        try:
            answer = resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        if answer.rrset is None:
            return []
        if rdtype == "TXT":
            return [b"".join(r.strings).decode() for r in answer.rrset]
        return [r.to_text().rstrip(".").lower() for r in answer.rrset]

    ok = 0
    started = time.perf_counter()
    for spec in specs:
        assert spec.fqdn is not None
        found = set(q(spec.fqdn, "A")) | set(q(spec.fqdn, "AAAA"))
        good = found == {str(ipaddress.ip_address(a)) for a in spec.addresses}
        for address in spec.addresses:
            good &= spec.fqdn in q(dns.reversename.from_address(address).to_text(), "PTR")
        for domain in spec.sender_domains:
            spf = [r for r in q(domain, "TXT") if r.startswith("v=spf1")]
            good &= bool(spf) and f"include:{RELAY_INCLUDE}" in spf[0]
            good &= bool(q(RELAY_INCLUDE, "TXT"))  # evaluate the include, as SPF does
            dmarc = q(f"_dmarc.{domain}", "TXT") or q("_dmarc." + domain.split(".", 1)[1], "TXT")
            good &= any(r.startswith("v=DMARC1") for r in dmarc)
        ok += good
    return time.perf_counter() - started, ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="requests (default 2000)")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 2.0],
                        help="server answer delays to measure (default: 0 2)")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2,
                        help="also measure the engine sharded over this many processes")
    parser.add_argument("--sequential-n", type=int, default=None,
                        help="requests for the (slow) baseline; default min(n, 500)")
    args = parser.parse_args(argv)
    zone, specs = build(args.n)
    seq_specs = specs[: args.sequential_n or min(args.n, 500)]
    config = CheckConfig(spf_include=RELAY_INCLUDE, approved_sender_domains=("mail.bench",),
                         lifetime=10.0)
    started = time.perf_counter()
    organisational_domain("warm.up.example")  # parse the bundled PSL once per process
    psl = time.perf_counter() - started
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.n} requests "
          f"(engine), {len(seq_specs)} (baseline); concurrency {args.concurrency}; "
          f"public suffix list loaded before timing ({psl:.2f} s, once per process)")
    with tempfile.NamedTemporaryFile("w", suffix=".zone", delete=False) as fh:
        fh.write(zone)
    try:
        for latency in args.latency_ms:
            proc, nameserver = start_server(fh.name, latency)
            try:
                c_time, c_ok = concurrent(specs, config, nameserver, args.concurrency)
                p_time = p_ok = None
                if args.processes > 1:
                    p_time, p_ok = sharded(specs, config, nameserver, args.concurrency,
                                           args.processes)
                s_time, s_ok = sequential(seq_specs, nameserver, config.lifetime)
            finally:
                proc.terminate()
                proc.wait(5)
            c_rate, s_rate = len(specs) / c_time, len(seq_specs) / s_time
            print(f"latency {latency:g} ms: engine {c_rate:8.1f} req/s "
                  f"({c_ok}/{len(specs)} pass, {c_time:.2f} s) | sequential {s_rate:7.1f} req/s "
                  f"({s_ok}/{len(seq_specs)} ok, {s_time:.2f} s) | ratio {c_rate / s_rate:.1f}x")
            if p_time is not None:
                p_rate = len(specs) / p_time
                print(f"latency {latency:g} ms: engine on {args.processes} processes "
                      f"{p_rate:8.1f} req/s ({p_ok}/{len(specs)} pass, {p_time:.2f} s, pool "
                      f"start-up included) | ratio to sequential {p_rate / s_rate:.1f}x")
    finally:
        os.unlink(fh.name)
    lat = " ".join(f"{x:g}" for x in args.latency_ms)
    print(f"reproduce: .venv/bin/python bench/dns_checks.py --n {args.n} --latency-ms {lat} "
          f"--concurrency {args.concurrency} --processes {args.processes}")


if __name__ == "__main__":
    main()
