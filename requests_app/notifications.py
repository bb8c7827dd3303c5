"""E-mail notifications through an outbox table.

``notification_enqueue`` runs inside the service's transaction and writes one
``Notification`` row per message, keyed by the audit event that caused it, then
schedules delivery after commit. ``notification_send`` is what the Celery task calls:
it locks the row, sends once, and marks it sent in the same transaction, so a retried
or redelivered task finds it sent and does nothing.
"""

from __future__ import annotations

import hashlib
import logging
import smtplib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils import translation

from .actions import ACTIONS
from .actions import Audience
from .credential_keys import credential_link_url
from .dispatch import dispatch_on_commit
from .models import APPROVERS_GROUP
from .models import CheckStatus
from .models import Notification
from .models import RelayRequest
from .models import RequestEvent
from .models import content_fingerprint

__all__ = [
    "ARRIVAL_KINDS",
    "KINDS_BY_TRIGGER",
    "notification_enqueue",
    "notification_enqueue_checked",
    "notification_message_id",
    "notification_record",
    "notification_record_many",
    "notification_record_failure",
    "notification_send",
    "approver_emails",
    "bounded_context",
    "owner_emails",
    "owner_recipients",
    "render_notification",
]

log = logging.getLogger(__name__)

# trigger -> (template kind, audience): each transition's declared notice (actions.py),
# plus the two triggers that are not transitions.
KINDS_BY_TRIGGER: dict[str, tuple[str, Audience]] = {
    **{name: (a.notice.kind, a.notice.audience) for name, a in ACTIONS.items() if a.notice},
    # checks_passed with an ``error`` verdict: the checks could not run, approvers decide
    "checks_error": ("checks_error", Audience.APPROVERS),
    "handover": ("handover", Audience.OWNERS),  # not a state change, but audited
}

# The mails that tell approvers a request reached their queue (``Notice.arrival``), and
# the one for checks that could not run: once per arrival of new content.
ARRIVAL_KINDS: frozenset[str] = frozenset(
    {*(a.notice.kind for a in ACTIONS.values() if a.notice and a.notice.arrival),
     "checks_error"}
)


def _new_arrival(request: RelayRequest, event: RequestEvent | None, fingerprint: str) -> bool:
    """Whether the approvers have not yet been told about the request in its queue.

    Not when the request was already in the queue before the event (an override of a
    request pending approval), nor when the last arrival mail was about this very
    content: a resubmit without changes, or an approver's re-run of the checks, brings
    nothing new to read. Runs under the request's row lock (the services hold it), so
    two arrivals cannot both find no earlier mail.
    """
    if event is not None and event.from_state == event.to_state:
        return False
    last = (Notification.objects.filter(request=request, kind__in=ARRIVAL_KINDS)
            .order_by("-pk").values_list("context", flat=True).first())
    return not (last and last.get("content_fingerprint") == fingerprint)


def owner_emails(*emails: str | None) -> list[str]:
    """The one rule for a request's own people: its contact, its team's contact, who
    created and who submitted it; never anyone of another team."""
    return sorted({e.lower() for e in emails if e})


def owner_recipients(request: RelayRequest) -> list[str]:
    submitter = request.submitted_by.email if request.submitted_by is not None else None
    return owner_emails(request.contact_email, request.team.contact_email,
                        request.created_by.email, submitter)


def approver_emails() -> list[str]:
    users = get_user_model().objects.filter(
        groups__name=APPROVERS_GROUP, is_active=True
    ).exclude(email="")
    return sorted({u.email.lower() for u in users})


