"""Periodic re-verification of active entries: record each run, flag and report drift.

An allowlist that only grows is how relays get abused. Every night each active entry's
checks run again (batched, concurrent, bounded per run). An entry *drifts* when a check
that did not fail at approval now fails: its FQDN no longer resolves to the address,
the PTR changed, the SPF no longer authorises the relay. ``error`` (DNS could not
answer) never flags or suspends anything. A check added after the entry was approved
is new to it, not drift: its first answer becomes the entry's baseline for that check
(docs/dns-checks.md, "Drift and new checks").

A batch costs a constant number of SQL queries whatever its size or drift: one read of
the entries, one of their approval-time failures, bulk inserts of the runs, the events
(``events.drift_event``) and the outbox rows (``notifications.notification_record_many``),
bulk updates of the flags.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db import transaction
from django.db.models import Aggregate
from django.db.models import CharField
from django.db.models import F
from django.db.models import OuterRef
from django.db.models import Subquery
from django.utils import timezone

from .checking import check_config
from .checking import spec_for
from .checks import CheckStatus
from .checks import Report
from .checks import gc_paused
from .checks import run_many_sharded
from .checks import run_many_sync
from .dispatch import dispatch_on_commit
from .dns import make_resolver
from .events import drift_event
from .events import insert_many
from .models import CheckResult
from .models import CheckRun
from .models import RelayRequest
from .models import RequestState
from .notifications import notification_record_many

__all__ = ["RecheckStats", "drift_of", "new_checks_of", "recheck_active_entries",
           "recheck_batch"]

log = logging.getLogger(__name__)


class _CheckIds(Aggregate):
    """A request's check ids joined by commas (an id with several subjects repeats).

    Why: read row by row, an entry's baseline (some eight results) made the recheck
    measurably slower (docs/dns-checks.md); the database joins the ids instead, as one
    more column of the entry's own row. ``GROUP_CONCAT`` on SQLite, ``STRING_AGG`` on
    PostgreSQL.
    """

    function = "GROUP_CONCAT"
    output_field = CharField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return self.as_sql(compiler, connection, function="STRING_AGG",
                           template="%(function)s(%(distinct)s%(expressions)s, ',')",
                           **extra_context)


# Baseline results that a failure tonight is compared with and not flagged for: failed
# or unanswered at approval (approved only with a written override).
_ACCEPTED = (CheckStatus.FAIL, CheckStatus.ERROR)
_NO_BASELINE: frozenset[str] = frozenset()

# ``baseline_ids``: the check ids of the entry's approval-time results, comma-joined
_FIELDS = ("pk", "kind", "fqdn", "ipv4", "ipv6", "sender_domains", "sender_addresses",
           "dkim_selector", "drifted_at", "suspended_at", "baseline_ids")


def _baseline_ids() -> Subquery:
    """Each entry's baseline check ids, read with the entry (no query of their own)."""
    return Subquery(CheckResult.objects.filter(request_id=OuterRef("pk")).order_by()
                    .values("request_id").annotate(ids=_CheckIds("check_id"))
                    .values("ids"))


@dataclass
class RecheckStats:
    checked: int = 0
    drifted: int = 0
    recovered: int = 0
    suspended: int = 0
    errors: int = 0
    new_checks: int = 0  # results of checks added after approval, kept as baseline
    batches: int = 0
    queries_per_batch: list[int] = field(default_factory=list)


def drift_of(report: dict[str, Any], accepted_failures: set[tuple[str, str]],
             baseline_ids: Collection[str] = ()) -> list[dict]:
    """The checks that fail now but did not fail (or were overridden) at approval.

    ``baseline_ids`` are the check ids of the entry's baseline: a check whose id it
    lacks is new to the entry, not drift (:func:`new_checks_of`). Empty, as for an entry
    without recorded results, every check is compared.
    """
    return [
        c for c in report["checks"]
        if c["status"] == CheckStatus.FAIL and (c["id"], c["subject"]) not in accepted_failures
        and (not baseline_ids or c["id"] in baseline_ids)
    ]


