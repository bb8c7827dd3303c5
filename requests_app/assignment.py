"""Claiming a request: which approver is working on it ("assigned to me" in the queue).

Why claims exist: with several approvers on one queue, two of them open the same
request, both read its evidence and one decision is wasted (or both ask the requester
the same question). A claim says "I have this one"; it decides nothing and changes no
state, so it is not a transition. It is audited (event type ``assignment``) because the
help desk's question "who had it, and since when" must have an answer later.

Rules, and why:

* Only an approver who could decide the request may claim it (the segregation-of-duties
  rule of the transitions, ``models.role_refusal``): a claim by someone who may not
  approve would park the request with nobody able to move it.
* Only a request that waits for approvers can be claimed (the queue's states, or an
  active entry whose production access request waits); claiming anything else is a 409.
* A request claimed by someone else is a 409 that names them: taking it over silently
  would hide the first approver's work. They release it, and then it can be claimed,
  or another approver **takes it over** (:func:`take_over`) when the holder is away.
* Claiming one's own claim again, or releasing an unclaimed request, changes nothing and
  records nothing (a double click is not an event).

The row is locked while deciding, so two approvers claiming at once queue up and the
second sees the first's claim.

Taking over, and why it is not a plain claim: a holder on holiday or sick leaves the
request "someone else's" in the queue, and the others either duplicate the work or leave
it. A take-over moves the claim to an approver who could decide the request, but never
silently: a reason is required (the audit trail and the previous holder's mail quote
it), it is an ``assignment`` event with action ``take_over`` naming both holders, and the
previous holder is mailed once. It takes the claim from the holder the caller saw
(``holder``; by default the one at the start of the call), so two take-overs at once do
not pass the claim along twice: the second is a 409 naming the new holder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from .actions import Role
from .events import request_assignment_event
from .events import request_take_over_event
from .exceptions import ActionConflict
from .models import RelayRequest
from .models import RequestState
from .models import role_refusal
from .notifications import notification_record
from .selectors import QUEUE_STATES
from .validators import FREE_TEXT_LIMITS
from .validators import validate_free_text

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

__all__ = ["TAKE_OVER_REASON_LIMIT", "ClaimPanel", "claim", "claim_panel", "claimable",
           "release", "take_over", "validate_take_over_reason"]

#: A take-over reason is a comment typed with an action (the audit trail and a mail
#: quote it): the same limit.
TAKE_OVER_REASON_LIMIT = FREE_TEXT_LIMITS["comment"]


def claimable(request: RelayRequest) -> bool:
    """Whether the request waits for approvers (the queue, or production access)."""
    if request.state in QUEUE_STATES:
        return True
    return request.state == RequestState.ACTIVE and request.production_requested_at is not None


def _locked(request_id: int) -> RelayRequest:
    # The holder is not joined in: after waiting for the lock, PostgreSQL re-reads the
    # locked row but keeps the other tables' rows of the first read, so a joined holder
    # would be the one before the concurrent change (or none at all: the join no longer
    # matches) while ``assigned_to_id`` is the new one. Read lazily, after the lock.
    return (RelayRequest.objects.select_for_update(of=("self",)).select_related("team")
            .get(pk=request_id))


def _since(request: RelayRequest) -> str:
    return (timezone.localtime(request.assigned_at).strftime("%Y-%m-%d %H:%M")
            if request.assigned_at else "?")


def _holder_conflict(request: RelayRequest) -> ActionConflict:
    return ActionConflict(
        _("Request #%(id)s is claimed by %(name)s (since %(since)s): ask them to release it.")
        % {"id": request.pk, "name": request.assigned_to.get_username(),
           "since": _since(request)})


@transaction.atomic
def claim(*, request_id: int, by: AbstractBaseUser,
          source_ip: str | None = None) -> RelayRequest:
    """``by`` claims the request. 403 if they could not decide it, 409 if it does not
    wait for approvers or another approver holds it (named)."""
    request = _locked(request_id)
    refusal = role_refusal(Role.INDEPENDENT_APPROVER, request, by,
                           _("claim request #%(id)s") % {"id": request.pk})
    if refusal is not None:
        raise PermissionDenied(refusal)
    if request.assigned_to_id == by.pk:
        return request
    if request.assigned_to_id is not None:
        raise _holder_conflict(request)
    if not claimable(request):
        raise ActionConflict(
            _("Request #%(id)s does not wait for an approver (it is %(state)s).")
            % {"id": request.pk, "state": request.get_state_display().lower()})
    request.assigned_to = by
    request.assigned_at = timezone.now()
    request.save(update_fields=["assigned_to", "assigned_at"])
    request_assignment_event(request, actor=by, source_ip=source_ip, claimed=True)
    return request


@transaction.atomic
def release(*, request_id: int, by: AbstractBaseUser,
            source_ip: str | None = None) -> RelayRequest:
    """``by`` releases their claim. 409 naming the holder if someone else holds it."""
    request = _locked(request_id)
    if request.assigned_to_id is None:
        return request
    if request.assigned_to_id != by.pk:
        raise _holder_conflict(request)
    request.assigned_to = None
    request.assigned_at = None
    request.save(update_fields=["assigned_to", "assigned_at"])
    request_assignment_event(request, actor=by, source_ip=source_ip, claimed=False,
                             previous=by.get_username())
    return request


def validate_take_over_reason(reason: object) -> str:
    """The stripped reason, or ``ValidationError({"reason": [...]})`` saying what is wrong:
    empty, not text, too long, or with control characters (``validate_free_text``)."""
    if reason is None or (isinstance(reason, str) and not reason.strip()):
        raise ValidationError(
            {"reason": [ValidationError(
                _("Say why you take over the claim (the previous holder and the audit "
                  "trail read it): the reason is empty."), code="required")]})
    try:
        validate_free_text(reason, field="reason", max_length=TAKE_OVER_REASON_LIMIT)
    except ValidationError as exc:
        raise ValidationError({"reason": exc.error_list}) from None
    return str(reason).strip()


def _seen_holder(request_id: int) -> str | None:
    """The holder's username as a plain read (no lock): what the caller saw."""
    return (RelayRequest.objects.filter(pk=request_id)
            .values_list("assigned_to__username", flat=True).first())


