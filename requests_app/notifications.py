"""E-mail notifications through an outbox table.

``notification_enqueue`` runs inside the service's transaction and writes one
``Notification`` row per message, keyed by the audit event that caused it, then
schedules delivery after commit. ``notification_send`` is what the Celery task calls:
it locks the row, sends once, and marks it sent in the same transaction, so a retried
or redelivered task finds it sent and does nothing.
"""

from __future__ import annotations

import logging
from email.utils import make_msgid
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from .models import APPROVERS_GROUP
from .models import Notification
from .models import RelayRequest
from .models import RequestEvent

__all__ = [
    "KINDS_BY_TRIGGER",
    "notification_enqueue",
    "notification_record_failure",
    "notification_send",
    "render_notification",
]

log = logging.getLogger(__name__)

# trigger (service action) -> (template kind, audience)
KINDS_BY_TRIGGER: dict[str, tuple[str, str]] = {
    "submit": ("submitted", "approvers"),
    "checks_failed": ("checks_failed", "owners"),
    "request_changes": ("changes_requested", "owners"),
    "approve": ("approved", "owners"),
    "reject": ("rejected", "owners"),
    "revoke": ("revoked", "owners"),
    "checks_error": ("checks_error", "approvers"),
}


def _owners(request: RelayRequest) -> list[str]:
    """Only the request's own people: never anyone of another team."""
    emails = [request.contact_email, request.team.contact_email, request.created_by.email]
    if request.submitted_by is not None:
        emails.append(request.submitted_by.email)
    return sorted({e.lower() for e in emails if e})


def _approvers() -> list[str]:
    users = get_user_model().objects.filter(
        groups__name=APPROVERS_GROUP, is_active=True
    ).exclude(email="")
    return sorted({u.email.lower() for u in users})


def notification_enqueue(
    *, request: RelayRequest, trigger: str, event: RequestEvent | None = None
) -> Notification | None:
    """Record the notification a trigger causes; delivery is scheduled after commit."""
    if trigger == "checks_passed" and request.check_verdict == "error":
        trigger = "checks_error"
    spec = KINDS_BY_TRIGGER.get(trigger)
    if spec is None:
        return None
    kind, audience = spec
    recipients = _approvers() if audience == "approvers" else _owners(request)
    if not recipients:
        log.info("no recipients for %s on request %s", kind, request.pk)
        return None
    if event is None:
        event = request.events.order_by("-pk").first()
    key = f"request:{request.pk}:{kind}:event:{event.pk if event else 'none'}"
    notification, created = Notification.objects.get_or_create(
        event_key=key,
        defaults={
            "request": request,
            "kind": kind,
            "recipients": recipients,
            "context": {
                "comment": event.comment if event else "",
                "actor": event.actor_name if event else "",
                "verdict": request.check_verdict,
            },
        },
    )
    if created:
        from .services import _dispatch

        _dispatch("send_notification", notification.pk)
    return notification


def render_notification(notification: Notification) -> EmailMultiAlternatives:
    """Build the message: plain text plus HTML, organisation's From/Return-Path rules."""
    request = notification.request
    base = settings.RELAYDESK_BASE_URL.rstrip("/")
    context: dict[str, Any] = {
        **notification.context,
        "request": request,
        "url": base + reverse("requests:detail", kwargs={"pk": request.pk}),
        "snippets_url": base + reverse("requests:detail", kwargs={"pk": request.pk}) + "#snippets",
        "failing_checks": list(request.checks.filter(status__in=("fail", "error"))),
    }
    template = f"requests_app/emails/{notification.kind}"
    subject = "".join(render_to_string(f"{template}_subject.txt", context).splitlines())
    body = render_to_string(f"{template}_body.txt", context)
    html = render_to_string(f"{template}_body.html", {**context, "text_body": body})
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2]
    message_id = notification.message_id or make_msgid(
        idstring=f"relaydesk.{notification.pk}", domain=domain
    )
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
    in the same transaction: a failure rolls back to ``pending`` (the task retries), a
    success can never be sent again. The stable Message-ID lets receivers drop the one
    duplicate a worker crash between SMTP acceptance and commit could cause.
    """
    with transaction.atomic():
        notification = (
            Notification.objects.select_for_update()
            .select_related("request", "request__team")
            .filter(pk=notification_id)
            .first()
        )
        if notification is None or notification.status == Notification.Status.SENT:
            return False
        message = render_notification(notification)
        message.send(fail_silently=False)
        notification.status = Notification.Status.SENT
        notification.sent_at = timezone.now()
        notification.message_id = message.extra_headers["Message-ID"]
        notification.attempts += 1
        notification.save(update_fields=["status", "sent_at", "message_id", "attempts",
                                         "updated_at"])
    return True


def notification_record_failure(*, notification_id: int, error: str) -> None:
    """Count a failed attempt so approvers and the sweep can see why mail waits."""
    Notification.objects.filter(pk=notification_id, status=Notification.Status.PENDING).update(
        attempts=F("attempts") + 1, last_error=error[:2000], updated_at=timezone.now()
    )
