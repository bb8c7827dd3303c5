"""The approvers' directory to-do list: changes a person must apply, and "Mark done".

Thin views: check the role, call the selector or one service, map its errors
to messages, redirect (POST/redirect/GET). Wired in ``requests_app/urls.py`` as
``requests:directory_todo`` and ``requests:directory_mark_done``.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.http import HttpRequest
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.shortcuts import redirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from .directory import directory_mark_done_manually
from .directory import own_team_change
from .directory import pending_manual_changes
from .exceptions import ActionConflict
from .models import DirectoryChange
from .models import is_approver
from .views import confirm_page
from .views import confirmed

__all__ = ["directory_change_mark_done", "directory_todo"]


def _require_approver(request: HttpRequest) -> None:
    # The LDIF names accounts and groups of every team: approvers only (auditors read the
    # same facts in the audit trail, requesters see their own request's events).
    if not is_approver(request.user):
        raise PermissionDenied("The directory to-do list is for approvers.")


@login_required
def directory_todo(request: HttpRequest) -> HttpResponse:
    """List manual and failed directory changes with their LDIF, oldest first."""
    _require_approver(request)
    changes = list(pending_manual_changes())
    for change in changes:
        # Segregation of duties: no "Mark done" on the approver's own team's changes.
        change.own_team = own_team_change(change, request.user)
    return render(
        request,
        "requests_app/directory_todo.html",
        {"changes": changes},
    )


@login_required
@require_POST
def directory_change_mark_done(request: HttpRequest, pk: int) -> HttpResponse:
    """Record that an administrator applied the change; the service records who."""
    _require_approver(request)
    change = get_object_or_404(DirectoryChange.objects.select_related("request"), pk=pk)
    # "Are you sure?" only where the service would act: its own refusals come first.
    if (not confirmed(request) and change.status != DirectoryChange.Status.DONE
            and not own_team_change(change, request.user)):
        return confirm_page(
            request, change.request,
            question=_("Mark directory change #%(pk)s done?") % {"pk": change.pk},
            consequence=_("Only when it is applied in the directory: Relaydesk takes the "
                          "account's relay-group membership as done from now on."),
            yes=_("Mark done"), url=reverse("requests:directory_mark_done", args=[pk]),
            fields={})
    try:
        change = directory_mark_done_manually(change_id=pk, by=request.user)
    except DirectoryChange.DoesNotExist:
        raise Http404("No such directory change.") from None
    except ActionConflict as exc:
        messages.error(request, str(exc))
    # PermissionDenied propagates: a 403 page with the reason, and nothing was written.
    else:
        messages.success(
            request,
            f"Directory change #{change.pk} ({change.get_action_display()} "
            f"{change.request.account_name}) marked done.",
        )
    return redirect("requests:directory_todo")
