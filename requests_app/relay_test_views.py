"""The download of a request's test-mail tool (``relay_test.render_script``).

For the people who configure or decide the sender: the owning team and approvers
(others get 403; a request they cannot see at all is a 404, as everywhere). Offered
where the snippets are (provisioning and active requests): before approval the relay
would only answer "Relay access denied", which the tool would explain, but no request
page shows it then. The script carries no secret (the password is read at run time), so
it is an ordinary attachment, not cached by shared caches.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.http import HttpRequest
from django.http import HttpResponse
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from . import selectors
from .models import RelayRequest
from .models import RequestState
from .models import is_approver
from .relay_test import render_script
from .relay_test import script_filename

__all__ = ["relay_test_script", "tool_available"]

#: The states whose page shows the snippets, and so the tool.
TOOL_STATES = (RequestState.PROVISIONING, RequestState.ACTIVE)


def tool_available(request: RelayRequest, user: object) -> bool:
    """Whether ``user`` may download the tool of ``request`` now (the template's link)."""
    return request.state in TOOL_STATES and (
        request.is_team_member(user) or is_approver(user))


@login_required
@require_GET
def relay_test_script(request: HttpRequest, pk: int) -> HttpResponse:
    """``relaydesk-test-<id>.py`` for the owning team and approvers."""
    obj = selectors.request_get_for_user(request.user, pk)
    if not (obj.is_team_member(request.user) or is_approver(request.user)):
        raise PermissionDenied(_("Only the owning team and approvers get the test-mail tool."))
    if obj.state not in TOOL_STATES:
        raise Http404(_("The test-mail tool is offered once the request is approved."))
    page = request.build_absolute_uri(reverse("requests:detail", args=[obj.pk]))
    response = HttpResponse(render_script(obj, page_url=page),
                            content_type="text/x-python; charset=us-ascii")
    response["Content-Disposition"] = f'attachment; filename="{script_filename(obj)}"'
    response["X-Content-Type-Options"] = "nosniff"
    patch_cache_control(response, private=True, no_store=True)
    return response
