"""Relay config storage at scale: polls, diff and storage, content-addressed vs whole snapshots.

    python bench/scale_relay.py [--n 100000] [--polls 20] [--database-url URL]

Fills N active server entries (half IPv4, half IPv6, bulk), builds version 1, revokes
one entry and builds version 2 (a one-line change), then measures in the same run:

* the pull endpoint through Django's test client with the token (the real view): a
  poll answered 304 (ETag matches), the manifest, and a full body streamed
  (``client_access.cidr``, consumed chunk by chunk): time per poll (min/median/max
  over ``--polls``) and peak Python memory (tracemalloc) of one poll;
* the diff page v1 -> v2 (changes by request from the stored line history, unified
  diff only for files small enough) and ``history_changes`` alone;
* storage added by version 2: the chunks it did not share with v1 (content-defined,
  cut at line ends) beside what the whole-file blobs stored before (each changed file
  compressed whole), plus its chunk and file rows.

The naive way, same database, same run: the old layout, each version's files in one
JSON column (``bench_snapshot``: ``jsonb`` on PostgreSQL, text on SQLite), read as the
old view did (decode the column, take the file, encode, hash for the ETag), and the old
diff (``config_changes`` of the two decoded snapshots plus ``difflib`` of every file).
The naive polls are timed as functions, without Django's request overhead (which
favours them by a millisecond or so).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN = "bench-token"
MIB = 1024 * 1024


def _timed(fn: Callable[[], Any], runs: int) -> tuple[float, float, float]:
    """min / median / max milliseconds of ``runs`` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return min(times), statistics.median(times), max(times)


