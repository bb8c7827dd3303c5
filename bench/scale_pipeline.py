"""Benchmark: a burst of API submissions through the real check pipeline vs the engine alone.

    python bench/scale_pipeline.py --database-url postgres://postgres@127.0.0.1:5432/DB \\
        [--broker redis://127.0.0.1:6379/7] [--n 2000] [--concurrency 2] [--naive-n 300]

Same run, same DNS data (``bench.dns_checks.build``, served by the test DNS server in a
subprocess, loopback only), same machine:

(a) the engine alone on the first N requests (one process, and sharded on ``--concurrency``
    processes): the ceiling the pipeline is compared with;
(b) the pipeline: N ``POST /api/requests/`` with ``submit: true`` (DRF's test client in this
    process, one after the other; ``--mode queued``, the default, submits them all and
    then starts the worker, so its rate is the pipeline's, not the client's; ``live``
    runs the worker meanwhile), a Celery worker with ``--concurrency`` prefork processes
    on the Redis broker, the batched check task (``RELAY_CHECK_BATCH_SIZE``, default 50)
    woken by one message per burst (``check_dispatch``).
    Printed: checked requests/s (first submit to last ``checks_ran_at``), p50/p95 from
    submit to checked, the submit rate, queries per submit, and the task's own time per
    request (the worker's summed task run times) against the engine's;
(c) the naive way, ``RELAY_CHECK_BATCH_SIZE=1`` (one request per task, the code path of
    before the batch), on ``--naive-n`` further submissions;
(d) the task's own cost without broker or worker, in this process on requests waiting
    in ``checking``: ``check_waiting_requests.apply`` (batched) and one
    ``run_request_checks.apply`` per request (batch 1), per request against the engine's
    work in the task's batch size.

Honesty notes: the submitting client, PostgreSQL, Redis, the DNS server and the worker
share the machine's cores, as they would on a small host; the submit rate bounds the
checked rate from above (printed beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SUCCEEDED = re.compile(
    r"relaydesk\.(?:run_request_checks|check_waiting_requests)\[[^\]]+\] succeeded in "
    r"([0-9.e-]+)s: '([a-z:_-]*)")


class _Counter:
    """Counts SQL statements (an ``execute_wrapper``; works with DEBUG off)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        self.count += 1
        return execute(sql, params, many, context)


class Worker:
    """``celery worker`` with ``concurrency`` prefork processes; its log is kept."""

    def __init__(self, env: dict[str, str], concurrency: int) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "onboarding", "worker", "--pool=prefork",
             f"--concurrency={concurrency}", "--loglevel=INFO", "--without-heartbeat",
             "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if " ready." in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(60):
            self.stop()
            raise RuntimeError("worker did not start:\n" + "".join(self.lines[-30:]))

    def task_seconds(self) -> tuple[int, float, int, float]:
        """Task runs and their summed seconds: all, and those that skipped (their
        request was taken along by another run)."""
        runs = [(float(m.group(1)), m.group(2).startswith(("skipped", "none")))
                for line in self.lines if (m := SUCCEEDED.search(line))]
        skipped = [t for t, skip in runs if skip]
        return len(runs), sum(t for t, _s in runs), len(skipped), sum(skipped)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextlib.contextmanager