def notification_enqueue(
    *,
    request: RelayRequest,
    trigger: str,
    event: RequestEvent | None = None,
    extra_recipients: Sequence[str] = (),
    extra_context: dict[str, Any] | None = None,
) -> Notification | None:
    """Record the notification a trigger causes; delivery is scheduled after commit.

    Call it inside the transaction of the change: the row then exists exactly when the
    change committed, which is what lets the sweep recover a lost publish.
    ``extra_context`` adds facts the event does not hold (the config version that no
    longer has a revoked entry).
    """
    if trigger == "checks_passed" and request.check_verdict == CheckStatus.ERROR:
        trigger = "checks_error"
    spec = KINDS_BY_TRIGGER.get(trigger)
    if spec is None:
        return None
    kind, audience = spec
    fingerprint = ""
    if kind in ARRIVAL_KINDS:
        fingerprint = content_fingerprint(request)
        if not _new_arrival(request, event, fingerprint):
            log.info("request %s: approvers already told of this content", request.pk)
            return None
    if audience is Audience.APPROVERS:
        recipients = approver_emails()
    elif audience is Audience.OWNERS_AND_APPROVERS:
        recipients = sorted({*owner_recipients(request), *approver_emails()})
    else:
        recipients = owner_recipients(request)
    if extra_recipients:
        # a decision that concerns a second party (the team handing an entry over)
        recipients = sorted({*recipients, *(e.lower() for e in extra_recipients if e)})
    if not recipients:
        log.info("no recipients for %s on request %s", kind, request.pk)
        return None
    if event is None:
        event = request.events.order_by("-pk").first()
    key = f"request:{request.pk}:{kind}:event:{event.pk if event else 'none'}"
    context = {
        "comment": event.comment if event else "",
        "actor": event.actor_name if event else "",
        "verdict": request.check_verdict,
        # What failed at the time of the event, not at the time of sending: a
        # mail delayed past a resubmission must not show the newer results.
        "failing_checks": [
            {"check_id": c.check_id, "subject": c.subject, "status": c.status,
             "detail": c.detail, "fix": (c.evidence or {}).get("fix", []),
             "message": (c.evidence or {}).get("message")}
            for c in request.checks.filter(status__in=(
                CheckStatus.FAIL, CheckStatus.ERROR,
                *((CheckStatus.WARN,) if kind == "checks_failed" else ())))
        ] if kind in ("checks_failed", "checks_error") else [],
        **(extra_context or {}),
    }
    if fingerprint:  # what the next arrival compares with (``_new_arrival``)
        context["content_fingerprint"] = fingerprint
    if kind == "handover" and event is not None and event.parameters.get("detached_renewals"):
        # The new owners must learn which pending renewals no longer replace their entry.
        context["detached_renewals"] = list(event.parameters["detached_renewals"])
    notification, _created = notification_record(
        request=request, kind=kind, key=key, recipients=recipients, context=context)
    return notification


def notification_enqueue_checked(
    items: Sequence[tuple[RelayRequest, str, RequestEvent, list[dict[str, Any]]]],
) -> None:
    """:func:`notification_enqueue` for a batch of recorded check runs, in a constant
    number of queries: ``(request, trigger, event, checks)`` with ``checks_passed`` or
    ``checks_failed`` as the trigger and the run's results as the engine gave them.

    The same rules as one by one (the trigger's kind and audience, one arrival mail per
    content, the failing checks quoted as at the event): the last arrival mail of every
    request is read in one query, the approvers once, and the rows are written with one
    INSERT. ``request.team``, ``created_by`` and ``submitted_by`` should be loaded with
    the request (``select_related``). Runs under the requests' row locks, as the single
    path does.
    """
    if not items:
        return
    shown = {"checks_failed": (CheckStatus.FAIL, CheckStatus.ERROR, CheckStatus.WARN),
             "checks_error": (CheckStatus.FAIL, CheckStatus.ERROR)}
    last_arrival: dict[int, Any] = {}
    for request_id, context in (Notification.objects.filter(
            request_id__in=[r.pk for r, *_rest in items], kind__in=ARRIVAL_KINDS)
            .order_by("request_id", "-pk").values_list("request_id", "context")):
        last_arrival.setdefault(request_id, context)
    approvers: list[str] | None = None
    rows = []
    for request, trigger, event, checks in items:
        if trigger == "checks_passed" and request.check_verdict == CheckStatus.ERROR:
            trigger = "checks_error"
        spec = KINDS_BY_TRIGGER.get(trigger)
        if spec is None:
            continue
        kind, audience = spec
        fingerprint = ""
        if kind in ARRIVAL_KINDS:
            fingerprint = content_fingerprint(request)
            last = last_arrival.get(request.pk)
            if event.from_state == event.to_state or (
                    last and last.get("content_fingerprint") == fingerprint):
                log.info("request %s: approvers already told of this content", request.pk)
                continue
        recipients: list[str] = []
        if audience is not Audience.OWNERS:
            approvers = approver_emails() if approvers is None else approvers
            recipients = approvers
        if audience is not Audience.APPROVERS:
            recipients = sorted({*owner_recipients(request), *recipients})
        if not recipients:
            log.info("no recipients for %s on request %s", kind, request.pk)
            continue
        context = {
            "comment": event.comment, "actor": event.actor_name,
            "verdict": request.check_verdict,
            "failing_checks": sorted(
                ({"check_id": c["id"], "subject": c["subject"], "status": c["status"],
                  "detail": c.get("detail", ""), "fix": (c.get("evidence") or {}).get("fix", []),
                  "message": (c.get("evidence") or {}).get("message")}
                 for c in checks if c["status"] in shown.get(kind, ())),
                key=lambda c: (c["check_id"], c["subject"])),
        }
        if fingerprint:
            context["content_fingerprint"] = fingerprint
        rows.append(Notification(
            request=request, kind=kind, recipients=recipients,
            event_key=f"request:{request.pk}:{kind}:event:{event.pk}",
            context=bounded_context(context)))
    for notification in Notification.objects.bulk_create(rows):
        dispatch_on_commit("send_notification", notification.pk)