@transaction.atomic
def take_over(*, request_id: int, by: AbstractBaseUser, reason: object,
              holder: str | None = None, source_ip: str | None = None) -> RelayRequest:
    """``by`` takes over the claim another approver holds, saying why.

    ``holder`` is the username the caller saw holding the claim (the page's form and the
    API send it); ``None`` takes the holder read at the start of this call. Either way the
    claim moves only if that approver still holds it once the row is locked, so of two
    take-overs at once one wins and the other is a 409 naming the new holder.

    403 if ``by`` could not decide the request; 400 (``ValidationError`` on ``reason``)
    for an empty, too long or control-character reason; 409 if the request does not wait
    for approvers, nobody holds the claim (claim it instead), or the holder changed.
    Taking over one's own claim changes nothing and records nothing (a resent form).
    On success: an ``assignment`` event (action ``take_over``, ``previous``,
    ``assigned_to``, the reason as its comment) and one mail to the previous holder.
    """
    seen = holder if holder is not None else _seen_holder(request_id)
    request = _locked(request_id)
    refusal = role_refusal(Role.INDEPENDENT_APPROVER, request, by,
                           _("take over the claim on request #%(id)s") % {"id": request.pk})
    if refusal is not None:
        raise PermissionDenied(refusal)
    text = validate_take_over_reason(reason)
    if request.assigned_to_id == by.pk:
        return request
    if not claimable(request):
        raise ActionConflict(
            _("Request #%(id)s does not wait for an approver (it is %(state)s).")
            % {"id": request.pk, "state": request.get_state_display().lower()})
    if request.assigned_to_id is None:
        raise ActionConflict(
            _("Nobody holds the claim on request #%(id)s any more: claim it instead.")
            % {"id": request.pk})
    previous = request.assigned_to
    if seen is None or previous.get_username() != seen:
        raise ActionConflict(
            _("Request #%(id)s is now claimed by %(name)s (since %(since)s), not by the "
              "approver you meant to take it over from.")
            % {"id": request.pk, "name": previous.get_username(), "since": _since(request)})
    request.assigned_to = by
    request.assigned_at = timezone.now()
    request.save(update_fields=["assigned_to", "assigned_at"])
    event = request_take_over_event(request, actor=by, source_ip=source_ip,
                                    previous=previous.get_username(), reason=text)
    if previous.is_active and previous.email:
        notification_record(
            request=request, kind="claim_taken_over",
            key=f"request:{request.pk}:claim_taken_over:event:{event.pk}",
            recipients=[previous.email.lower()],
            context={"actor": by.get_username(), "previous": previous.get_username(),
                     "comment": text},
        )
    return request


@dataclass(frozen=True)
class ClaimPanel:
    """What the request page shows about its claim, and which button the viewer gets."""

    holder: str | None
    since: str
    can_claim: bool = False
    can_release: bool = False
    can_take_over: bool = False


def claim_panel(request: RelayRequest, user: AbstractBaseUser) -> ClaimPanel:
    """The claim as ``user`` sees it on the request page: who holds it, since when, and
    whether they may claim it, release it or take it over (the services' own rules)."""
    holder = request.assigned_to.get_username() if request.assigned_to_id else None
    since = _since(request) if holder else ""
    if request.assigned_to_id == user.pk:
        return ClaimPanel(holder, since, can_release=True)
    may_decide = claimable(request) and role_refusal(
        Role.INDEPENDENT_APPROVER, request, user, "") is None
    if not may_decide:
        return ClaimPanel(holder, since)
    if holder is None:
        return ClaimPanel(holder, since, can_claim=True)
    return ClaimPanel(holder, since, can_take_over=True)
