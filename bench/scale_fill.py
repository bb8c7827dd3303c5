"""Fill a database with a large organisation's history: N requests, 200 teams, their audit
events, check results and active entries, in bulk (minutes, not hours, for 100k).

    python bench/scale_fill.py [--n 100000] [--teams 200] [--database-url URL]

The scale benchmarks (``bench/scale_audit_dashboard.py``, ``scale_relay.py``,
``scale_pipeline.py``) import :func:`fill` after ``bench.django_env.setup_django``; the CLI
migrates the database, fills it and prints the counts and the time taken.

Why a generator of its own rather than the factories: a factory ``save()`` per row (and
the audit trail's per-event ``create``) would take hours for 100k requests and 560k events;
``bulk_create`` in batches of a few thousand rows takes minutes on PostgreSQL and SQLite
alike, and the result is deterministic (the same N gives the same rows), so figures from
two runs compare.

The shape follows the issue's measurement (100k requests: 561k events, 644k check
results, 50k-100k active entries): about two thirds of the requests are active, the rest
spread over the queue and the terminal states; events and check results per request follow
each request's path through the workflow. Addresses are global unicast (11.0.0.0/8 and
2a02:898::/32) so the relay config renderer, which refuses private and documentation
ranges, accepts every active entry.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["FillStats", "PURPOSE", "fill", "filled_count", "main"]

PURPOSE = "scale-fill"  # marks the filled rows (purpose column) so a re-run can find them
BATCH = 5000

# A request's path through the workflow, by position modulo 20: its final state and the
# (action, from, to) transitions that led there after creation (an event each).
_SUBMIT = [("submit", "draft", "checking")]
_CHECKED_OK = [*_SUBMIT, ("checks_passed", "checking", "pending_approval")]
_APPROVED = [*_CHECKED_OK, ("approve", "pending_approval", "provisioning"),
             ("provisioned", "provisioning", "active")]
_PATHS: list[tuple[str, list[tuple[str, str, str]]]] = (
    [("active", _APPROVED)] * 13
    + [
        ("pending_approval", _CHECKED_OK),
        ("pending_approval", _CHECKED_OK),
        ("needs_changes", [*_SUBMIT, ("checks_failed", "checking", "needs_changes")]),
        ("rejected", [*_CHECKED_OK, ("reject", "pending_approval", "rejected")]),
        ("revoked", [*_APPROVED, ("revoke", "active", "revoked")]),
        ("expired", [*_APPROVED, ("expire", "active", "expired")]),
        ("draft", []),
    ]
)
_DECIDED = {"active", "rejected", "revoked", "expired"}
_SERVER_CHECKS = ("forward_dns", "reverse_dns", "fcrdns", "address_policy", "spf", "dmarc",
                  "dkim")
_ACCOUNT_CHECKS = ("spf", "dmarc", "dkim")


@dataclass(frozen=True)
class FillStats:
    """What :func:`fill` inserted and how long it took (seconds)."""

    requests: int
    active: int
    teams: int
    events: int
    check_results: int
    seconds: float


def _v4(i: int) -> str:
    return f"11.{(i >> 16) & 255}.{(i >> 8) & 255}.{(i & 255) or 1}"


def _v6(i: int) -> str:
    return f"2a02:898:{(i >> 16) & 0xFFFF:x}:{i & 0xFFFF:x}::25"


def filled_count() -> int:
    """How many filled requests the database holds (0: not filled yet)."""
    from requests_app.models import RelayRequest  # deferred: Django is set up by the caller

    return RelayRequest.objects.filter(purpose=PURPOSE).count()


def _users_and_teams(teams: int) -> tuple[list[Any], list[Any], Any]:
    from django.contrib.auth import get_user_model  # deferred: Django is set up by the caller

    from requests_app.models import Membership
    from requests_app.models import Team

    user_model = get_user_model()
    team_rows = Team.objects.bulk_create(
        [Team(slug=f"team-{t:03d}", name=f"Team {t:03d}",
              contact_email=f"team-{t:03d}@corp.example.org") for t in range(teams)],
        batch_size=BATCH)
    users = user_model.objects.bulk_create(
        [user_model(username=f"dev-{t:03d}", email=f"dev-{t:03d}@corp.example.org")
         for t in range(teams)], batch_size=BATCH)
    Membership.objects.bulk_create(
        [Membership(team=team, user=user) for team, user in zip(team_rows, users, strict=True)],
        batch_size=BATCH)
    approver, _ = user_model.objects.get_or_create(
        username="approver-scale", defaults={"email": "approver@corp.example.org"})
    return team_rows, users, approver


def _request_rows(start: int, stop: int, n: int, now: datetime, span: timedelta,
                  team_rows: list[Any], users: list[Any], approver: Any) -> Iterator[Any]:
    from requests_app.models import RelayRequest  # deferred: Django is set up by the caller

    for i in range(start, stop):
        state, path = _PATHS[i % len(_PATHS)]
        t = i % len(team_rows)
        account = i % 10 == 9
        created = now - span * (n - i) / n
        submitted = created + timedelta(minutes=30) if path else None
        decided = (submitted + timedelta(hours=1 + (i * 7919) % 96)
                   if submitted and state in _DECIDED else None)
        v6 = i % 3 == 1
        fields: dict[str, Any] = {
            "kind": "account" if account else "server", "state": state,
            "team": team_rows[t], "created_by": users[t],
            "contact_email": f"team-{t:03d}@corp.example.org",
            "sender_domains": [f"app{i}.team{t}.example.org"],
            "expected_daily_volume": 100 + i % 900, "purpose": PURPOSE,
            "created_at": created, "updated_at": decided or submitted or created,
            "submitted_at": submitted, "submitted_by": users[t] if submitted else None,
            "decided_at": decided, "decided_by": approver if decided else None,
            "activated_at": decided if state in {"active", "revoked", "expired"} else None,
            "check_verdict": "" if not path else ("fail" if state == "needs_changes"
                                                  else "pass"),
            "checks_ran_at": submitted, "check_attempts": 1 if path else 0,
            "recertify_by": (decided + timedelta(days=365)).date()
            if state == "active" and decided else None,
        }
        if account:
            fields.update(account_name=f"svc-{i}", tls_mode="starttls",
                          sender_addresses=[f"noreply@app{i}.team{t}.example.org"],
                          use_case=PURPOSE)
        else:
            fields.update(fqdn=f"host{i}.team{t}.example.org",
                          ipv4=[] if v6 else [_v4(i)], ipv6=[_v6(i)] if v6 else [])
        row = RelayRequest(**fields)
        row.search_text = " ".join([row.fqdn, row.account_name, *row.ipv4, *row.ipv6,
                                    *row.sender_domains]).lower()
        yield row


def _history(req: Any, i: int, users: list[Any], approver: Any) -> tuple[list[Any], list[Any]]:
    from requests_app.models import CheckResult  # deferred: Django is set up by the caller
    from requests_app.models import RequestEvent

    state, path = _PATHS[i % len(_PATHS)]
    owner = users[i % len(users)]
    subject = req.account_name or req.fqdn
    at = req.created_at
    ip = f"10.{(i >> 8) & 255}.{i & 255}.20"
    events = [RequestEvent(
        request=req, type="created", actor=owner, actor_name=owner.username, source_ip=ip,
        to_state="draft", parameters={"kind": req.kind, "subject": subject}, created_at=at)]
    for step, (action, before, after) in enumerate(path):
        at = at + timedelta(minutes=30 + step)
        system = action in {"checks_passed", "checks_failed", "provisioned", "expire"}
        actor = None if system else (owner if action == "submit" else approver)
        if before == "checking":
            events.append(RequestEvent(
                request=req, type="checks_recorded", actor=None, actor_name="system",
                from_state=before, to_state=before, created_at=at,
                parameters={"verdict": req.check_verdict, "attempt": 1,
                            "summary": {"pass": 6, "warn": 0, "fail": 1 if after ==
                                        "needs_changes" else 0, "error": 0}}))
        if action in {"approve", "reject", "revoke"}:
            at = req.decided_at if action != "revoke" else at + timedelta(days=30)
        events.append(RequestEvent(
            request=req, type="transition", actor=actor,
            actor_name=actor.username if actor else "system",
            source_ip=None if system else ip, from_state=before, to_state=after,
            comment="Looks right." if action == "approve" else "",
            parameters={"action": action}, created_at=at))
    checks = []
    if path:
        ids = _ACCOUNT_CHECKS if req.kind == "account" else _SERVER_CHECKS
        for check_id in ids:
            failed = state == "needs_changes" and check_id == "spf"
            checks.append(CheckResult(
                request=req, check_id=check_id, subject=subject,
                status="fail" if failed else "pass", created_at=req.submitted_at,
                updated_at=req.submitted_at,
                detail=f"{check_id} for {subject}: " + ("no SPF record" if failed else "ok"),
                evidence={"records": ["v=spf1 include:_spf.corp.example.org -all"],
                          "queried": subject}))
    return events, checks


def fill(n: int = 100_000, teams: int = 200, *, now: datetime | None = None,
         span_days: int = 730, progress: bool = False) -> FillStats:
    """Insert ``n`` requests across ``teams`` teams with their history; return the counts.

    Requests are created over the ``span_days`` before ``now`` (oldest first), so time
    windows (the dashboard's, the export's date range) select a realistic share. Call
    after Django is set up and migrated (``bench.django_env.setup_django``); the rows are
    marked (``purpose = PURPOSE``) and :func:`filled_count` tells a later run they exist.
    """
    from django.db import transaction  # deferred: Django is set up by the caller
    from django.utils import timezone

    from requests_app.models import CheckResult
    from requests_app.models import RelayRequest
    from requests_app.models import RequestEvent

    started = time.perf_counter()
    now = now or timezone.now()
    span = timedelta(days=span_days)
    team_rows, users, approver = _users_and_teams(teams)
    events_total = checks_total = active = 0
    for start in range(0, n, BATCH):
        stop = min(start + BATCH, n)
        with transaction.atomic():
            reqs = RelayRequest.objects.bulk_create(
                list(_request_rows(start, stop, n, now, span, team_rows, users, approver)),
                batch_size=BATCH)
            events: list[Any] = []
            checks: list[Any] = []
            for offset, req in enumerate(reqs):
                more_events, more_checks = _history(req, start + offset, users, approver)
                events += more_events
                checks += more_checks
                active += req.state == "active"
            RequestEvent.objects.bulk_create(events, batch_size=BATCH)
            CheckResult.objects.bulk_create(checks, batch_size=BATCH)
        events_total += len(events)
        checks_total += len(checks)
        if progress:
            print(f"  {stop}/{n} requests, {events_total} events, {checks_total} check "
                  f"results, {time.perf_counter() - started:.0f} s", flush=True)
    _settle()
    return FillStats(n, active, teams, events_total, checks_total,
                     time.perf_counter() - started)


def _settle() -> None:
    """Bring the filled tables to the state autovacuum keeps a live database in.

    Why: right after a bulk load PostgreSQL has no statistics (the planner guesses 50
    rows and picks nested loops) and no hint bits or visibility map (the first reads
    write every page). Measured right away, that is a bulk-load artefact, not the
    application: the dashboard's queries took 2-3x longer before ``VACUUM ANALYZE``.
    """
    from django.db import connection  # deferred: Django is set up by the caller

    from requests_app.models import CheckResult
    from requests_app.models import RelayRequest
    from requests_app.models import RequestEvent
    from requests_app.models import Team

    tables = [m._meta.db_table for m in (Team, RelayRequest, RequestEvent, CheckResult)]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            for table in tables:
                cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(table)}")
        elif connection.vendor == "sqlite":
            cursor.execute("ANALYZE")


def main(argv: list[str] | None = None) -> FillStats:
    """Migrate the database (a fresh SQLite file unless ``--database-url``) and fill it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--teams", type=int, default=200)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args(argv)
    from bench.django_env import setup_django

    setup_django(args.database_url, prefix="relaydesk-fill-")
    import django.db

    stats = fill(args.n, args.teams, progress=True)
    print(f"filled {stats.requests} requests ({stats.active} active), {stats.teams} teams, "
          f"{stats.events} audit events, {stats.check_results} check results in "
          f"{django.db.connection.vendor}: {stats.seconds:.0f} s")
    print("reproduce: python bench/scale_fill.py --n {} --teams {}{}".format(
        args.n, args.teams, " --database-url URL" if args.database_url else ""))
    return stats


if __name__ == "__main__":
    main()
