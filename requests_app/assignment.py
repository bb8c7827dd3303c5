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
  would hide the first approver's work. They release it, and then it can be claimed.
* Claiming one's own claim again, or releasing an unclaimed request, changes nothing and
  records nothing (a double click is not an event).

The row is locked while deciding, so two approvers claiming at once queue up and the
second sees the first's claim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from .actions import Role
from .events import request_assignment_event
from .exceptions import ActionConflict
from .models import RelayRequest
from .models import RequestState
from .models import role_refusal
from .selectors import QUEUE_STATES

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

__all__ = ["claim", "claimable", "release"]


def claimable(request: RelayRequest) -> bool:
    """Whether the request waits for approvers (the queue, or production access)."""
    if request.state in QUEUE_STATES:
        return True
    return request.state == RequestState.ACTIVE and request.production_requested_at is not None


def _locked(request_id: int) -> RelayRequest:
    # of=self: the nullable assigned_to join cannot be locked (PostgreSQL refuses FOR
    # UPDATE on the nullable side of an outer join); the request row is what we lock.
    return (RelayRequest.objects.select_for_update(of=("self",))
            .select_related("team", "assigned_to").get(pk=request_id))


def _holder_conflict(request: RelayRequest) -> ActionConflict:
    return ActionConflict(
        _("Request #%(id)s is claimed by %(name)s (since %(since)s): ask them to release it.")
        % {"id": request.pk, "name": request.assigned_to.get_username(),
           "since": timezone.localtime(request.assigned_at).strftime("%Y-%m-%d %H:%M")
           if request.assigned_at else "?"})


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
