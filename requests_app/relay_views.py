"""Relay config: the token-protected pull endpoint and the approvers' history pages."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.http import HttpRequest
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.shortcuts import render
from django.views.decorators.http import require_safe

from . import selectors
from .models import RelayConfigVersion
from .relay import config_diff
from .relay import current_version
from .relay import relay_backend

__all__ = ["relay_config_file", "version_diff", "version_list"]


def _token_ok(request: HttpRequest) -> bool:
    expected = settings.RELAY_CONFIG_TOKEN
    if not expected:
        return False
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("token", "bearer"):
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())


@require_safe
def relay_config_file(request: HttpRequest, name: str) -> HttpResponse:
    """``GET /relay-config/<name>`` for config management, with ETag and 304.

    ``HEAD`` answers with the same status and headers (ETag, Content-Length, version)
    and no body, so a puller can ask whether a file changed without fetching it.
    """
    if not _token_ok(request):
        response = HttpResponse("a valid relay-config token is required\n", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = 'Token realm="relay-config"'
        return response
    if name not in relay_backend().artifact_names:
        raise Http404("No such relay artefact.")
    version = current_version()
    if version is None:
        raise Http404("No relay config has been built yet.")
    body = version.files[name].encode()
    etag = '"' + hashlib.sha256(body).hexdigest() + '"'
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        response = HttpResponse(status=304)
    else:
        content_type = "application/json" if name.endswith(".json") else "text/plain"
        response = HttpResponse(b"" if request.method == "HEAD" else body,
                                content_type=f"{content_type}; charset=us-ascii")
        # The length of the body a GET returns, for HEAD as well (RFC 9110 9.3.2).
        response["Content-Length"] = str(len(body))
    response["ETag"] = etag
    response["X-Relay-Config-Version"] = str(version.number)
    response["Cache-Control"] = "no-cache"
    return response


def _require_staff_view(request: HttpRequest) -> None:
    if not selectors.sees_everything(request.user):
        raise PermissionDenied("Relay config history is for approvers and auditors.")


@login_required
def version_list(request: HttpRequest) -> HttpResponse:
    _require_staff_view(request)
    versions = list(RelayConfigVersion.objects.only(
        "number", "created_at", "server_count", "account_count", "reason", "digest", "skipped"
    ).order_by("-number")[:200])
    # What the newest version leaves out is what the relay is refusing right now.
    left_out = versions[0].skipped if versions else []
    return render(request, "requests_app/relay_versions.html",
                  {"versions": versions, "left_out": left_out})


@login_required
def version_diff(request: HttpRequest, old: int, new: int) -> HttpResponse:
    _require_staff_view(request)
    a = get_object_or_404(RelayConfigVersion, number=old)
    b = get_object_or_404(RelayConfigVersion, number=new)
    changes = b.changes.select_related("request").order_by("file", "action", "line")[:2000] \
        if b.number == a.number + 1 else []
    return render(
        request,
        "requests_app/relay_diff.html",
        {"old": a, "new": b, "diff": config_diff(a, b), "changes": changes},
    )
