"""Pages for functional-account passwords: the one-time link, rotation, the overdue list.

Thin views over ``credentials.py``. The one-time link page never reveals on ``GET``
(mail scanners and link previews follow links): it asks the viewer to re-enter their own
Relaydesk password (the "fresh login" rule, docs/credentials.md) and reveals on that
``POST`` only, with ``Cache-Control: no-store`` so no browser or proxy keeps a copy.
Status codes: 404 for a token that does not exist, 403 for anyone outside the owning
team (anonymous included), 410 for a used, expired or superseded link.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.http import HttpRequest
from django.http import HttpResponse
from django.shortcuts import redirect
from django.shortcuts import render
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods
from django.views.decorators.http import require_POST

from .credentials import LinkGone
from .credentials import LinkNotFound
from .credentials import ReauthenticationRequired
from .credentials import credential_confirm_rotated
from .credentials import credential_link_for
from .credentials import credential_reveal
from .credentials import credential_rotate_now
from .credentials import overdue_accounts
from .exceptions import ActionConflict
from .models import RelayRequest
from .models import is_approver
from .models import is_auditor
from .views import client_ip

__all__ = ["credential_confirm", "credential_link", "credential_overdue", "credential_rotate"]

TEMPLATES = "requests_app/credentials"


def _page(request: HttpRequest, template: str, context: dict[str, object],
          status: int = 200) -> HttpResponse:
    response = render(request, f"{TEMPLATES}/{template}", context, status=status)
    add_never_cache_headers(response)  # no-store: nothing of these pages is cached
    response["Referrer-Policy"] = "no-referrer"  # the token is in the URL
    return response


@require_http_methods(["GET", "POST"])
def credential_link(request: HttpRequest, token: str) -> HttpResponse:
    """The one-time link: GET asks for the viewer's password, POST shows the secret once."""
    try:
        if request.method == "POST":
            row, secret = credential_reveal(
                token=token, user=request.user, password=request.POST.get("password", ""),
                http_request=request, source_ip=client_ip(request))
            return _page(request, "revealed.html", {"row": row, "secret": secret})
        row = credential_link_for(token, request.user)
    except LinkNotFound:
        return _page(request, "gone.html", {"reason": "No such link."}, status=404)
    except LinkGone as exc:
        return _page(request, "gone.html", {"reason": str(exc)}, status=410)
    except ReauthenticationRequired as exc:
        row = credential_link_for(token, request.user)
        return _page(request, "link.html", {"row": row, "error": str(exc)}, status=403)
    except PermissionDenied as exc:
        return _page(request, "gone.html", {"reason": str(exc), "forbidden": True,
                                            "anonymous": not request.user.is_authenticated},
                     status=403)
    return _page(request, "link.html", {"row": row})


def _owner_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    try:
        if action == "rotate":
            row = credential_rotate_now(request_id=pk, by=request.user,
                                        source_ip=client_ip(request))
            messages.success(request, _(
                "A new password for %(account)s is being set; the owners get a one-time link "
                "by mail once the directory has it.") % {"account": row.account_name})
        else:
            row = credential_confirm_rotated(request_id=pk, by=request.user,
                                             source_ip=client_ip(request))
            messages.success(request, _(
                "Recorded: the password of %(account)s was changed in the directory.")
                % {"account": row.account_name})
    except RelayRequest.DoesNotExist:
        raise Http404(_("No such request.")) from None
    except ActionConflict as exc:
        messages.error(request, str(exc))
    return redirect("requests:detail", pk=pk)


@login_required
@require_POST
def credential_rotate(request: HttpRequest, pk: int) -> HttpResponse:
    """An owner's "Rotate now" (issue mode)."""
    return _owner_action(request, pk, "rotate")


@login_required
@require_POST
def credential_confirm(request: HttpRequest, pk: int) -> HttpResponse:
    """An owner's "I rotated it" (directory mode)."""
    return _owner_action(request, pk, "confirm")


@login_required
def credential_overdue(request: HttpRequest) -> HttpResponse:
    """Approvers (and auditors) see every active account whose password is overdue."""
    if not (is_approver(request.user) or is_auditor(request.user)):
        raise PermissionDenied(_("The overdue-password list is for approvers and auditors."))
    return render(request, f"{TEMPLATES}/overdue.html", {"accounts": overdue_accounts()})
