"""Celery tasks: thin, idempotent, named explicitly.

Each takes ids, re-fetches its row, does nothing if the row is gone or has moved
past the state the task expects, and calls one service or domain module.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import connection
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError

from . import checking
from .check_dispatch import CHECKS_TOKEN
from .check_dispatch import check_batch_size
from .check_dispatch import lease_seconds
from .check_dispatch import wake_disarm
from .credential_tasks import apply_credential
from .credential_tasks import credential_sweep
from .credential_tasks import issue_credential
from .directory_tasks import provision_directory
from .drift import recheck_active_entries as drift_recheck_active_entries
from .models import DirectoryChange
from .models import Notification
from .models import RelayRequest
from .models import RequestState
from .models import content_fingerprint
from .notifications import notification_record_failure
from .notifications import notification_send
from .recertification import recertification_sweep as recertification_run
from .relay import relay_config_rebuild
from .relay import relay_config_stale
from .services import CheckRunResult
from .services import request_record_checks_many

__all__ = [
    "apply_credential",
    "check_waiting_requests",
    "credential_sweep",
    "issue_credential",
    "provision_directory",
    "provision_request",
    "recheck_active_entries",
    "rebuild_relay_config",
    "recertification_sweep",
    "run_request_checks",
    "send_notification",
    "sweep_pending_work",
]

log = logging.getLogger(__name__)


class ChecksStillErroring(Exception):
    """DNS did not answer; the task retries with backoff before handing over."""


@shared_task(name="relaydesk.run_request_checks", bind=True, acks_late=True, max_retries=None)
def run_request_checks(  # type: ignore[no-untyped-def]
    self, request_id: int, attempt: int | None = None
) -> str:
    """Run the DNS checks of a request in ``checking`` and record the results.

    ``error`` results alone (timeouts, SERVFAIL) are stored but the request stays in
    ``checking`` and the task retries with exponential backoff; after
    ``RELAY_CHECK_MAX_RETRIES`` retries the request goes to approvers with the error
    shown. Fail (even beside an error)/pass/warn are definitive and recorded at once.

    One retry chain per request: the retry is scheduled with ``attempt`` (the row's
    ``check_attempts`` it expects) and its due time is stored in
    ``check_next_attempt_at``. A message without ``attempt`` (the first dispatch, or
    the sweep's) does nothing while a retry is still due; a retry whose attempt was
    recorded by another delivery does nothing; and the attempt is compared again under
    the row lock when recording, so two copies of one message record one run.

    A first run takes along up to ``RELAY_CHECK_BATCH_SIZE - 1`` other requests still
    waiting for their first run (:func:`_claim_waiting`) and runs all of them in one
    batch of the engine: in a burst the task's own cost (transaction, configuration,
    event loop) is paid once per batch, not once per request. The batch is recorded in
    one transaction (``request_record_checks_many``), with the same rules per request,
    and a retry is per request. The messages of the requests taken along then skip:
    their look-up reads three columns, not the row.
    """
    found = RelayRequest.objects.filter(pk=request_id).values_list(
        "state", "check_next_attempt_at", "check_attempts").first()
    if found is None:
        log.info("request %s is gone; nothing to check", request_id)
        return "missing"
    state, due, attempts = found
    if state != RequestState.CHECKING:
        return f"skipped:{state}"
    if attempt is None:
        if due is not None and due > timezone.now():
            return "skipped:retry-scheduled"
    elif attempt != attempts:
        return "skipped:superseded"
    request = RelayRequest.objects.filter(pk=request_id).first()
    if request is None:
        return "missing"
    batch = [request]
    if attempt is None and check_batch_size() > 1:
        # A first run: take the other submissions waiting for theirs along (a burst).
        batch += _claim_waiting(check_batch_size() - 1, own=request).rows
    reports = checking.run_checks_for_many(batch) if len(batch) > 1 else [None]
    if reports[0] is None:
        try:
            reports[0] = checking.run_checks_for(request)
        except ValueError:
            # a name the engine refuses: fail as before, without holding a claim
            _release(batch[1:])
            RelayRequest.objects.filter(pk=request.pk, state=RequestState.CHECKING).update(
                check_next_attempt_at=None)
            raise
    recorded, countdowns = _record_batch(batch, reports, own=request,
                                         own_retries=self.request.retries)
    own = recorded[request.pk]
    if own is None:
        return "discarded"
    countdown = countdowns[request.pk]
    if own.state == RequestState.CHECKING and countdown is not None:
        raise self.retry(kwargs={"attempt": own.check_attempts},
                         exc=ChecksStillErroring(reports[0]["verdict"]), countdown=countdown)
    return str(reports[0]["verdict"])


@shared_task(name="relaydesk.check_waiting_requests", bind=True, acks_late=True)
def check_waiting_requests(self) -> str:  # type: ignore[no-untyped-def]
    """Check the requests waiting in ``checking`` for their first run, a batch a task.

    The wake-up message of a burst (``check_dispatch``): one message, not one per
    submission. The token is disarmed first, so a submission committed after the claim
    below sends a new message. A full claim means more may wait: one more message goes
    out before the engine runs, so a second worker process takes the next batch
    meanwhile (in eager mode, tests and benchmarks, the same task loops instead of
    nesting a task per batch). A claim that is not full but left waiting rows behind
    (rows another transaction held locked, which ``SKIP LOCKED`` passed over) sends a
    message a second later, as those rows have none of their own. Recording and retries
    are per request, as for ``run_request_checks`` (a retry is a message of its own).
    Should the engine or the recording fail, the claim is given back at once (not held
    until its lease runs out) and the error raised.
    """
    wake_disarm(CHECKS_TOKEN)
    size = check_batch_size()
    checked = 0
    while True:
        claim = _claim_waiting(size)
        if claim.more and not self.request.is_eager:
            _wake_next(countdown=0 if claim.full else 1)
        if claim.rows:
            try:
                reports = checking.run_checks_for_many(claim.rows)
                recorded, _countdowns = _record_batch(claim.rows, reports)
            except Exception:
                claim.give_back()
                raise
            checked += sum(1 for run in recorded.values() if run is not None)
        if not (claim.full and self.request.is_eager):
            break
    return f"checked:{checked}" if checked else "none"


def _wake_next(countdown: float) -> None:
    """One more wake-up message for the rest of a burst; the sweep if the broker is out."""
    try:
        check_waiting_requests.apply_async(countdown=countdown or None)
    except OperationalError:
        log.warning("broker unavailable: the rest of the burst is left for the sweep")


def _record_batch(
    batch: list[RelayRequest], reports: list[dict | None], *,
    own: RelayRequest | None = None, own_retries: int = 0,
) -> tuple[dict[int, RelayRequest | None], dict[int, float | None]]:
    """Record the engine's reports of a batch in one transaction; retries per request.

    A member the engine refused (``None`` report) is released to run alone. Every member
    but ``own`` (the task's own request, which retries with ``self.retry``) whose run
    erred with retries left gets a message of its own with its ``attempt``. Returns what
    was recorded per request (``None``: discarded) and each member's retry countdown.
    """
    runs: list[CheckRunResult] = []
    countdowns: dict[int, float | None] = {}
    for member, report in zip(batch, reports, strict=True):
        if report is None:
            _release([member])  # its names refuse the engine: it runs alone, as before
            continue
        # The row's counter survives a lost chain (the sweep's message starts at 0).
        done = max(own_retries if member is own else 0, member.check_attempts)
        final = done >= settings.RELAY_CHECK_MAX_RETRIES
        countdowns[member.pk] = (
            None if final else min(settings.RELAY_CHECK_RETRY_BACKOFF * 2 ** done, 900))
        # Fingerprint the row as loaded: the results belong to exactly this content.
        runs.append(CheckRunResult(
            request_id=member.pk, checks=report["checks"], final=final,
            fingerprint=content_fingerprint(member), attempt=member.check_attempts,
            retry_in=countdowns[member.pk]))
    recorded = request_record_checks_many(runs)
    for member in batch:  # a retry of one taken along: a message of its own
        if member is own:
            continue
        again = recorded.get(member.pk)
        countdown = countdowns.get(member.pk)
        if again is not None and again.state == RequestState.CHECKING and countdown:
            run_request_checks.apply_async(
                kwargs={"request_id": member.pk, "attempt": again.check_attempts},
                countdown=countdown)
    return recorded, countdowns


@dataclass
class Claim:
    """What :func:`_claim_waiting` took: the rows, whether more may wait, its lease."""

    rows: list[RelayRequest]
    ids: list[int]
    lease: datetime
    full: bool  # as many as asked for: more may wait behind them
    left_behind: bool = False  # rows still waiting that the claim passed over (locked)

    @property
    def more(self) -> bool:
        return self.full or self.left_behind

    def give_back(self) -> None:
        """Clear this claim's lease, so the next wake-up or the sweep takes the rows."""
        RelayRequest.objects.filter(pk__in=self.ids, check_next_attempt_at=self.lease,
                                    state=RequestState.CHECKING).update(
            check_next_attempt_at=None)


def _claim_waiting(limit: int, own: RelayRequest | None = None) -> Claim:
    """Claim up to ``limit`` requests (other than ``own``) waiting for their first run.

    Why: in a burst, one task per request pays a transaction, a configuration read and
    an event loop for a few milliseconds of DNS work each; one task that takes the
    waiting ones pays them once (issue 15). The claim is a lease written in
    ``check_next_attempt_at`` (a due time in the near future, see
    ``check_dispatch.lease_seconds``), in one short transaction: messages of their own,
    delivered meanwhile, find a run due and skip (as they do for a scheduled retry),
    and no other task claims them. On PostgreSQL the rows are taken with ``FOR UPDATE
    SKIP LOCKED`` (two tasks never wait for each other's claim; a row some other
    transaction holds is passed over, and ``left_behind`` says so); SQLite's
    transactions are IMMEDIATE (settings), so two claims run one after the other.
    Should the worker die with a claim, the lease runs out and the sweep dispatches
    each request again (at-least-once); recording compares ``check_attempts`` under
    the row lock, so a request is recorded once per attempt whoever runs it.
    """
    now = timezone.now()
    lease = now + timedelta(seconds=lease_seconds())
    skip_locked = connection.features.has_select_for_update_skip_locked
    with transaction.atomic():
        waiting = RelayRequest.objects.filter(
            state=RequestState.CHECKING, check_next_attempt_at__isnull=True,
        ).order_by("pk")
        if own is not None:
            waiting = waiting.exclude(pk=own.pk)
        if skip_locked:
            waiting = waiting.select_for_update(skip_locked=True)
        ids = list(waiting.values_list("pk", flat=True)[:limit])
        claimed = ids and RelayRequest.objects.filter(
            pk__in=ids, state=RequestState.CHECKING, check_next_attempt_at__isnull=True,
        ).update(check_next_attempt_at=lease)
        if own is not None:
            # The task's own request too: a duplicate of its message skips meanwhile.
            RelayRequest.objects.filter(pk=own.pk, state=RequestState.CHECKING,
                                        check_next_attempt_at__isnull=True).update(
                check_next_attempt_at=lease)
    claim = Claim(rows=[], ids=ids, lease=lease, full=len(ids) >= limit)
    if skip_locked and not claim.full and own is None:
        # rows a lock hid from this claim have no message of their own: look again soon
        claim.left_behind = RelayRequest.objects.filter(
            state=RequestState.CHECKING, check_next_attempt_at__isnull=True,
        ).exclude(pk__in=ids).exists()
    if claimed:
        claim.rows = list(RelayRequest.objects.filter(
            pk__in=ids, check_next_attempt_at=lease, state=RequestState.CHECKING,
        ).order_by("pk"))
    return claim


def _release(requests: list[RelayRequest]) -> None:
    """Give claimed requests back to their own messages (or new ones)."""
    for request in requests:
        RelayRequest.objects.filter(pk=request.pk, state=RequestState.CHECKING).update(
            check_next_attempt_at=None)
        run_request_checks.delay(request.pk)


@shared_task(name="relaydesk.provision_request", acks_late=True)
def provision_request(request_id: int) -> str:
    """Build a relay config version that contains the approved request, then activate it.

    The build takes every waiting request, not only this one; one the renderer refuses
    is left out (and counted, see ``relay_config_rebuild``) without holding back the
    others.
    """
    request = RelayRequest.objects.filter(pk=request_id).first()
    if request is None or request.state != RequestState.PROVISIONING:
        return "skipped"
    version = relay_config_rebuild(reason=f"approved #{request_id}")
    return f"v{version.number}" if version else "unchanged"


@shared_task(name="relaydesk.rebuild_relay_config", acks_late=True)
def rebuild_relay_config(reason: str = "removal") -> str:
    """Rebuild after a removal (revoke, expiry) or a quota change (``reason`` says which,
    in the version's history); a no-op when nothing changed."""
    version = relay_config_rebuild(reason=reason)
    return f"v{version.number}" if version else "unchanged"


MAIL_RETRY_BACKOFF_MAX = 600.0  # seconds; far below Redis's visibility_timeout (3600)


@shared_task(name="relaydesk.send_notification", bind=True, acks_late=True, max_retries=8)
def send_notification(self, notification_id: int) -> str:  # type: ignore[no-untyped-def]
    """Deliver one outbox row; SMTP or network errors retry with exponential backoff.

    ``acks_late`` is safe because the row, not the message, says whether mail went out:
    a redelivered or duplicated task finds it ``sent`` and does nothing. The backoff
    (``RELAYDESK_MAIL_RETRY_BACKOFF`` seconds, doubling, capped at 10 minutes) is read
    when the task runs, not when the module is imported, so tests and operators can
    change it without a code change. After the last retry the row stays ``pending``
    and the sweep picks it up again, so an SMTP outage of any length delays mail but
    never loses it.
    """
    try:
        sent = notification_send(notification_id=notification_id)
    except (smtplib.SMTPException, OSError) as exc:
        retries = self.request.retries
        if retries >= self.max_retries:
            notification_record_failure(notification_id=notification_id, error=repr(exc))
            log.warning("notification %s: %r; left pending for the sweep", notification_id, exc)
            raise
        factor = float(settings.RELAYDESK_MAIL_RETRY_BACKOFF)
        countdown = min(factor * 2**retries, MAIL_RETRY_BACKOFF_MAX)
        notification_record_failure(notification_id=notification_id, error=repr(exc),
                                    retry_in=countdown)
        log.info("notification %s: %r; retry in %.1fs", notification_id, exc, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc
    return "sent" if sent else "skipped"


@shared_task(name="relaydesk.sweep_pending_work")
def sweep_pending_work() -> dict[str, int]:
    """Re-dispatch work the database says is pending but whose message may be lost.

    Runs from beat every minute. Covers a broker that was down when a service
    committed: requests stuck in ``checking`` or ``provisioning``, a served relay
    config that still has a revoked, expired or suspended entry, and unsent mail.
    Every task it sends is idempotent, so sending one twice is harmless. Work whose
    own retry is scheduled (``check_next_attempt_at``, ``next_attempt_at``) is left to
    that retry until it is overdue by the sweep interval: one retry chain per piece of
    work.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.RELAYDESK_SWEEP_AFTER_SECONDS)
    counts = {"checks": 0, "provisioning": 0, "rebuild": 0, "notifications": 0,
              "directory": 0}
    stuck = RelayRequest.objects.filter(state=RequestState.CHECKING, updated_at__lt=stale)
    # A retry (or a claim's lease) overdue by the sweep interval: a message per request.
    # A retry still coming is left to it (one retry chain).
    per_request = Q(check_next_attempt_at__lt=stale)
    if check_batch_size() > 1:
        # Waiting for a first run: one wake-up message takes them all, a batch a task.
        counts["checks"] = stuck.filter(check_next_attempt_at__isnull=True).count()
        if counts["checks"]:
            check_waiting_requests.delay()
    else:
        per_request |= Q(check_next_attempt_at__isnull=True)
    for pk in stuck.filter(per_request).values_list("pk", flat=True)[:500]:
        run_request_checks.delay(pk)
        counts["checks"] += 1
    # One build takes every waiting request: one task, not one per request (each build
    # counts an attempt for a request the renderer leaves out).
    waiting = list(RelayRequest.objects.filter(
        state=RequestState.PROVISIONING, updated_at__lt=stale
    ).order_by("pk").values_list("pk", flat=True)[:500])
    if waiting:
        provision_request.delay(waiting[0])
        counts["provisioning"] = len(waiting)
    else:
        # A removal whose rebuild message was lost: the served version still has the
        # entry. The check is exact, so nothing is rebuilt when nothing is left over.
        if relay_config_stale():
            rebuild_relay_config.delay()
            counts["rebuild"] = 1
    for pk in Notification.objects.filter(
        # a row whose own retry is still coming is left to it (one retry chain per row)
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lt=stale),
        status=Notification.Status.PENDING, updated_at__lt=stale,
    ).values_list("pk", flat=True)[:500]:
        send_notification.delay(pk)
        counts["notifications"] += 1
    for pk in DirectoryChange.objects.filter(
        status=DirectoryChange.Status.PENDING, updated_at__lt=stale
    ).values_list("pk", flat=True)[:500]:
        provision_directory.delay(pk)
        counts["directory"] += 1
    return counts


@shared_task(name="relaydesk.recheck_active_entries", acks_late=True)
def recheck_active_entries() -> dict[str, int]:
    """Nightly: re-verify active entries (bounded per run) and report drift once."""
    stats = drift_recheck_active_entries()
    return {"checked": stats.checked, "drifted": stats.drifted,
            "recovered": stats.recovered, "suspended": stats.suspended}


@shared_task(name="relaydesk.recertification_sweep", acks_late=True)
def recertification_sweep() -> dict[str, int]:
    """Daily: recertification reminders (30/7/1 days before) and expiry after the date."""
    stats = recertification_run()
    return {"reminded": stats.reminded, "expired": stats.expired}
