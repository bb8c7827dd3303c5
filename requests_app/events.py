"""Audit events: one small function per event type, each inserting one row.

Called by services inside their transaction, so an event exists if and only if the
change it describes was committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from typing import Any

from .models import RelayRequest
from .models import RequestEvent
from .models import RequestState

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

__all__ = [
    "comment_event",
    "credential_event",
    "drift_event",
    "insert_many",
    "request_checks_recorded_event",
    "request_created_event",
    "request_handover_event",
    "request_left_out_event",
    "request_override_event",
    "request_renewal_detached_event",
    "request_assignment_event",
    "request_take_over_event",
    "request_transition_event",
    "request_updated_event",
    "system_event",
]

SYSTEM = "system"


def _insert(
    request: RelayRequest,
    type_: str,
    *,
    actor: AbstractBaseUser | None,
    source_ip: str | None = None,
    from_state: str = "",
    to_state: str = "",
    comment: str = "",
    parameters: dict[str, Any] | None = None,
    save: bool = True,
) -> RequestEvent:
    """Insert the event, or (``save=False``) build it for :func:`insert_many`."""
    event = RequestEvent(
        request=request,
        type=type_,
        actor=actor,
        actor_name=actor.get_username() if actor is not None else SYSTEM,
        source_ip=source_ip or None,
        from_state=from_state,
        to_state=to_state,
        comment=comment,
        parameters=parameters or {},
    )
    if save:
        event.save(force_insert=True)
    return event


def _insert_unchanged(
    request: RelayRequest,
    type_: str,
    *,
    actor: AbstractBaseUser | None,
    source_ip: str | None = None,
    comment: str = "",
    parameters: dict[str, Any] | None = None,
) -> RequestEvent:
    """Insert an event that leaves the state as it was (both ends are the current state).

    Most events record something beside the lifecycle (an edit, a claim, a password, a
    comment); one place states that, so none of them can record a different ``to_state``.
    """
    return _insert(
        request,
        type_,
        actor=actor,
        source_ip=source_ip,
        from_state=request.state,
        to_state=request.state,
        comment=comment,
        parameters=parameters,
    )


def request_created_event(
    request: RelayRequest, actor: AbstractBaseUser, source_ip: str | None,
    *, save: bool = True,
) -> RequestEvent:
    return _insert(
        request,
        RequestEvent.Type.CREATED,
        actor=actor,
        source_ip=source_ip,
        to_state=request.state,
        parameters={"kind": request.kind, "subject": request.subject},
        save=save,
    )


def request_updated_event(
    request: RelayRequest,
    actor: AbstractBaseUser,
    source_ip: str | None,
    changes: dict[str, list[Any]],
    discarded_checks: dict[str, Any] | None = None,
) -> RequestEvent:
    """``changes`` maps each edited field to ``[old, new]`` so the trail shows the diff.

    ``discarded_checks``: the verdict (and its fingerprint) an edit of a checked field
    threw away, so the trail shows why the request has to be checked again.
    """
    parameters: dict[str, Any] = {"changes": changes}
    comment = ""
    if discarded_checks:
        parameters["discarded_checks"] = discarded_checks
        comment = "Checked content changed: the check results were discarded."
    return _insert_unchanged(
        request,
        RequestEvent.Type.UPDATED,
        actor=actor,
        source_ip=source_ip,
        comment=comment,
        parameters=parameters,
    )


def request_transition_event(
    request: RelayRequest,
    *,
    action: str,
    from_state: str,
    actor: AbstractBaseUser | None,
    source_ip: str | None = None,
    comment: str = "",
    parameters: dict[str, Any] | None = None,
    save: bool = True,
) -> RequestEvent:
    return _insert(
        request,
        RequestEvent.Type.TRANSITION,
        actor=actor,
        source_ip=source_ip,
        from_state=from_state,
        to_state=request.state,
        comment=comment,
        parameters={"action": action, **(parameters or {})},
        save=save,
    )


def request_override_event(
    request: RelayRequest,
    *,
    from_state: str,
    actor: AbstractBaseUser,
    source_ip: str | None,
    reason: str,
    overridden: list[dict[str, str]],
) -> RequestEvent:
    return _insert(
        request,
        RequestEvent.Type.OVERRIDE,
        actor=actor,
        source_ip=source_ip,
        from_state=from_state,
        to_state=request.state,
        comment=reason,
        parameters={"action": "override_checks", "overridden": overridden},
    )


def request_checks_recorded_event(
    request: RelayRequest, *, verdict: str, summary: dict[str, int], attempt: int,
    save: bool = True,
) -> RequestEvent:
    return _insert(
        request,
        RequestEvent.Type.CHECKS_RECORDED,
        actor=None,
        from_state=request.state,
        to_state=request.state,
        parameters={"verdict": verdict, "summary": summary, "attempt": attempt},
        save=save,
    )


def request_handover_event(
    request: RelayRequest,
    *,
    actor: AbstractBaseUser,
    source_ip: str | None,
    from_team: str,
    to_team: str,
    comment: str = "",
    detached_renewals: list[int] | None = None,
) -> RequestEvent:
    """``detached_renewals``: the old team's renewals that no longer replace the entry."""
    parameters: dict[str, Any] = {"from_team": from_team, "to_team": to_team}
    if detached_renewals:
        parameters["detached_renewals"] = list(detached_renewals)
    return _insert_unchanged(
        request,
        RequestEvent.Type.HANDOVER,
        actor=actor,
        source_ip=source_ip,
        comment=comment,
        parameters=parameters,
    )