# A mail quotes what people typed (comments, reasons) and what DNS said (check
# details): each text at most MAIL_TEXT_LIMIT characters, each list at most
# MAIL_LIST_LIMIT items, so no input makes a mail unbounded (the page has the rest).
MAIL_TEXT_LIMIT = 2000
MAIL_LIST_LIMIT = 50


def bounded_context(value: Any) -> Any:
    """``value`` with every string cut to ``MAIL_TEXT_LIMIT`` characters (marked with
    an ellipsis and a note) and every list to ``MAIL_LIST_LIMIT`` items, recursively."""
    if isinstance(value, str):
        if len(value) <= MAIL_TEXT_LIMIT:
            return value
        return value[:MAIL_TEXT_LIMIT] + f"... [cut at {MAIL_TEXT_LIMIT} characters]"
    if isinstance(value, dict):
        return {k: bounded_context(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bounded_context(v) for v in value[:MAIL_LIST_LIMIT]]
    return value


def notification_record(
    *, request: RelayRequest, kind: str, key: str, recipients: list[str],
    context: dict[str, Any],
) -> tuple[Notification, bool]:
    """Write one outbox row under its event key (once) and send it after commit.

    Returns the row and whether this call created it (a repeat finds the first one).
    """
    notification, created = Notification.objects.get_or_create(
        event_key=key,
        defaults={"request": request, "kind": kind, "recipients": recipients,
                  "context": bounded_context(context)},
    )
    if created:
        dispatch_on_commit("send_notification", notification.pk)
    return notification, created


def _owners_and_approvers(request_ids: list[int]) -> dict[int, list[str]]:
    """Each request's owners (the ``owner_emails`` rule) plus the approvers, in two
    queries for any number of requests."""
    approvers = approver_emails()
    return {
        pk: owner_emails(*owners, *approvers)
        for pk, *owners in RelayRequest.objects.filter(pk__in=request_ids).values_list(
            "pk", "contact_email", "team__contact_email", "created_by__email",
            "submitted_by__email")
    }


def notification_record_many(*, kind: str,
                             messages: list[tuple[int, str, dict[str, Any]]]) -> None:
    """Write one outbox row per ``(request id, event key, context)`` to the request's
    owners and the approvers, each key once, and send them after commit.

    For the nightly drift batch: a constant number of queries whatever the number of
    messages, and the requests are not loaded.
    """
    recipients = _owners_and_approvers([request_id for request_id, _key, _ctx in messages])
    rows = [
        Notification(request_id=request_id, kind=kind, event_key=key,
                     recipients=recipients.get(request_id, []),
                     context=bounded_context(context))
        for request_id, key, context in messages
    ]
    Notification.objects.bulk_create([n for n in rows if n.recipients], ignore_conflicts=True)
    keys = [n.event_key for n in rows]
    for pk in Notification.objects.filter(event_key__in=keys).values_list("pk", flat=True):
        dispatch_on_commit("send_notification", pk)


def notification_message_id(notification: Notification) -> str:
    """The Message-ID of this notification, the same on every attempt.

    Derived from the row, not drawn at random: if a worker dies after the SMTP server
    accepted the message but before the ``sent`` mark committed, the resend carries the
    same Message-ID, so mail stores and clients can recognise the duplicate. The
    creation time is mixed in so that two installations (staging, production) whose
    primary keys coincide never produce the same id.
    """
    if notification.message_id:
        return notification.message_id
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2]
    seed = f"{notification.event_key}|{notification.created_at.isoformat()}"
    digest = hashlib.sha256(seed.encode()).hexdigest()[:20]
    return f"<relaydesk.{notification.pk}.{digest}@{domain}>"


