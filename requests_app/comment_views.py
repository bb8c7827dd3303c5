"""The request page's comment form (``POST /requests/<id>/comments/``).

Thin, like every view: find the request in the user's scope (404), call
``comments.comment_add``, redirect to the thread. Bad text is a 400 with the request
page again, the error named and the typed text kept (``_comments.html`` reads it back
from the POST), so nothing typed is lost.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.http import HttpResponse
from django.http import HttpResponseRedirect
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from . import comments
from . import selectors
from .views import _refused_input
from .views import client_ip

__all__ = ["comment_create"]


@login_required
@require_POST
def comment_create(request: HttpRequest, pk: int) -> HttpResponse:
    """Add a comment; 404 outside the user's scope, 403 for readers, 400 for bad text."""
    obj = selectors.request_get_for_user(request.user, pk)
    try:
        comments.comment_add(request_id=obj.pk, by=request.user,
                             body=request.POST.get("body", ""), source_ip=client_ip(request))
    except ValidationError as exc:
        return _refused_input(request, obj.pk, exc)
    side = comments.comment_side(obj, request.user)
    messages.success(request, _("Comment added; the approvers are told by mail.")
                     if side == comments.OWNERS
                     else _("Comment added; the owning team is told by mail."))
    return HttpResponseRedirect(obj.get_absolute_url() + "#comments")
