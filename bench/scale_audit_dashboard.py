"""Benchmark the audit export and the dashboard at a large organisation's size.

    python bench/scale_audit_dashboard.py [--n 100000] [--database-url URL] [--runs 3]
                                          [--dashboard-runs 30] [--skip-naive]

Fills the database with ``bench/scale_fill.py`` (unless it already holds N filled
requests: a second run reuses them), then measures, in the same run:

* the audit export (``requests_app.audit_export``) of every event: time, rows, peak
  Python memory; the same through the web view (``/requests/audit.csv``, trailer
  checked); PostgreSQL's ``COPY`` of the same join and order (the floor); the old way
  (a model instance per event, ``select_related``, its JSON decoded and re-encoded);
  filtered exports (one team; the last 30 days);
* the dashboard page (``/requests/dashboard/``) p50/p95 over ``--dashboard-runs`` GETs,
  against the Django admin changelist of the requests (``/admin/.../relayrequest/``)
  and the old figures computed in Python (every queued and decided row loaded).

Targets (issue 15): the export within 3x of ``COPY``; the dashboard p95 < 150 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _span(values: list[float]) -> str:
    return (f"{min(values):.2f}-{max(values):.2f} s" if len(values) > 1
            else f"{values[0]:.2f} s")


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p95 * 1000


def _consume_export(user: Any, flt: Any, digest: Any = None) -> tuple[int, int]:
    """Read a whole export; its size and the row count its trailer states (a comment may
    hold line breaks, so lines are not rows)."""
    from requests_app.audit_export import audit_csv_chunks  # deferred: after Django set-up
    from requests_app.audit_export import parse_trailer

    size, last = 0, ""
    for chunk in audit_csv_chunks(user, flt):
        size += len(chunk)
        last = chunk
        if digest is not None:
            digest.update(chunk.encode())
    return size, parse_trailer(last) or 0


def _copy_sql(where: str = "") -> str:
    from requests_app.models import RelayRequest  # deferred: after Django set-up
    from requests_app.models import RequestEvent
    from requests_app.models import Team

    return (
        "COPY (SELECT e.created_at, e.request_id, t.slug, "
        "CASE r.kind WHEN 'account' THEN r.account_name ELSE r.fqdn END, e.type, "
        "e.actor_name, e.source_ip, e.from_state, e.to_state, e.comment, e.parameters "
        f"FROM {RequestEvent._meta.db_table} e "
        f"JOIN {RelayRequest._meta.db_table} r ON r.id = e.request_id "
        f"JOIN {Team._meta.db_table} t ON t.id = r.team_id {where} "
        "ORDER BY e.created_at, e.id) TO STDOUT WITH (FORMAT csv, HEADER)"
    )


def _copy(sql: str) -> tuple[int, int]:
    from django.db import connection  # deferred: after Django set-up

    size = lines = 0
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for data in copy:
            size += len(data)
            lines += bytes(data).count(b"\n")
    return size, lines


def _naive_export(user: Any) -> str:
    """The export as it was: model instances, JSON decoded per row (the issue's 35.7 s).
    Returns the sha256 of its text with the new trailer added, to compare byte for byte."""
    import csv  # deferred: only the baseline needs it

    from requests_app import selectors  # deferred: after Django set-up
    from requests_app.audit_export import COLUMNS
    from requests_app.audit_export import TRAILER_PREFIX
    from requests_app.audit_export import csv_safe
    from requests_app.display import compact_json

    class Echo:
        def write(self, value: str) -> str:
            return value

    writer = csv.writer(Echo())
    digest = hashlib.sha256(writer.writerow(COLUMNS).encode())
    count = 0
    for e in selectors.event_list_for_user(user).order_by("created_at", "pk").iterator(
            chunk_size=2000):
        count += 1
        digest.update(writer.writerow([
            e.created_at.isoformat(), e.request_id, csv_safe(e.request.team.slug),
            csv_safe(e.request.subject), e.type, csv_safe(e.actor_name),
            e.source_ip or "", e.from_state, e.to_state, csv_safe(e.comment),
            csv_safe(compact_json(e.parameters))]).encode())
    digest.update(f"{TRAILER_PREFIX}{count} rows\r\n".encode())
    return digest.hexdigest()


def _naive_dashboard_figures(now: Any) -> tuple[float | None, int]:
    """The dashboard's old median and age buckets: every row pulled into Python."""
    from requests_app.models import RelayRequest  # deferred: after Django set-up
    from requests_app.selectors import QUEUE_STATES

    buckets: dict[str, int] = {}
    for state, submitted, created in RelayRequest.objects.filter(
            state__in=QUEUE_STATES).values_list("state", "submitted_at", "created_at").iterator(
            chunk_size=5000):
        days = (now - (submitted or created)).total_seconds() / 86400
        key = f"{state}:{0 if days < 1 else 1 if days < 7 else 7}"
        buckets[key] = buckets.get(key, 0) + 1
    spans = [(decided - submitted).total_seconds() / 3600
             for submitted, decided in RelayRequest.objects.filter(
                 submitted_at__isnull=False, decided_at__isnull=False)
             .values_list("submitted_at", "decided_at").iterator(chunk_size=5000)]
    return (statistics.median(spans) if spans else None), len(spans)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--runs", type=int, default=3, help="runs of each export")
    parser.add_argument("--dashboard-runs", type=int, default=30)
    parser.add_argument("--skip-naive", action="store_true",
                        help="leave out the old export (tens of seconds at 100k)")
    args = parser.parse_args(argv)
    os.environ["DJANGO_DEBUG"] = "false"  # no query log: it would grow with the export
    from bench.django_env import setup_django

    setup_django(args.database_url, prefix="relaydesk-scale-")
    from django.contrib.auth import get_user_model  # deferred: after Django set-up
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from bench.scale_fill import fill
    from bench.scale_fill import filled_count
    from requests_app.audit_export import AuditFilter
    from requests_app.audit_export import parse_trailer
    from requests_app.dashboard import dashboard_data
    from requests_app.models import RequestEvent

    have = filled_count()
    if have < args.n:
        if have:
            sys.exit(f"the database holds {have} filled requests, not {args.n}: use a fresh one")
        stats = fill(args.n, progress=False)
        print(f"filled {stats.requests} requests ({stats.active} active), {stats.teams} teams, "
              f"{stats.events} events, {stats.check_results} check results: "
              f"{stats.seconds:.0f} s")
    else:
        print(f"reusing {have} filled requests")
    vendor = connection.vendor
    admin, _ = get_user_model().objects.get_or_create(
        username="scale-admin", defaults={"is_superuser": True, "is_staff": True})
    events = RequestEvent.objects.count()
    print(f"database: {vendor}, {events} audit events")

    # --- audit export ------------------------------------------------------------------
    print("\naudit export of every event")
    everything = AuditFilter()
    times, result = [], (0, 0)
    for _ in range(args.runs):
        seconds, result = _timed(lambda: _consume_export(admin, everything))
        times.append(seconds)
    size, rows = result
    assert rows == events, (rows, events)
    print(f"  audit_csv_chunks: {_span(times)} over {args.runs} runs, {rows} rows, "
          f"{size / 2**20:.0f} MiB")
    new_digest = hashlib.sha256()
    tracemalloc.start()
    _consume_export(admin, everything, new_digest)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"  peak Python memory of one export (tracemalloc): {peak / 2**20:.1f} MiB")

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(admin)

    def through_view(query: str = "") -> tuple[int, int | None]:
        response = client.get("/requests/audit.csv" + query)
        assert response.status_code == 200 and response.streaming
        body = b"".join(response.streaming_content).decode()
        import csv  # deferred: only this check parses the CSV
        import io

        return sum(1 for _ in csv.reader(io.StringIO(body))) - 2, parse_trailer(body)

    seconds, (view_rows, trailer) = _timed(through_view)
    assert view_rows == trailer == events, (view_rows, trailer, events)
    print(f"  through the view /requests/audit.csv: {seconds:.2f} s, trailer says "
          f"{trailer} rows (= rows received)")
    export_best = min(times)
    if vendor == "postgresql":
        copy_times, copied = [], (0, 0)
        for _ in range(args.runs):
            seconds, copied = _timed(lambda: _copy(_copy_sql()))
            copy_times.append(seconds)
        print(f"  COPY of the same join and order: {_span(copy_times)}, {copied[1]} lines, "
              f"{copied[0] / 2**20:.0f} MiB")
        print(f"  export / COPY (best runs): {export_best / min(copy_times):.1f}x "
              f"(target: within 3x)")
    else:
        print("  COPY: PostgreSQL only (run with --database-url postgres://...)")
    team = "team-007"
    seconds, (_, team_rows) = _timed(lambda: _consume_export(admin, AuditFilter(team=team)))
    print(f"  one team ({team}): {seconds:.2f} s, {team_rows} rows")
    today = timezone.localdate()
    month = AuditFilter(since=today - timedelta(days=29), until=today)
    seconds, (_, month_rows) = _timed(lambda: _consume_export(admin, month))
    print(f"  the last 30 days: {seconds:.2f} s, {month_rows} rows")
    if not args.skip_naive:
        seconds, old_digest = _timed(lambda: _naive_export(admin))
        same = "byte for byte the same" if old_digest == new_digest.hexdigest() else "DIFFERENT"
        print(f"  old way (model instances, JSON decoded per row): {seconds:.2f} s "
              f"({seconds / export_best:.1f}x the new export); output {same}")

    # --- dashboard ---------------------------------------------------------------------
    print(f"\ndashboard, {args.dashboard_runs} GETs each (first GET of each page not counted)")
    pages = {
        "dashboard /requests/dashboard/": "/requests/dashboard/",
        "admin changelist of requests": "/admin/requests_app/relayrequest/",
    }
    for label, url in pages.items():
        assert client.get(url).status_code == 200  # warm-up
        samples = []
        for _ in range(args.dashboard_runs):
            started = time.perf_counter()
            response = client.get(url)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200
        p50, p95 = _percentiles(samples)
        print(f"  {label}: p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    now = timezone.now()
    data = dashboard_data(now)
    new_samples = [_timed(lambda: dashboard_data(now))[0] for _ in range(5)]
    old_samples = [_timed(lambda: _naive_dashboard_figures(now))[0] for _ in range(3)]
    old_median, old_count = _naive_dashboard_figures(now)
    from requests_app.models import RelayRequest  # deferred: after Django set-up

    check = [(d - s).total_seconds() / 3600 for s, d in RelayRequest.objects.filter(
        submitted_at__isnull=False, decided_at__gte=now - timedelta(days=data.window_days))
        .values_list("submitted_at", "decided_at")]
    print(f"  dashboard_data (all figures, SQL): {_span(new_samples)}; median "
          f"{data.median_decision_hours:.3f} h over {data.decided_count} decisions in "
          f"{data.window_days} days (Python over the same rows: "
          f"{statistics.median(check):.3f} h over {len(check)})")
    print(f"  old way, the median and age buckets alone in Python over all history: "
          f"{_span(old_samples)}; median {old_median:.1f} h over {old_count} decisions")
    print("\nreproduce: python bench/scale_audit_dashboard.py --n {}{}".format(
        args.n, " --database-url postgres://postgres@127.0.0.1:5432/<db>"
        if vendor == "postgresql" else ""))


if __name__ == "__main__":
    main()