def new_checks_of(report: dict[str, Any], baseline_ids: Collection[str]) -> list[dict]:
    """The results of checks added after the entry was approved (ids its baseline lacks).

    An entry without any recorded result has no baseline to tell an old check from a
    new one: none is new there, and every check is compared as before.
    """
    if not baseline_ids:
        return []
    return [c for c in report["checks"] if c["id"] not in baseline_ids]


def _adopted(request_id: int, new: list[dict]) -> list[CheckResult]:
    """The new checks' results that become the entry's baseline: each check that answered.

    A check with an ``error`` result here is left out whole: it stays new (so it never
    flags) until a night it answers.
    """
    unanswered = {c["id"] for c in new if c["status"] == CheckStatus.ERROR}
    return [CheckResult(request_id=request_id, check_id=c["id"], subject=c["subject"],
                        status=c["status"], detail=c["detail"], evidence=c["evidence"])
            for c in new if c["id"] not in unanswered]


class _Row:
    """An entry as the batch needs it (a plain object, no model instance)."""

    __slots__ = _FIELDS

    def __init__(self, values: tuple[Any, ...]) -> None:
        for name, value in zip(_FIELDS, values, strict=True):
            setattr(self, name, value)


@transaction.atomic
def _record(rows: list[_Row], reports: list[Report], now: Any, stats: RecheckStats) -> None:
    pks = [r.pk for r in rows]
    accepted: dict[int, set[tuple[str, str]]] = {pk: set() for pk in pks}
    for request_id, check_id, subject in CheckResult.objects.filter(
        request_id__in=pks, status__in=_ACCEPTED
    ).values_list("request_id", "check_id", "subject"):
        accepted[request_id].add((check_id, subject))
    adopted: list[CheckResult] = []
    runs, trail = [], []
    messages: list[tuple[int, str, dict[str, Any]]] = []
    newly_drifted, recovered = [], []
    unsuspend = False
    for row, report in zip(rows, reports, strict=True):
        data = report.as_dict()
        known = set(row.baseline_ids.split(",")) if row.baseline_ids else _NO_BASELINE
        new = new_checks_of(data, known)
        if new:
            adopted += _adopted(row.pk, new)
        drift = drift_of(data, accepted[row.pk], known)
        if data["verdict"] == CheckStatus.ERROR:
            stats.errors += 1
        runs.append(CheckRun(request_id=row.pk, ran_at=now, verdict=data["verdict"],
                             drifted=bool(drift), results=data["checks"]))
        if drift and row.drifted_at is None:
            newly_drifted.append(RelayRequest(pk=row.pk, drifted_at=now, drift_detail={
                "checks": drift, "seen_at": now.isoformat()}))
            summary = "; ".join(f"{c['id']}({c['subject']}): {c['detail']}" for c in drift)
            trail.append(drift_event(row.pk, comment=summary[:2000],
                                     parameters={"checks": drift}, at=now))
            # owners and approvers are told once per drift (the key holds the drift time)
            messages.append((row.pk, f"request:{row.pk}:drifted:{now.isoformat()}",
                             {"comment": summary[:2000]}))
        elif (not drift and row.drifted_at is not None
              and data["verdict"] != CheckStatus.ERROR):
            recovered.append(RelayRequest(pk=row.pk, drifted_at=None, drift_detail={},
                                          suspended_at=None))
            unsuspend = unsuspend or row.suspended_at is not None
            trail.append(drift_event(row.pk, comment="checks pass again; drift flag cleared",
                                     parameters={"recovered": True}, at=now))
    CheckRun.objects.bulk_create(runs, batch_size=1000)
    if adopted:  # a check added after approval: its first answer is the baseline
        CheckResult.objects.bulk_create(adopted, batch_size=1000, ignore_conflicts=True)
        stats.new_checks += len(adopted)
    RelayRequest.objects.filter(pk__in=pks).update(checks_ran_at=now)
    if newly_drifted:
        RelayRequest.objects.bulk_update(newly_drifted, ["drifted_at", "drift_detail"])
    if recovered:
        RelayRequest.objects.bulk_update(recovered, ["drifted_at", "drift_detail",
                                                     "suspended_at"])
    if trail:
        insert_many(trail)
    if messages:
        notification_record_many(kind="drifted", messages=messages)
    if unsuspend:  # a suspended entry is back: it returns to the relay config
        dispatch_on_commit("rebuild_relay_config")
    stats.drifted += len(newly_drifted)
    stats.recovered += len(recovered)