def _timed_stages(into: dict[str, float]) -> Iterator[None]:
    """Time the check task's stages (the functions it calls), summed over its runs."""
    from requests_app import checking
    from requests_app import events
    from requests_app import notifications
    from requests_app import services
    from requests_app import tasks

    targets = [
        (tasks, "_claim_waiting", "claim"),
        (checking, "run_checks_for_many", "engine (with its configuration)"),
        (services, "_store_results", "results"),
        (services, "update_rows", "request rows"),
        (events, "insert_many", "events"),
        (notifications, "notification_enqueue_checked", "mails"),
    ]
    originals = [(module, name, getattr(module, name)) for module, name, _label in targets]
    for (module, name, label), (_m, _n, original) in zip(targets, originals, strict=True):
        def timed(*args, _original=original, _label=label, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                into[_label] = into.get(_label, 0.0) + time.perf_counter() - started

        setattr(module, name, timed)
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def _compare_result_inserts(team: Any, user: Any, count: int, batch_size: int) -> None:
    """The result rows of ``count`` requests written three ways, in batches as the task
    writes them, each in a transaction rolled back: Django's ``bulk_create``, one
    ``executemany`` of a one-row ``INSERT``, and ``insert_values`` (COPY on PostgreSQL)."""
    from django.db import connection
    from django.db import transaction
    from django.utils import timezone

    from requests_app.bulk_sql import insert_values
    from requests_app.models import CheckResult
    from requests_app.models import RelayRequest
    from requests_app.services import RESULT_COLUMNS

    one = CheckResult.objects.filter(request__team=team).values_list(
        "request_id", flat=True).first()
    checks = list(CheckResult.objects.filter(request_id=one).values_list(
        "check_id", "subject", "status", "detail", "evidence"))
    ids = list(RelayRequest.objects.filter(team=team).values_list("pk", flat=True)[:count])
    batches = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    now = timezone.now()

    def bulk_create(batch: list[int]) -> None:
        CheckResult.objects.bulk_create([
            CheckResult(request_id=pk, check_id=f"b-{c[0]}", subject=c[1], status=c[2],
                        detail=c[3], evidence=c[4], created_at=now, updated_at=now)
            for pk in batch for c in checks])

    def executemany(batch: list[int]) -> None:
        field = CheckResult._meta.get_field("evidence")
        table = CheckResult._meta.db_table
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {table} (request_id, check_id, subject, status, detail, "
                "evidence, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [(pk, f"m-{c[0]}", c[1], c[2], c[3], field.get_db_prep_save(c[4], connection),
                  now, now) for pk in batch for c in checks])

    def values(batch: list[int]) -> None:
        insert_values(CheckResult, RESULT_COLUMNS,
                      [(pk, f"v-{c[0]}", c[1], c[2], c[3], c[4]) for pk in batch for c in checks],
                      same={"created_at": now, "updated_at": now})

    figures = []
    for label, write in (("bulk_create", bulk_create), ("executemany", executemany),
                         ("insert_values", values)):
        with transaction.atomic():
            started = time.perf_counter()
            for batch in batches:
                write(batch)
            figures.append((label, 1000 * (time.perf_counter() - started) / len(ids)))
            transaction.set_rollback(True)
    print(f"result rows ({len(checks)} per request, batches of {batch_size}, "
          f"{connection.vendor}): " + ", ".join(f"{label} {ms:.3f} ms" for label, ms in figures)
          + " per request", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True,
                        help="a database of your own (PostgreSQL for the issue's figures)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--naive-n", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--mode", choices=("queued", "live"), default="queued",
                        help="queued: all submitted, then the worker starts (its drain "
                             "rate); live: the worker runs while they are submitted")
    args = parser.parse_args(argv)

    os.environ.update({"CELERY_BROKER_URL": args.broker, "DJANGO_DEBUG": "0",
                       "DJANGO_ALLOWED_HOSTS": "testserver,localhost"})
    from bench.django_env import setup_django

    tmp, (team, user) = setup_django(args.database_url, prefix="relaydesk-pipeline-")
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from bench.dns_checks import RELAY_INCLUDE
    from bench.dns_checks import build
    from bench.dns_checks import start_server
    from onboarding.celery import app
    from requests_app import checking
    from requests_app.checks import organisational_domain
    from requests_app.checks import run_many_sharded
    from requests_app.checks import run_many_sync
    from requests_app.dns import make_resolver
    from requests_app.models import Membership
    from requests_app.models import RelayRequest
    from requests_app.models import RequestState

    Membership.objects.create(team=team, user=user)
    user.email = "bench@bench.test"
    user.save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")

    total = args.n + args.naive_n
    zone, specs = build(total)
    zone_file = Path(tmp) / "bench.zone"
    zone_file.write_text(zone)
    server, nameserver = start_server(str(zone_file), 0.0)
    env = {**os.environ, "DNS_NAMESERVERS": nameserver, "RELAY_SPF_INCLUDE": RELAY_INCLUDE,
           "RELAY_APPROVED_SENDER_DOMAINS": "mail.bench", "DNS_LIFETIME_SECONDS": "10",
           "DJANGO_LOG_LEVEL": "INFO"}
    settings.DNS_NAMESERVERS = [nameserver]
    settings.RELAY_SPF_INCLUDE = RELAY_INCLUDE
    settings.RELAY_APPROVED_SENDER_DOMAINS = ["mail.bench"]
    settings.DNS_LIFETIME_SECONDS = 10.0
    organisational_domain("warm.up.example")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {connection.vendor}, "
          f"broker {args.broker}; {args.n} requests (batched), {args.naive_n} (naive)",
          flush=True)
    try:
        # (a) the engine alone, on the same requests and configuration as the tasks
        config = checking.check_config()
        burst_specs = specs[: args.n]
        started = time.perf_counter()
        reports = run_many_sync(burst_specs, config, make_resolver([nameserver], 10.0),
                                concurrency=200)
        engine_1 = args.n / (time.perf_counter() - started)
        passed = sum(r.verdict == "pass" for r in reports)
        started = time.perf_counter()
        run_many_sharded(burst_specs, config, [nameserver], processes=args.concurrency,
                         concurrency=200)
        engine_n = args.n / (time.perf_counter() - started)
        started = time.perf_counter()
        for chunk in range(0, args.n, args.batch_size):
            part = burst_specs[chunk:chunk + args.batch_size]
            run_many_sync(part, checking.check_config(),
                          make_resolver([nameserver], 10.0), concurrency=len(part))
        engine_b = args.n / (time.perf_counter() - started)
        print(f"engine alone: {engine_1:,.0f} req/s on 1 process in one batch "
              f"({passed}/{args.n} pass), {engine_b:,.0f} req/s in batches of "
              f"{args.batch_size} as the task runs it, {engine_n:,.0f} req/s on "
              f"{args.concurrency} processes (pool start included)", flush=True)

        def payload(i: int) -> dict[str, object]:
            spec = specs[i]
            return {"kind": "server", "team": team.slug, "fqdn": spec.fqdn,
                    "ipv4": [spec.addresses[0]], "ipv6": [spec.addresses[1]],
                    "sender_domains": list(spec.sender_domains), "purpose": "bench",
                    "contact_email": "ops@bench.test", "expected_daily_volume": 10,
                    "submit": True}

        def submit(indices: range) -> tuple[list[int], float, int]:
            """POST each request with ``submit: true``; ids, seconds, queries of one."""
            ids: list[int] = []
            counter = _Counter()
            with connection.execute_wrapper(counter):
                response = client.post("/api/requests/", payload(indices[0]), format="json")
            assert response.status_code == 201, response.content
            ids.append(response.json()["id"])
            started = time.perf_counter()
            for i in indices[1:]:
                response = client.post("/api/requests/", payload(i), format="json")
                assert response.status_code == 201, response.content
                ids.append(response.json()["id"])
            return ids, time.perf_counter() - started, counter.count

        def burst(label: str, indices: range, batch_size: int) -> None:
            app.control.purge()
            worker_env = {**env, "RELAY_CHECK_BATCH_SIZE": str(batch_size)}
            worker = None
            try:
                if args.mode == "live":
                    worker = Worker(worker_env, args.concurrency)
                ids, submitted, queries = submit(indices)
                if worker is None:  # queued: the burst is in the queue, then the worker starts
                    worker = Worker(worker_env, args.concurrency)
                started = timezone.now()
                waiting = RelayRequest.objects.filter(pk__in=ids, state=RequestState.CHECKING)
                deadline = time.monotonic() + args.timeout
                while waiting.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                left = waiting.count()
            finally:
                if worker is not None:
                    worker.stop()
            rows = list(RelayRequest.objects.filter(pk__in=ids).exclude(
                checks_ran_at=None).values_list("submitted_at", "checks_ran_at", "state"))
            if args.mode == "live":
                started = min(r[0] for r in rows)
            last = max(r[1] for r in rows)
            latency = sorted((r[1] - r[0]).total_seconds() for r in rows)
            span = (last - started).total_seconds()
            tasks, task_time, skips, skip_time = worker.task_seconds()
            per_request = 1000 * task_time / len(rows)
            engine_ms = 1000 / engine_b  # the engine's work as the task does it
            states = {s for *_x, s in rows}
            since = "worker start" if args.mode == "queued" else "first submit"
            print(f"{label} ({args.mode}): {len(rows)}/{len(ids)} checked ({left} left in "
                  f"checking; states {sorted(states)}) in {span:.1f} s from {since} = "
                  f"{len(rows) / span:,.1f} checked/s; submit to checked p50 "
                  f"{statistics.median(latency):.1f} s, p95 "
                  f"{latency[int(0.95 * (len(latency) - 1))]:.1f} s", flush=True)
            print(f"  submits: {len(ids) / submitted:,.1f}/s from one client; "
                  f"{queries} queries per create-and-submit", flush=True)
            print(f"  worker: {tasks} task runs ({skips} skipped, {skip_time:.1f} s), "
                  f"{task_time:.1f} s of task time = "
                  f"{per_request:.2f} ms per checked request vs the engine's "
                  f"{engine_ms:.2f} ms (batches of {args.batch_size}): own overhead "
                  f"{per_request / engine_ms - 1:.1f}x the engine's work", flush=True)

        burst(f"pipeline, batch {args.batch_size}", range(args.n), args.batch_size)
        if args.naive_n:
            burst("naive, batch 1 (one request per task)", range(args.n, total), 1)

        def in_process(label: str, count: int, batch_size: int) -> None:
            """The task's own cost without the broker: ``apply`` in this process on
            ``count`` requests waiting in ``checking`` until none is left."""
            settings.RELAY_CHECK_BATCH_SIZE = batch_size
            rows = RelayRequest.objects.bulk_create([RelayRequest(
                kind="server", state=RequestState.CHECKING, team=team, created_by=user,
                submitted_by=user, contact_email="ops@bench.test", fqdn=spec.fqdn,
                ipv4=[spec.addresses[0]], ipv6=[spec.addresses[1]],
                sender_domains=list(spec.sender_domains), expected_daily_volume=10,
                purpose="bench") for spec in specs[:count]])
            ids = [r.pk for r in rows]
            waiting = RelayRequest.objects.filter(pk__in=ids, state=RequestState.CHECKING)
            stages: dict[str, float] = {}
            started = time.perf_counter()
            if batch_size > 1:
                # the burst's one wake-up message (eager: each full batch sends the next)
                with _timed_stages(stages):
                    check_waiting_requests.apply()
            else:
                for pk in ids:  # each request's own message, in order
                    run_request_checks.apply(args=(pk,))
            elapsed = time.perf_counter() - started
            assert not waiting.exists()
            per = 1000 * elapsed / count
            engine_ms = 1000 / engine_b
            print(f"{label}: {count} requests in {elapsed:.2f} s = {count / elapsed:,.0f}/s, "
                  f"{per:.2f} ms per request vs the engine's "
                  f"{engine_ms:.2f} ms: own overhead {per / engine_ms - 1:.1f}x", flush=True)
            if stages:
                engine_in_task = stages["engine (with its configuration)"]
                print(f"  per request: {per:.2f} ms, of which "
                      + ", ".join(f"{name} {1000 * t / count:.3f}"
                                  for name, t in stages.items())
                      + f" ms; own overhead {(elapsed - engine_in_task) / engine_in_task:.1f}x"
                        " the engine's work in the same task", flush=True)

        from requests_app.tasks import check_waiting_requests
        from requests_app.tasks import run_request_checks
        app.conf.task_always_eager = True  # the retries of an error would run in-line
        in_process(f"task in-process, batch {args.batch_size}", min(args.n, 1000),
                   args.batch_size)
        in_process("task in-process, batch 1", min(args.naive_n or 200, 300), 1)
        _compare_result_inserts(team, user, min(args.n, 1000), args.batch_size)
    finally:
        server.kill()
    print(f"reproduce: .venv/bin/python bench/scale_pipeline.py --database-url URL "
          f"--broker {args.broker} --n {args.n} --naive-n {args.naive_n} "
          f"--concurrency {args.concurrency} --batch-size {args.batch_size} --mode {args.mode}")


if __name__ == "__main__":
    main()