def _is_permanent(exc: smtplib.SMTPException) -> bool:
    """A 5xx answer will not change by retrying (RFC 5321 4.2.1); 4xx and I/O errors may."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _msg in exc.recipients.values()]
        return bool(codes) and all(500 <= code < 600 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 500 <= exc.smtp_code < 600
    return False


def render_notification(notification: Notification) -> EmailMultiAlternatives:
    """Build the message: plain text plus HTML, organisation's From/Return-Path rules.

    In the organisation's language (``RELAYDESK_MAIL_LANGUAGE``, docs/i18n.md): a worker
    renders it, outside any browser's request, and one mail goes to several people.
    """
    with translation.override(settings.RELAYDESK_MAIL_LANGUAGE):
        return _render_notification(notification)


def _render_notification(notification: Notification) -> EmailMultiAlternatives:
    request = notification.request
    base = settings.RELAYDESK_BASE_URL.rstrip("/")
    context: dict[str, Any] = {
        **bounded_context(notification.context),  # rows written before the bound too
        "request": request,
        "url": base + reverse("requests:detail", kwargs={"pk": request.pk}),
        "snippets_url": base + reverse("requests:detail", kwargs={"pk": request.pk}) + "#snippets",
        "failing_checks": bounded_context(notification.context).get("failing_checks") or [],
    }
    if notification.context.get("credential_id"):
        # The one-time link's token is derived from the key now, never stored in the row.
        context["credential_url"] = credential_link_url(notification.context["credential_id"])
    template = f"requests_app/emails/{notification.kind}"
    subject = " ".join(
        render_to_string(f"{template}_subject.txt", context).split()
    )
    body = render_to_string(f"{template}_body.txt", context)
    html = render_to_string(f"{template}_body.html", {**context, "text_body": body})
    message_id = notification_message_id(notification)
    message = EmailMultiAlternatives(
        subject=subject,
        body=body,
        # The envelope sender is the bounce address (Return-Path); the header From is
        # the service address: both on the organisation's approved domain.
        from_email=settings.RELAYDESK_RETURN_PATH,
        to=notification.recipients,
        reply_to=[settings.RELAYDESK_HELPDESK_EMAIL],
        headers={
            "From": settings.DEFAULT_FROM_EMAIL,
            "Message-ID": message_id,
            "Auto-Submitted": "auto-generated",
        },
    )
    message.attach_alternative(html, "text/html")
    return message


def notification_send(*, notification_id: int) -> bool:
    """Send one pending notification; returns False when there was nothing to do.

    The row stays locked while the SMTP server accepts the message and is marked sent
    in the same transaction: a transient failure (4xx, connection refused, timeout)
    rolls back to ``pending`` and propagates so the task retries; a success can never be
    sent again. A permanent refusal (5xx) is recorded as ``failed`` with the server's
    answer and not retried, because no amount of retrying changes it and the sweep would
    otherwise resend it forever. The stable Message-ID lets receivers drop the one
    duplicate a worker crash between SMTP acceptance and commit could cause.
    """
    with transaction.atomic():
        notification = (
            Notification.objects.select_for_update()
            .select_related("request", "request__team")
            .filter(pk=notification_id)
            .first()
        )
        # Only ``pending`` is sendable: ``sent`` is done, ``failed`` was refused for good.
        if notification is None or notification.status != Notification.Status.PENDING:
            return False
        message = render_notification(notification)
        notification.message_id = message.extra_headers["Message-ID"]
        notification.attempts += 1
        try:
            message.send(fail_silently=False)
        except smtplib.SMTPException as exc:
            if not _is_permanent(exc):
                raise
            log.warning("notification %s refused for good: %r", notification_id, exc)
            notification.status = Notification.Status.FAILED
            notification.last_error = repr(exc)[:2000]
            notification.save(
                update_fields=["status", "message_id", "attempts", "last_error", "updated_at"]
            )
            return False
        notification.status = Notification.Status.SENT
        notification.sent_at = timezone.now()
        notification.save(
            update_fields=["status", "sent_at", "message_id", "attempts", "updated_at"]
        )
    return True


def notification_record_failure(*, notification_id: int, error: str,
                                retry_in: float | None = None) -> None:
    """Count a failed attempt so approvers and the sweep can see why mail waits.

    ``retry_in`` is when the task's own retry comes; until then the sweep does not start
    a second chain of retries for the same row (``None``: the chain gave up).
    """
    now = timezone.now()
    Notification.objects.filter(pk=notification_id, status=Notification.Status.PENDING).update(
        attempts=F("attempts") + 1, last_error=error[:2000], updated_at=now,
        next_attempt_at=now + timedelta(seconds=retry_in) if retry_in is not None else None,
    )
