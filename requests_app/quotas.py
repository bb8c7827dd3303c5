"""Sending quotas: the sandbox every entry starts in, and asking for production access.

Why a sandbox: a new server or account has not shown yet that its mail is wanted (bounces,
complaints); a small daily quota bounds the harm of a misconfigured or compromised sender
until people who did not file it have looked at how it handles bounces and complaints.
The relay enforces the limits (``policyd.py`` reads them from the generated policy file);
this module is the product side: what the owners are shown and how they ask.

The transitions are ``RelayRequest.request_production`` / ``grant_production`` /
``refuse_production`` (declared in ``actions.py``); they go through
``services.request_act`` like every action, so roles, segregation of duties, the audit
trail and the mails are the ones of every other decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from . import services
from .models import QuotaTier
from .models import RelayRequest
from .models import RequestEvent
from .models import RequestState
from .validators import FREE_TEXT_LIMITS
from .validators import validate_free_text

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

__all__ = [
    "PRODUCTION_VOLUME_MAX",
    "PRODUCTION_TEXT_LIMIT",
    "QuotaLimits",
    "last_production_decision",
    "limits_for",
    "production_pending_requests",
    "request_production_access",
    "validate_production_request",
]

#: The largest daily volume one entry may ask for: above it, a second relay path or a
#: bulk-mail service is the answer, not one allowlisted server.
PRODUCTION_VOLUME_MAX = 10_000_000
#: The use case and the bounce handling are free text bounded like the request's own.
PRODUCTION_TEXT_LIMIT = FREE_TEXT_LIMITS["use_case"]


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """An entry's sending limits: messages per 24 hours and per second."""

    tier: str
    daily: int
    per_second: int

    @property
    def is_production(self) -> bool:
        return self.tier == QuotaTier.PRODUCTION


def limits_for(request: RelayRequest) -> QuotaLimits:
    """The limits the relay applies to ``request`` (the same rule the policy file is
    rendered with: sandbox from the settings, production from the approved volume)."""
    if request.quota_tier == QuotaTier.PRODUCTION:
        return QuotaLimits(QuotaTier.PRODUCTION, request.expected_daily_volume,
                           settings.RELAY_PRODUCTION_PER_SECOND)
    return QuotaLimits(QuotaTier.SANDBOX, settings.RELAY_SANDBOX_DAILY_LIMIT,
                       settings.RELAY_SANDBOX_PER_SECOND)


def _volume(value: object) -> int:
    """A positive whole number of messages per day (an int, or ASCII digits as a form
    sends them), at most ``PRODUCTION_VOLUME_MAX``."""
    if isinstance(value, str):
        value = value.strip()
        if value.isascii() and value.isdigit():
            value = int(value)
    if value is None or value == "":
        raise ValidationError(_("Say how many messages per day the entry will send."),
                              code="required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(_("The volume must be a whole number of messages per day."),
                              code="invalid")
    if value < 1:
        raise ValidationError(_("The volume must be at least 1 message per day."),
                              code="min_value")
    if value > PRODUCTION_VOLUME_MAX:
        raise ValidationError(
            _("The volume is at most %(max)s messages per day; for more, talk to the mail "
              "team about a bulk-mail service.") % {"max": f"{PRODUCTION_VOLUME_MAX:,}"},
            code="max_value")
    return value


def _required_text(value: object, field: str, missing: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValidationError(missing, code="required")
    return validate_free_text(value, field=field, max_length=PRODUCTION_TEXT_LIMIT).strip()


def validate_production_request(*, volume: object, use_case: object,
                                bounce_handling: object) -> dict[str, Any]:
    """The owners' request for production access, checked field by field.

    Every field is checked and every error reported at once, each under its own name
    (``volume``, ``use_case``, ``bounce_handling``), so the form and the API say all
    that is wrong in one answer. Returns the transition's keyword arguments.
    """
    errors: dict[str, list[ValidationError]] = {}
    cleaned: dict[str, Any] = {}
    checks = (
        ("volume", lambda: _volume(volume)),
        ("use_case", lambda: _required_text(
            use_case, "use_case", _("Describe what the entry sends, to whom, and why they "
                                    "expect it."))),
        ("bounce_handling", lambda: _required_text(
            bounce_handling, "bounce_handling",
            _("Say how bounces and complaints are handled (who reads them, how addresses "
              "that bounce or complain are removed)."))),
    )
    for field, check in checks:
        try:
            cleaned[field] = check()
        except ValidationError as exc:
            errors[field] = exc.error_list
    if errors:
        raise ValidationError(errors)
    return cleaned


def request_production_access(
    *,
    request_id: int,
    by: AbstractBaseUser,
    volume: object,
    use_case: object,
    bounce_handling: object,
    source_ip: str | None = None,
) -> RelayRequest:
    """The owners ask for production access for an active sandbox entry.

    Through ``services.request_act``: a non-member gets 403, an entry that is not active,
    already in production or with a request pending gets 409 (saying which), and only
    then are the values checked (400 naming each bad field). One transaction: on any
    refusal nothing is saved, no event written, no mail queued. The approvers are mailed.
    """
    return services.request_act(
        request_id=request_id, action="request_production", by=by, source_ip=source_ip,
        data=lambda: validate_production_request(volume=volume, use_case=use_case,
                                                 bounce_handling=bounce_handling),
    )


def production_pending_requests(requests: QuerySet[RelayRequest]) -> QuerySet[RelayRequest]:
    """Of ``requests`` (already scoped to the viewer), the active entries whose request
    for production access waits, oldest first: the approvers' queue lists them."""
    return (requests.filter(state=RequestState.ACTIVE, quota_tier=QuotaTier.SANDBOX,
                            production_requested_at__isnull=False)
            .select_related("team", "created_by")
            .order_by("production_requested_at", "pk"))


def last_production_decision(request: RelayRequest) -> RequestEvent | None:
    """The latest grant or refusal of production access (who, when, the comment)."""
    return (request.events.filter(type=RequestEvent.Type.TRANSITION,
                                  parameters__action__in=("grant_production",
                                                          "refuse_production"))
            .order_by("-created_at", "-pk").first())