def _peak(fn: Callable[[], Any]) -> float:
    """Peak Python memory (MiB) above the start of one call."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (peak - base) / MIB


def _fmt(t: tuple[float, float, float]) -> str:
    return f"{t[0]:.1f} / {t[1]:.1f} / {t[2]:.1f} ms"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--polls", type=int, default=20)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args(argv)
    from bench.django_env import setup_django

    _tmp, (team, user) = setup_django(args.database_url, prefix="relaydesk-scale-relay-")
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from requests_app.models import RelayConfigVersion
    from requests_app.models import RelayRequest
    from requests_app.relay import config_changes
    from requests_app.relay import history_changes
    from requests_app.relay import relay_config_rebuild

    setup_test_environment()  # the test client (and ALLOWED_HOSTS "testserver")
    settings.RELAY_CONFIG_TOKEN = TOKEN
    vendor = connection.vendor
    RelayRequest.objects.filter(purpose="scale-relay").delete()
    rows = []
    for i in range(args.n):
        v6 = i % 2 == 1
        address = str(ipaddress.IPv6Address("2a02:898::") + i if v6
                      else ipaddress.IPv4Address("11.0.0.0") + i)
        rows.append(RelayRequest(
            kind="server", state="active", team=team, created_by=user,
            contact_email="ops@bench.test", fqdn=f"h{i}.bench.test",
            ipv4=[] if v6 else [address], ipv6=[address] if v6 else [],
            sender_domains=["bench.test"], expected_daily_volume=1, purpose="scale-relay"))
    RelayRequest.objects.bulk_create(rows, batch_size=5000)
    del rows
    print(f"{args.n} active entries on {vendor}", flush=True)

    started = time.perf_counter()
    v1 = relay_config_rebuild(reason="bench v1")
    build1 = time.perf_counter() - started
    first = RelayRequest.objects.filter(purpose="scale-relay").order_by("pk").first()
    RelayRequest.objects.filter(pk=first.pk).update(state="revoked")
    started = time.perf_counter()
    v2 = relay_config_rebuild(reason="bench v2: one revoked")
    build2 = time.perf_counter() - started
    assert v1 is not None and v2 is not None
    print(f"builds: v{v1.number} {build1:.1f} s, v{v2.number} (one line) {build2:.1f} s",
          flush=True)

    # --- the old layout, same files, same database ---------------------------------------
    kind = "jsonb" if vendor == "postgresql" else "text"
    snapshots = {}
    with connection.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_snapshot")
        cur.execute(f"CREATE TABLE bench_snapshot (number integer PRIMARY KEY, files {kind})")
        for version in (v1, v2):
            files = version.files
            snapshots[version.number] = files
            cur.execute("INSERT INTO bench_snapshot VALUES (%s, %s)",
                        [version.number, json.dumps(files)])
    del snapshots

    def old_files(number: int) -> dict[str, str]:
        with connection.cursor() as cur:
            cur.execute("SELECT files FROM bench_snapshot WHERE number = %s", [number])
            value = cur.fetchone()[0]
        return value if isinstance(value, dict) else json.loads(value)

    def old_poll(name: str, if_none_match: str = "") -> bytes:
        """The old view's work: decode the whole column, take one file, hash it."""
        body = old_files(v2.number)[name].encode()
        etag = '"' + hashlib.sha256(body).hexdigest() + '"'
        return b"" if etag == if_none_match else body

    client = Client(HTTP_AUTHORIZATION=f"Token {TOKEN}")
    cidr_url = "/relay-config/client_access.cidr"
    etag = client.head(cidr_url)["ETag"]

    def new_304() -> None:
        assert client.get(cidr_url, HTTP_IF_NONE_MATCH=etag).status_code == 304

    def new_manifest() -> None:
        assert client.get("/relay-config/MANIFEST.json").status_code == 200

    size = {"bytes": 0}

    def new_body() -> None:
        response = client.get(cidr_url)
        total, digest = 0, hashlib.sha256()
        for chunk in (response.streaming_content if response.streaming
                      else [response.content]):
            total += len(chunk)
            digest.update(chunk)
        assert f'"{digest.hexdigest()}"' == etag  # the streamed bytes are the file's
        assert total == int(response["Content-Length"])
        size["bytes"] = total

    polls = [
        ("poll answered 304", new_304, lambda: old_poll("client_access.cidr", etag)),
        ("poll MANIFEST.json", new_manifest, lambda: old_poll("MANIFEST.json")),
        ("poll full client_access.cidr", new_body, lambda: old_poll("client_access.cidr")),
    ]
    print(f"\nrelay polls at {args.n} entries on {vendor} (min / median / max of "
          f"{args.polls}; peak = Python memory of one poll)")
    for label, new, old in polls:
        new_t, old_t = _timed(new, args.polls), _timed(old, args.polls)
        new_m, old_m = _peak(new), _peak(old)
        print(f"  {label:30} new {_fmt(new_t)}, peak {new_m:.2f} MiB | "
              f"whole snapshot {_fmt(old_t)}, peak {old_m:.1f} MiB")
    print(f"  (full body: {size['bytes'] / MIB:.1f} MiB streamed)")

    # --- the one-line diff ---------------------------------------------------------------
    from django.contrib.auth import get_user_model

    admin, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_superuser": True, "is_staff": True})
    admin.is_superuser = admin.is_staff = True
    admin.save()
    staff = Client()
    staff.force_login(admin)
    diff_url = f"/relay-config/diff/{v1.number}/{v2.number}/"

    def new_diff() -> None:
        assert staff.get(diff_url).status_code == 200

    def new_history() -> None:
        history_changes(v1, v2)

    def old_diff() -> None:
        import difflib

        a, b = old_files(v1.number), old_files(v2.number)
        config_changes(a, b)
        for name in sorted(set(a) | set(b)):
            list(difflib.unified_diff(a.get(name, "").splitlines(),
                                      b.get(name, "").splitlines(), lineterm=""))

    runs = max(3, args.polls // 4)
    print(f"\none-line diff v{v1.number} -> v{v2.number} (min / median / max of {runs})")
    print(f"  diff page (history + metadata)  {_fmt(_timed(new_diff, runs))}, peak "
          f"{_peak(new_diff):.2f} MiB")
    print(f"  history_changes alone           {_fmt(_timed(new_history, runs))}")
    print(f"  whole snapshots (two decoded, config_changes + difflib) "
          f"{_fmt(_timed(old_diff, runs))}, peak {_peak(old_diff):.1f} MiB")

    # --- storage per version ---------------------------------------------------------------
    import zlib

    from requests_app import relay_store
    from requests_app.models import RelayConfigBlob
    from requests_app.models import RelayConfigChunk

    size_fn = "pg_column_size" if vendor == "postgresql" else "length"
    chunks_of = ("SELECT bc.chunk_id FROM requests_app_relayconfigblobchunk bc "
                 "JOIN requests_app_relayconfigfile f ON f.blob_id = bc.blob_id "
                 "WHERE f.version_id = %s")
    with connection.cursor() as cur:
        cur.execute(f"SELECT number, {size_fn}(files) FROM bench_snapshot ORDER BY number")
        old_sizes = dict(cur.fetchall())
        cur.execute(f"SELECT coalesce(sum({size_fn}(c.body)), 0), count(*) FROM "
                    f"requests_app_relayconfigchunk c WHERE c.id IN ({chunks_of})", [v1.pk])
        first_bytes, first_chunks = cur.fetchone()
        cur.execute(f"SELECT coalesce(sum({size_fn}(c.body)), 0), count(*) FROM "
                    f"requests_app_relayconfigchunk c WHERE c.id IN ({chunks_of}) "
                    f"AND c.id NOT IN ({chunks_of})", [v2.pk, v1.pk])
        added_bytes, added_chunks = cur.fetchone()
    v1_blobs = set(v1.file_rows.values_list("blob_id", flat=True))
    new_blobs = {name: m for name, m in relay_store.file_meta(v2).items()
                 if m.blob_id not in v1_blobs}
    # the whole-file layout (each new blob's body compressed whole, as before chunks)
    whole = {name: len(zlib.compress(relay_store.read_body(m.blob_id),
                                     RelayConfigChunk.LEVEL))
             for name, m in new_blobs.items()}
    join_rows = (RelayConfigBlob.objects.filter(pk__in=[m.blob_id for m in new_blobs.values()])
                 .values_list("chunk_rows", flat=True).count())
    rows_v2 = RelayConfigVersion.objects.get(pk=v2.pk).file_rows.count()
    print(f"\nstorage per version ({size_fn}, as stored: TOAST-compressed on PostgreSQL)")
    print(f"  whole snapshot: v1 {old_sizes[v1.number] / MIB:.2f} MiB, "
          f"v2 {old_sizes[v2.number] / MIB:.2f} MiB")
    print(f"  v1: {first_chunks} chunks, {first_bytes / MIB:.2f} MiB")
    print(f"  v2 (one line) changes {len(new_blobs)} of {rows_v2} files "
          f"({', '.join(sorted(new_blobs))}):")
    print(f"    whole-file blobs (each changed file compressed whole): "
          f"{sum(whole.values()) / MIB:.2f} MiB "
          f"({', '.join(f'{n} {b / 1024:.0f} KiB' for n, b in sorted(whole.items()))})")
    print(f"    chunked: {added_chunks} new chunks, {added_bytes / 1024:.1f} KiB, plus "
          f"{join_rows} chunk rows and {rows_v2} file rows "
          f"({added_bytes / max(1, sum(whole.values())):.1%} of whole-file)")
    if vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("SELECT pg_total_relation_size('requests_app_relayconfigblobchunk'), "
                        "(SELECT count(*) FROM requests_app_relayconfigblobchunk)")
            table_bytes, all_rows = cur.fetchone()
        print(f"    chunk rows with their indexes: {table_bytes / max(1, all_rows):.0f} bytes a "
              f"row on average here (pages not yet full), so about "
              f"{join_rows * table_bytes / max(1, all_rows) / 1024:.0f} KiB for v2's")
    with connection.cursor() as cur:
        cur.execute("DROP TABLE bench_snapshot")
    print(f"\nreproduce: python bench/scale_relay.py --n {args.n} --polls {args.polls}"
          + (" --database-url postgres://postgres@127.0.0.1:5432/<your db>"
             if vendor == "postgresql" else ""))


if __name__ == "__main__":
    main()
