"""Live status of a request (``GET /requests/<id>/status/``), polled by the request page.

Why polling a small JSON document and not server-sent events: the checks take seconds
to a few minutes, a page asks every few seconds only while its request is ``checking``,
and a plain GET works through every proxy and with the synchronous workers the project
runs (an SSE stream would hold a worker per open page). ``static/relaydesk.js`` polls
it and reloads the page when the state or the attempt changes; without JavaScript the
page's ``<noscript>`` refresh does the same.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import display
from . import selectors
from .models import RequestState

__all__ = ["POLL_SECONDS", "request_status"]

#: How often a page polls while checks run; also the ``<noscript>`` refresh interval.
POLL_SECONDS = 3


@never_cache
@login_required
@require_GET
def request_status(request: HttpRequest, pk: int) -> JsonResponse:
    """State, verdict and attempt of one request the user may see (404 otherwise).

    The scoped read of one row by primary key (and the user's teams): cheap enough for
    every open page to ask every ``POLL_SECONDS`` seconds.
    """
    obj = selectors.request_get_for_user(request.user, pk)
    checking = obj.state == RequestState.CHECKING
    return JsonResponse({
        "id": obj.pk,
        "state": obj.state,
        "state_label": str(obj.get_state_display()),
        "checking": checking,
        "check_verdict": obj.check_verdict,
        "check_attempts": obj.check_attempts,
        "checks_ran_at": obj.checks_ran_at.isoformat() if obj.checks_ran_at else None,
        # what the page says meanwhile: running, or waiting for a worker (and why)
        "message": display.check_progress(obj, timezone.now()) if checking else "",
        # the page stops asking once the state is no longer ``checking``
        "poll_seconds": POLL_SECONDS if checking else None,
    })