def _suspend_overdue(now: Any, stats: RecheckStats) -> None:
    hours = settings.RELAY_DRIFT_SUSPEND_AFTER_HOURS
    if hours is None:
        return
    overdue = RelayRequest.objects.filter(
        state=RequestState.ACTIVE, suspended_at__isnull=True,
        drifted_at__lte=now - timedelta(hours=hours),
    )
    pks = list(overdue.values_list("pk", flat=True))
    if not pks:
        return
    with transaction.atomic():
        RelayRequest.objects.filter(pk__in=pks).update(suspended_at=now)
        insert_many([
            drift_event(pk, comment=f"suspended: drifted for more than {hours} h",
                        parameters={"suspended": True}, at=now)
            for pk in pks
        ])
        dispatch_on_commit("rebuild_relay_config")
    stats.suspended += len(pks)


def recheck_batch(rows: list[_Row], *, resolver: Any = None, stats: RecheckStats,
                  pool: Any = None) -> None:
    """Check one batch concurrently, then record it in one transaction."""
    config = check_config()
    specs = [spec_for(r) for r in rows]
    if settings.RELAY_RECHECK_PROCESSES > 1:
        reports = run_many_sharded(specs, config, list(settings.DNS_NAMESERVERS),
                                   processes=settings.RELAY_RECHECK_PROCESSES,
                                   concurrency=settings.RELAY_RECHECK_CONCURRENCY, pool=pool)
    else:
        # No answer cache: a re-verification wants today's answers, and within the batch
        # the engine asks each name once anyway.
        resolver = resolver or make_resolver(list(settings.DNS_NAMESERVERS), config.lifetime,
                                             cache=False)
        reports = run_many_sync(specs, config, resolver,
                                concurrency=settings.RELAY_RECHECK_CONCURRENCY)
    _record(rows, reports, timezone.now(), stats)
    stats.checked += len(rows)
    stats.batches += 1


class _QueryCounter:
    """Counts the SQL statements a batch runs (an ``execute_wrapper``).

    Why not ``CaptureQueriesContext``: it renders every statement with its parameters
    as text, and a batch's bulk insert has thousands of them; counting costs nothing.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        return execute(sql, params, many, context)


def recheck_active_entries(*, limit: int | None = None, batch_size: int | None = None,
                           count_queries: bool = False) -> RecheckStats:
    """Re-verify up to ``limit`` active entries, least recently checked first."""
    limit = limit or settings.RELAY_RECHECK_MAX_PER_RUN
    batch_size = batch_size or settings.RELAY_RECHECK_BATCH_SIZE
    stats = RecheckStats()
    now = timezone.now()
    pks = list(
        RelayRequest.objects.filter(state=RequestState.ACTIVE)
        .order_by(F("checks_ran_at").asc(nulls_first=True), "pk")
        .values_list("pk", flat=True)[:limit]
    )
    with contextlib.ExitStack() as stack:
        pool = None
        if (settings.RELAY_RECHECK_PROCESSES > 1 and len(pks) > batch_size
                and not multiprocessing.current_process().daemon):
            # one set of worker processes for the whole run, not one per batch (a daemonic
            # Celery prefork child may not have children: it checks in-process instead)
            pool = stack.enter_context(ProcessPoolExecutor(settings.RELAY_RECHECK_PROCESSES))
        for start in range(0, len(pks), batch_size):
            chunk = pks[start:start + batch_size]
            counter = _QueryCounter()
            with (connection.execute_wrapper(counter) if count_queries
                  else contextlib.nullcontext()), gc_paused():
                rows = [_Row(v) for v in RelayRequest.objects.filter(pk__in=chunk)
                        .annotate(baseline_ids=_baseline_ids())
                        .order_by("pk").values_list(*_FIELDS)]
                recheck_batch(rows, stats=stats, pool=pool)
                del rows  # freed before the collector is back
            if count_queries:
                stats.queries_per_batch.append(counter.count)
    _suspend_overdue(now, stats)
    log.info("recheck: %s", stats)
    return stats
