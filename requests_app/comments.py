"""The conversation on a request: its owning team and the approvers write to each other.

Why a thread and not only the comments of actions: a requester who does not understand
why a check failed, or an approver who needs one fact before deciding, had no way to ask
without changing the request's state ("ask for changes" sends it back, which is more
than a question). A comment changes nothing but the thread.

Rules, and why:

* **Who writes.** Members of the owning team (the requester side) and approvers (the
  help desk side). An approver who is a member of the owning team writes for the team,
  as they would act for it. Auditors and everyone else read only (403): an auditor's
  words in the thread would read as a decision-maker's.
* **Who reads.** Whoever may see the request (``selectors.request_get_for_user``).
* **Who is told.** The other side, once per comment (the outbox row is keyed by the
  comment): a team comment goes to the approver who claimed the request
  (``assigned_to``) or, when nobody has, to every approver; an approver's comment goes
  to the request's owners (``notifications.owner_recipients``). The author is never
  mailed their own words.
* **What is accepted.** The free-text rules of every comment (``validators``: at most
  ``FREE_TEXT_LIMITS["comment"]`` characters, no control or text-direction characters),
  and not empty: a 400 naming the field ``body``.
* **Audited.** Each comment also writes an audit event (type ``comment``: who, when, from
  where, the text), so the trail and its CSV export hold the conversation too.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext as _

from .events import comment_event
from .models import RelayRequest
from .models import RequestComment
from .models import RequestEvent
from .models import is_approver
from .notifications import approver_emails
from .notifications import notification_record
from .notifications import owner_recipients
from .validators import FREE_TEXT_LIMITS
from .validators import validate_free_text

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

__all__ = [
    "COMMENT_LIMIT",
    "OWNERS",
    "APPROVERS",
    "CommentThread",
    "comment_add",
    "comment_list",
    "comment_recipients",
    "comment_side",
    "comment_thread",
    "validate_comment_body",
]

#: The longest comment accepted (the rule every comment of the app follows).
COMMENT_LIMIT = FREE_TEXT_LIMITS["comment"]
OWNERS = "owners"
APPROVERS = "approvers"


def comment_side(request: RelayRequest, user: AbstractBaseUser | None) -> str | None:
    """Which side ``user`` writes for: ``OWNERS``, ``APPROVERS``, or ``None`` (reads only).

    Team membership first: an approver on the owning team speaks for the team, and is
    mailed as an owner, not as the approver who decides.
    """
    if user is None or not user.is_authenticated:
        return None
    if request.is_team_member(user):
        return OWNERS
    if is_approver(user):
        return APPROVERS
    return None


def validate_comment_body(body: object) -> str:
    """The stripped text, or ``ValidationError({"body": [...]})`` saying what is wrong."""
    if not isinstance(body, str):
        raise ValidationError({"body": [_("The comment must be text.")]}, code="not_text")
    text = body.strip()
    if not text:
        raise ValidationError({"body": [_("Write a comment: it is empty.")]}, code="required")
    try:
        validate_free_text(text, field="comment")
    except ValidationError as exc:
        raise ValidationError({"body": exc.error_list}) from None
    return text


def comment_recipients(request: RelayRequest, side: str,
                       author: AbstractBaseUser) -> list[str]:
    """The other side's addresses, without the author's own."""
    if side == OWNERS:
        claimed = request.assigned_to
        if claimed is not None and claimed.is_active and claimed.email:
            recipients = [claimed.email.lower()]
        else:
            recipients = approver_emails()
    else:
        recipients = owner_recipients(request)
    own = (author.email or "").lower()
    return [r for r in recipients if r != own]


@transaction.atomic
def comment_add(*, request_id: int, by: AbstractBaseUser, body: object,
                source_ip: str | None = None) -> RequestComment:
    """Write one comment, its audit event and the other side's mail.

    The caller has already found the request in ``by``'s scope (404 otherwise).
    Raises ``PermissionDenied`` (403) for a reader who may not write and
    ``ValidationError`` (400, field ``body``) for empty, too long or control-character
    text. The request row is locked so the comment, its event and its mail belong to one
    state of the request (the claim read for the recipients included).
    """
    # of=self: PostgreSQL cannot lock the nullable side of the outer joins
    request = (RelayRequest.objects.select_for_update(of=("self",))
               .select_related("team", "created_by", "submitted_by", "assigned_to")
               .get(pk=request_id))
    side = comment_side(request, by)
    if side is None:
        raise PermissionDenied(_("Only members of the owning team and approvers can comment "
                                 "on request #%(id)s; you can read the thread.")
                               % {"id": request.pk})
    text = validate_comment_body(body)
    comment = RequestComment.objects.create(
        request=request, author=by, author_name=by.get_username(), body=text)
    comment_event(request, actor=by, source_ip=source_ip, comment_id=comment.pk,
                  side=side, text=text)
    comment.side = side  # type: ignore[attr-defined] # as ``comment_list`` sets it
    recipients = comment_recipients(request, side, by)
    if recipients:
        notification_record(
            request=request, kind="comment",
            key=f"request:{request.pk}:comment:{comment.pk}", recipients=recipients,
            context={"comment": text, "actor": by.get_username(), "side": side},
        )
    return comment


@dataclass
class CommentThread:
    """What the request page shows: the comments, and whether the viewer may write."""

    comments: list[RequestComment] = field(default_factory=list)
    side: str | None = None

    @property
    def can_comment(self) -> bool:
        return self.side is not None

    @property
    def limit(self) -> int:
        return COMMENT_LIMIT


def comment_list(request: RelayRequest) -> list[RequestComment]:
    """The request's comments, oldest first, each with ``side`` (who it was written for,
    as recorded in its audit event: team membership may have changed since). Two
    queries, whatever the length of the thread."""
    sides = dict(
        RequestEvent.objects.filter(request=request, type=RequestEvent.Type.COMMENT)
        .values_list("parameters__comment_id", "parameters__side")
    )
    rows = list(request.comments.order_by("created_at", "pk"))
    for row in rows:
        row.side = sides.get(row.pk, "")  # type: ignore[attr-defined]
    return rows


def comment_thread(request: RelayRequest, user: AbstractBaseUser | None) -> CommentThread:
    """The thread of a request the user may already see, and whether they may write."""
    return CommentThread(comments=comment_list(request), side=comment_side(request, user))