def request_assignment_event(
    request: RelayRequest,
    *,
    actor: AbstractBaseUser,
    source_ip: str | None,
    claimed: bool,
    previous: str = "",
) -> RequestEvent:
    """An approver claimed (``claimed``) or released a request (``assignment.py``)."""
    return _insert_unchanged(
        request,
        RequestEvent.Type.ASSIGNMENT,
        actor=actor,
        source_ip=source_ip,
        parameters={"action": "claim" if claimed else "release",
                    "assigned_to": actor.get_username() if claimed else "",
                    "previous": previous},
    )


def request_take_over_event(
    request: RelayRequest,
    *,
    actor: AbstractBaseUser,
    source_ip: str | None,
    previous: str,
    reason: str,
) -> RequestEvent:
    """An approver took over the claim ``previous`` held (``assignment.take_over``).

    The same type and parameter names as a claim, so "who had it, and since when" reads
    one list; the action says it was taken, and the reason is the event's comment, where
    the timeline and the audit CSV show every reason.
    """
    return _insert_unchanged(
        request,
        RequestEvent.Type.ASSIGNMENT,
        actor=actor,
        source_ip=source_ip,
        comment=reason,
        parameters={"action": "take_over", "assigned_to": actor.get_username(),
                    "previous": previous},
    )


def request_renewal_detached_event(
    renewal: RelayRequest,
    *,
    actor: AbstractBaseUser,
    source_ip: str | None,
    entry_id: int,
    to_team: str,
) -> RequestEvent:
    """A renewal's ``replaces`` link was cleared because its entry changed hands."""
    return _insert_unchanged(
        renewal,
        RequestEvent.Type.UPDATED,
        actor=actor,
        source_ip=source_ip,
        comment=(
            f"No longer replaces #{entry_id}: that entry was handed over to team {to_team}. "
            "If approved, this request becomes a separate entry."
        ),
        parameters={"changes": {"replaces": [entry_id, None]}, "handover_of": entry_id},
    )


def request_left_out_event(
    request: RelayRequest,
    *,
    reason: str,
    attempt: int | None,
    limit: int | None,
    version: int | None,
    comment: str,
) -> RequestEvent:
    """A config build left the entry out because the renderer refused a value.

    ``attempt``/``limit`` count the builds a waiting request gets before it fails
    (``None`` for an active entry); ``version`` is the version built, or ``None`` when
    the content did not change.
    """
    return _insert_unchanged(
        request,
        RequestEvent.Type.CONFIG_BUILT,
        actor=None,
        comment=comment,
        parameters={"left_out": True, "reason": reason, "attempt": attempt,
                    "max_attempts": limit, "version": version},
    )


def drift_event(
    request_id: int, *, comment: str, parameters: dict[str, Any], at: datetime
) -> RequestEvent:
    """A drift event of an active entry (flagged, recovered, suspended), not yet saved.

    The nightly re-verification writes a batch's events with one :func:`insert_many`,
    so it builds them by id, without loading the requests.
    """
    return RequestEvent(
        request_id=request_id, type=RequestEvent.Type.DRIFT, actor_name=SYSTEM,
        from_state=RequestState.ACTIVE, to_state=RequestState.ACTIVE,
        comment=comment, parameters=parameters, created_at=at,
    )


def insert_many(events: list[RequestEvent]) -> None:
    """Insert events built by the functions above in one statement per 1,000 rows."""
    RequestEvent.objects.bulk_create(events, batch_size=1000)


def system_event(
    request: RelayRequest,
    type_: str,
    *,
    comment: str = "",
    parameters: dict[str, Any] | None = None,
) -> RequestEvent:
    return _insert_unchanged(
        request, type_, actor=None, comment=comment, parameters=parameters)


def credential_event(
    request: RelayRequest,
    *,
    actor: AbstractBaseUser | None,
    source_ip: str | None = None,
    comment: str = "",
    parameters: dict[str, Any] | None = None,
) -> RequestEvent:
    """A password event of a functional account (issued, viewed, expired, rotated...).

    Who, when and from where; never the secret (``credentials.py`` only passes ids,
    times and states in ``parameters``).
    """
    return _insert_unchanged(
        request,
        RequestEvent.Type.CREDENTIAL,
        actor=actor,
        source_ip=source_ip,
        comment=comment,
        parameters=parameters,
    )


def comment_event(
    request: RelayRequest,
    *,
    actor: AbstractBaseUser,
    source_ip: str | None,
    comment_id: int,
    side: str,
    text: str,
) -> RequestEvent:
    """A comment in the request's thread (``comments.py``), so the trail holds it too.

    ``side`` is recorded because team membership may change later: the thread shows
    whom the comment was written for from this event.
    """
    return _insert_unchanged(
        request,
        RequestEvent.Type.COMMENT,
        actor=actor,
        source_ip=source_ip,
        comment=text,
        parameters={"comment_id": comment_id, "side": side},
    )
