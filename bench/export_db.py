"""Benchmark the relay config from the database: 100k active entries, rebuild and export.

    python bench/export_db.py [--n 100000] [--database-url URL]

Creates N active server entries (half IPv4, half IPv6) in a throw-away SQLite database
(or ``--database-url``), then times ``relay_config_rebuild`` (read the entries, render,
store the version and its line-level history) and ``relay_config_export`` (write the
four files atomically), with peak Python memory, and a naive baseline in the same run:
loading the entries as model instances and rendering them one by one.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args(argv)
    from bench.django_env import setup_django

    tmp, (team, user) = setup_django(args.database_url, prefix="relaydesk-export-")
    import django

    from requests_app.models import RelayRequest
    from requests_app.postfix import ServerEntry
    from requests_app.postfix import render_client_access
    from requests_app.relay import relay_config_export
    from requests_app.relay import relay_config_rebuild

    rows = []
    for i in range(args.n):
        v6 = i % 2 == 1
        address = str(ipaddress.IPv6Address("2001:67c:1000::") + i if v6
                      else ipaddress.IPv4Address("145.0.0.0") + i)
        rows.append(RelayRequest(
            kind="server", state="active", team=team, created_by=user,
            contact_email="ops@bench.test", fqdn=f"h{i}.bench.test",
            ipv4=[] if v6 else [address], ipv6=[address] if v6 else [],
            sender_domains=["bench.test"], expected_daily_volume=1, purpose="bench"))
    RelayRequest.objects.bulk_create(rows, batch_size=5000)
    del rows
    print(f"{args.n} active entries in {django.db.connection.vendor}", flush=True)

    tracemalloc.start()
    started = time.perf_counter()
    version = relay_config_rebuild(reason="bench")
    rebuild_s = time.perf_counter() - started
    _, rebuild_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    out = Path(tmp) / "relay-config"
    started = time.perf_counter()
    relay_config_export(out)
    export_s = time.perf_counter() - started
    _, export_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = sum(p.stat().st_size for p in out.iterdir())

    # the steady state: one entry revoked, rebuild (diff + history of 1 line) and export
    RelayRequest.objects.filter(pk=RelayRequest.objects.order_by("pk").first().pk).update(
        state="revoked")
    started = time.perf_counter()
    second = relay_config_rebuild(reason="one revoked")
    incremental_s = time.perf_counter() - started
    started = time.perf_counter()
    relay_config_export(out)
    export2_s = time.perf_counter() - started

    # naive: model instances, one entry at a time
    started = time.perf_counter()
    naive = render_client_access(
        ServerEntry(r.pk, r.fqdn, r.team.slug, tuple(r.ipv6) + tuple(r.ipv4))
        for r in RelayRequest.objects.filter(state="active")
    )
    naive_s = time.perf_counter() - started
    assert naive == second.files["client_access.cidr"]

    mib = 1024 * 1024
    print(f"relay_config_rebuild (read, render, store v{version.number} + "
          f"{version.changes.count()} history rows): {rebuild_s:.2f} s, "
          f"peak {rebuild_peak / mib:.0f} MiB")
    print(f"relay_config_export (atomic write of 4 files, {size / mib:.1f} MiB): "
          f"{export_s:.2f} s, peak {export_peak / mib:.0f} MiB")
    print(f"after one revoke: rebuild v{second.number} ({second.changes.count()} history "
          f"rows) {incremental_s:.2f} s, export {export2_s:.2f} s")
    print(f"naive render from model instances (client_access.cidr only, "
          f"N+1 team look-ups): {naive_s:.2f} s")
    print(f"reproduce: python bench/export_db.py --n {args.n}")


if __name__ == "__main__":
    main()
