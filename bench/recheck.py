"""Benchmark: nightly re-verification of active entries against the local test DNS server.

    python bench/recheck.py [--n 10000] [--batch-size 500] [--naive 300] [--processes 1]
                            [--event-loop uvloop|asyncio] [--database-url URL]

Creates N active server entries in a throw-away SQLite database (or ``--database-url``),
serves their DNS from the test server in a subprocess (loopback only), then times
``drift.recheck_active_entries`` (batched, concurrent, bulk writes) and, in the same run,
the naive way on a sample: one entry at a time, ``run_checks_sync`` plus per-row ORM
writes. Prints entries per second, SQL queries per batch, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--naive", type=int, default=300, help="sample size for the naive way")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--processes", type=int, default=1,
                        help="RELAY_RECHECK_PROCESSES: DNS work of a batch over N processes")
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the batch event loop (asyncio: the standard loop, for comparison)")
    args = parser.parse_args(argv)

    from bench.django_env import setup_django

    tmp, (team, user) = setup_django(args.database_url)
    import django
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench.dns_checks import RELAY_INCLUDE
    from bench.dns_checks import build
    from bench.dns_checks import start_server
    from requests_app import checking
    from requests_app.checks import engine as check_engine
    from requests_app.drift import recheck_active_entries
    from requests_app.models import CheckRun
    from requests_app.models import RelayRequest

    zone, specs = build(args.n)
    zone_file = Path(tmp) / "bench.zone"
    zone_file.write_text(zone)
    RelayRequest.objects.bulk_create(
        [RelayRequest(kind="server", state="active", team=team, created_by=user,
                      contact_email="ops@bench.test", fqdn=s.fqdn,
                      ipv4=[s.addresses[0]], ipv6=[s.addresses[1]],
                      sender_domains=list(s.sender_domains), expected_daily_volume=10,
                      purpose="bench")
         for s in specs],
        batch_size=2000,
    )
    print(f"{args.n} active entries in {connection.vendor}; starting the DNS server ...",
          flush=True)
    server, nameserver = start_server(str(zone_file), 0.0)
    try:
        settings.DNS_NAMESERVERS = [nameserver]
        settings.RELAY_SPF_INCLUDE = RELAY_INCLUDE
        settings.RELAY_APPROVED_SENDER_DOMAINS = ["mail.bench"]
        settings.DNS_LIFETIME_SECONDS = 5.0
        settings.RELAY_RECHECK_PROCESSES = args.processes
        if args.event_loop == "asyncio":
            check_engine.batch_event_loop = asyncio.new_event_loop

        started, cpu_started = time.perf_counter(), time.process_time()
        stats = recheck_active_entries(limit=args.n, batch_size=args.batch_size,
                                       count_queries=True)
        fast = time.perf_counter() - started
        fast_cpu = time.process_time() - cpu_started
        runs = CheckRun.objects.filter(verdict="pass").count()

        # The naive way: one entry at a time, an ORM write per row and per result.
        sample = list(RelayRequest.objects.order_by("pk")[: args.naive])
        with CaptureQueriesContext(connection) as naive_queries:
            started = time.perf_counter()
            for req in sample:
                report = checking.run_checks_for(req)
                CheckRun.objects.create(request=req, verdict=report["verdict"],
                                        results=report["checks"])
                req.checks_ran_at = django.utils.timezone.now()
                req.save(update_fields=["checks_ran_at"])
            naive = time.perf_counter() - started
    finally:
        server.kill()

    fast_rate = stats.checked / fast
    naive_rate = len(sample) / naive
    print(f"batched recheck ({connection.vendor}, {args.event_loop}, "
          f"{args.processes} process(es)): {stats.checked} entries in {fast:.2f} s = "
          f"{fast_rate:,.0f}/s; "
          f"{runs} pass; errors {stats.errors}; drifted {stats.drifted}")
    print(f"client CPU: {fast_cpu:.2f} s = {1000 * fast_cpu / stats.checked:.2f} ms per entry "
          f"({100 * fast_cpu / fast:.0f}% of the wall time; the rest is waiting on the DNS "
          f"server, the database and the disk)")
    print(f"SQL queries per batch of {args.batch_size}: {sorted(set(stats.queries_per_batch))}"
          f" over {stats.batches} batches")
    print(f"naive, one by one: {len(sample)} entries in {naive:.2f} s = {naive_rate:,.0f}/s; "
          f"{len(naive_queries.captured_queries) / len(sample):.1f} queries per entry")
    print(f"ratio: {fast_rate / naive_rate:.1f}x")
    print(f"reproduce: python bench/recheck.py --n {args.n} --batch-size {args.batch_size} "
          f"--naive {args.naive} --processes {args.processes} --event-loop {args.event_loop}"
          + (" --database-url URL" if args.database_url else ""))


if __name__ == "__main__":
    main()
