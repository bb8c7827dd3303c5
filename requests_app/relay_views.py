"""Relay config: the token-protected pull endpoint and the approvers' history pages."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.http import HttpRequest
from django.http import HttpResponse
from django.http import HttpResponseBase
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.shortcuts import redirect
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_safe

from . import params
from . import relay_store
from . import selectors
from .models import RelayConfigBlob
from .models import RelayConfigVersion
from .relay import config_changes
from .relay import config_diff
from .relay import history_changes
from .relay import relay_backend

__all__ = [
    "relay_config_file",
    "version_compare",
    "version_detail",
    "version_diff",
    "version_file",
    "version_list",
]

#: Lines of the "changes by request" summary shown on one page (the diff has them all).
SUMMARY_ROWS = 2000
#: Bodies larger than this are streamed (read in slices); smaller ones are one response.
STREAM_ABOVE = 256 * 1024


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
def relay_config_file(request: HttpRequest, name: str) -> HttpResponseBase:
    """``GET /relay-config/<name>`` for config management, with ETag and 304.

    ``HEAD`` answers with the same status and headers (ETag, Content-Length, version)
    and no body, so a puller can ask whether a file changed without fetching it. A body
    over ``STREAM_ABOVE`` bytes is streamed, read in slices (``relay_store.stream_body``).
    """
    if not _token_ok(request):
        response = HttpResponse("a valid relay-config token is required\n", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = 'Token realm="relay-config"'
        return response
    if name not in relay_backend().artifact_names:
        raise Http404("No such relay artefact.")
    version = (RelayConfigVersion.objects.only("pk", "number").order_by("-number").first())
    if version is None:
        raise Http404("No relay config has been built yet.")
    # Metadata only: the ETag is the stored SHA-256 of the body, so a 304 and a HEAD
    # never read a body, and a GET reads only this file's.
    meta = relay_store.file_meta(version, [name]).get(name)
    if meta is None:
        raise Http404("No such file in the newest version.")
    etag = f'"{meta.sha256}"'
    response: HttpResponse | StreamingHttpResponse
    content_type = "application/json" if name.endswith(".json") else "text/plain"
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        response = HttpResponse(status=304)
    elif request.method == "HEAD" or meta.size <= STREAM_ABOVE:
        try:
            body = b"" if request.method == "HEAD" else relay_store.read_body(meta.blob_id)
        except RelayConfigBlob.DoesNotExist:
            return _replaced_while_read()
        response = HttpResponse(body, content_type=f"{content_type}; charset=us-ascii")
    else:
        response = StreamingHttpResponse(relay_store.stream_body(meta.blob_id),
                                         content_type=f"{content_type}; charset=us-ascii")
    if response.status_code == 200:
        # The length of the body a GET returns, for HEAD as well (RFC 9110 9.3.2).
        response["Content-Length"] = str(meta.size)
    response["ETag"] = etag
    response["X-Relay-Config-Version"] = str(version.number)
    response["Cache-Control"] = "no-cache"
    return response


def _replaced_while_read() -> HttpResponse:
    """503 for a body pruned between its metadata and its read (a build with a tight
    retention committed meanwhile): the puller asks again and gets the newer version,
    instead of an empty file under the old ETag."""
    response = HttpResponse("A newer relay config version replaced this one while it was "
                            "read; pull again.\n", status=503,
                            content_type="text/plain; charset=us-ascii")
    response["Retry-After"] = "1"
    response["Cache-Control"] = "no-cache"
    return response


def _require_staff_view(request: HttpRequest) -> None:
    if not selectors.sees_everything(request.user):
        raise PermissionDenied("Relay config history is for approvers and auditors.")


_LIST_FIELDS = ("number", "created_at", "server_count", "account_count", "reason", "digest",
                "skipped", "files_pruned_at")


@login_required
def version_list(request: HttpRequest) -> HttpResponse:
    _require_staff_view(request)
    versions = list(RelayConfigVersion.objects.only(*_LIST_FIELDS).order_by("-number")[:200])
    # What the newest version leaves out is what the relay is refusing right now.
    left_out = versions[0].skipped if versions else []
    return render(request, "requests_app/relay_versions.html", {
        "versions": versions, "left_out": left_out,
        # the compare form's defaults: the newest version against the one before it
        "compare_old": versions[1].number if len(versions) > 1 else None,
        "compare_new": versions[0].number if versions else None,
    })


@login_required
def version_compare(request: HttpRequest) -> HttpResponse:
    """The compare form's target (a plain GET form, no JavaScript): to the diff page.

    Both numbers go through the parameter helper, so a missing or malformed one is a
    400 naming it; a number with no version is the diff page's 404.
    """
    _require_staff_view(request)
    old = params.query_int(request.GET, "old", minimum=1)
    new = params.query_int(request.GET, "new", minimum=1)
    for name, value in (("old", old), ("new", new)):
        if value is None:
            raise params.BadParameter(name, _("Choose a version to compare ('%(name)s').")
                                      % {"name": name})
    return redirect("relay:diff", old=old, new=new)


@login_required
def version_detail(request: HttpRequest, number: int) -> HttpResponse:
    """One version: when and why it was built, what it left out, and its files."""
    _require_staff_view(request)
    version = get_object_or_404(RelayConfigVersion, number=number)
    # from the stored metadata: no body is read to list them
    files = [{"name": m.name, "lines": m.lines, "bytes": m.size}
             for m in relay_store.file_meta(version).values()]
    return render(request, "requests_app/relay_version.html",
                  {"version": version, "files": files})


@login_required
def version_file(request: HttpRequest, number: int, name: str) -> HttpResponseBase:
    """One file of one version, shown on a page or (``?download=1``) as an attachment
    named ``v<number>-<name>``, byte for byte what the relay pulled."""
    _require_staff_view(request)
    version = get_object_or_404(RelayConfigVersion, number=number)
    meta = relay_store.file_meta(version, [name]).get(name)
    if meta is None:
        raise Http404("No such file in this version.")
    if params.query_flag(request.GET, "download"):
        content_type = "application/json" if name.endswith(".json") else "text/plain"
        response: HttpResponse | StreamingHttpResponse
        if meta.size <= STREAM_ABOVE:
            try:
                body = relay_store.read_body(meta.blob_id)
            except RelayConfigBlob.DoesNotExist:
                return _replaced_while_read()
            response = HttpResponse(body, content_type=f"{content_type}; charset=utf-8")
        else:
            response = StreamingHttpResponse(relay_store.stream_body(meta.blob_id),
                                             content_type=f"{content_type}; charset=utf-8")
        response["Content-Length"] = str(meta.size)
        response["Content-Disposition"] = f'attachment; filename="v{version.number}-{name}"'
        return response
    text = relay_store.version_texts(version, [name])[name]
    return render(request, "requests_app/relay_file.html",
                  {"version": version, "name": name, "text": text})


@login_required
def version_diff(request: HttpRequest, old: int, new: int) -> HttpResponse:
    """Two versions side by side: what each request added or removed, and a unified
    diff per changed file where the files are small enough (``relay.config_diff``).

    The summary comes from the stored line history (``relay.history_changes``: the
    versions in between netted in SQL, no file read), which holds a line two requests
    share once per request, as ``relay.config_changes`` counts it. Only a range with a
    version stored without history falls back to comparing the two versions' files.
    """
    _require_staff_view(request)
    a = get_object_or_404(RelayConfigVersion, number=old)
    b = get_object_or_404(RelayConfigVersion, number=new)
    changes = history_changes(a, b)
    no_summary = False
    if changes is None:
        # a version in between has no usable history: compare the files, if both exist
        no_summary = bool(a.files_pruned_at or b.files_pruned_at)
        names = relay_backend().attributed_names
        changes = [] if no_summary else config_changes(relay_store.version_texts(a, names),
                                                       relay_store.version_texts(b, names))
    versions = RelayConfigVersion.objects.order_by("-number").values_list("number",
                                                                          flat=True)[:200]
    return render(
        request,
        "requests_app/relay_diff.html",
        {"old": a, "new": b, "diff": config_diff(a, b), "changes": changes[:SUMMARY_ROWS],
         "changes_total": len(changes), "versions": versions, "no_summary": no_summary},
    )
