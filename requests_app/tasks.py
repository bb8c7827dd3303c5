"""Celery tasks: thin, idempotent, named explicitly.

Each takes ids, re-fetches its row, does nothing if the row is gone or has moved
past the state the task expects, and calls one service or domain module.
"""

from __future__ import annotations

import logging
import smtplib
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from . import checking
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
from .services import request_record_checks

__all__ = [
    "apply_credential",
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
    """
    request = RelayRequest.objects.filter(pk=request_id).first()
    if request is None:
        log.info("request %s is gone; nothing to check", request_id)
        return "missing"
    if request.state != RequestState.CHECKING:
        return f"skipped:{request.state}"
    if attempt is None:
        due = request.check_next_attempt_at
        if due is not None and due > timezone.now():
            return "skipped:retry-scheduled"
    elif attempt != request.check_attempts:
        return "skipped:superseded"
    # Fingerprint the row as loaded: the results belong to exactly this content.
    fingerprint = content_fingerprint(request)
    report = checking.run_checks_for(request)
    # The row's counter survives a lost chain (the sweep's message starts at retries=0).
    done = max(self.request.retries, request.check_attempts)
    final = done >= settings.RELAY_CHECK_MAX_RETRIES
    countdown = None if final else min(settings.RELAY_CHECK_RETRY_BACKOFF * 2 ** done, 900)
    recorded = request_record_checks(
        request_id=request_id, checks=report["checks"], final=final,
        fingerprint=fingerprint, attempt=request.check_attempts, retry_in=countdown,
    )
    if recorded is None:
        return "discarded"
    if recorded.state == RequestState.CHECKING and countdown is not None:
        raise self.retry(kwargs={"attempt": recorded.check_attempts},
                         exc=ChecksStillErroring(report["verdict"]), countdown=countdown)
    return report["verdict"]


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
    for pk in RelayRequest.objects.filter(
        # a request whose own retry is still coming is left to it (one retry chain)
        Q(check_next_attempt_at__isnull=True) | Q(check_next_attempt_at__lt=stale),
        state=RequestState.CHECKING, updated_at__lt=stale,
    ).values_list("pk", flat=True)[:500]:
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
