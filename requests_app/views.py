"""Web views: thin. Fetch through a scoped selector, bind a form, call one
service, map its errors to messages, redirect (POST/redirect/GET)."""

from __future__ import annotations

import re
import uuid
from datetime import date
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.http import HttpResponse
from django.http import HttpResponseRedirect
from django.http import JsonResponse
from django.http import StreamingHttpResponse
from django.shortcuts import redirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.views.decorators.csrf import requires_csrf_token
from django.views.decorators.http import require_POST
from django.views.generic import ListView

from . import accounts
from . import activation
from . import assignment
from . import comments
from . import lists
from . import params
from . import quotas
from . import selectors
from . import services
from .actions import PRODUCTION_ACTIONS
from .actions import USER_ACTIONS
from .actions import Role
from .audit_export import AuditFilter
from .audit_export import audit_csv_chunks
from .audit_export import csv_safe as _csv_safe
from .credentials import credential_status
from .dashboard import dashboard_data
from .dashboard import weekly_chart_svg
from .exceptions import ActionConflict
from .forms import DecisionForm
from .forms import ProductionRequestForm
from .forms import form_class_for
from .forms import initial_for
from .kinds import KINDS
from .kinds import kind_spec
from .kinds import logs_in
from .models import CheckStatus
from .models import Notification
from .models import QuotaTier
from .models import RelayRequest
from .models import RequestKind
from .models import RequestState
from .models import Team
from .models import is_approver
from .models import role_refusal
from .snippets import sender_preview
from .snippets import snippets_for

__all__ = [
    "QueueView",
    "dashboard",
    "RequestListView",
    "client_ip",
    "request_action",
    "request_choose",
    "request_create",
    "request_detail",
    "request_edit",
    "request_handover",
    "request_production",
    "request_renew",
    "request_events_csv",
    "request_assign",
    "request_take_over",
    "request_list_csv",
    "request_queue_csv",
    "bad_request",
    "confirm_page",
    "confirmed",
]


def client_ip(request: HttpRequest) -> str | None:
    """The peer address as the server saw it (the audit trail's "from where")."""
    return request.META.get("REMOTE_ADDR") or None


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc) or exc.__class__.__name__


class StrictPageMixin:
    """List views read ``?page=`` through the parameter helper: a page number in digits
    0-9 (or ``last``); anything else is a 400, a page past the end stays Django's 404."""

    page_kwarg = "page"
    request: HttpRequest
    kwargs: dict[str, Any]

    def paginate_queryset(self, queryset: Any, page_size: int) -> Any:
        if self.request.GET.get(self.page_kwarg) != "last":
            page = params.query_int(self.request.GET, self.page_kwarg, minimum=1,
                                    maximum=1_000_000)
            if page is not None:
                self.kwargs[self.page_kwarg] = page
        return super().paginate_queryset(queryset, page_size)  # type: ignore[misc]


class _SearchableListMixin(LoginRequiredMixin, StrictPageMixin, ListView):
    """Search, filters and sortable columns from the query string (``lists.py``): the
    page and its CSV export read them the same way, and a bad value is a 400 naming it."""

    context_object_name = "requests"
    queue = False
    column_keys: tuple[str, ...] = ()
    query: lists.ListQuery

    def get_queryset(self) -> Any:
        self.query = lists.parse_query(self.request.GET)
        return selectors.request_search(self.request.user, queue=self.queue,
                                        sort=self.query.sort, **self.query.filters)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        now = timezone.now()
        lists.mark_ages(context["requests"], now)
        default_sort = "submitted" if self.queue else "-created"
        if self.query.filters["drifted"]:
            default_sort = "drifted"
        context.update({
            "now": now,
            "query": self.query,
            "filters": self.query.filters,
            "columns": lists.columns_for(self.query, self.column_keys, default_sort),
            "states": RequestState.choices,
            "kinds": RequestKind.choices,
            "tiers": QuotaTier.choices,
            "verdicts": [s.value for s in CheckStatus],
            # the teams a requester files for; approvers and auditors filter by any team
            "teams": (Team.objects.order_by("slug") if selectors.sees_everything(
                self.request.user) else selectors.team_list_for_user(self.request.user)
                      ).values_list("slug", flat=True),
            "csv_url": reverse("requests:queue_csv" if self.queue else "requests:list_csv")
            + (self.query.url() if self.query.raw else ""),
        })
        return context


class RequestListView(_SearchableListMixin):
    """Requests the user can see, newest first (a requester's own teams)."""

    template_name = "requests_app/relayrequest_list.html"
    paginate_by = 50
    column_keys = ("id", "kind", "subject", "team", "requester", "state", "checks",
                   "submitted", "created", "assigned")


class QueueView(_SearchableListMixin):
    """The approvers' queue: open requests oldest first, with the check summary."""

    template_name = "requests_app/relayrequest_queue.html"
    paginate_by = 100
    queue = True
    column_keys = ("id", "submitted", "kind", "subject", "addresses", "team", "requester",
                   "state", "checks", "assigned")

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.user.is_authenticated and not selectors.sees_everything(request.user):
            raise PermissionDenied("The queue is for approvers.")
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        # Active entries whose owners asked for production access: not "open" requests,
        # so the table leaves them out; the approvers decide them too.
        context["production_requests"] = quotas.production_pending_requests(
            selectors.request_list_for_user(self.request.user))[:PRODUCTION_QUEUE_ROWS]
        lists.mark_ages(context["production_requests"], context["now"])
        context["may_claim"] = is_approver(self.request.user)
        return context


def _list_csv(request: HttpRequest, *, queue: bool) -> StreamingHttpResponse:
    query = lists.parse_query(request.GET)
    rows = selectors.request_search(request.user, queue=queue, sort=query.sort,
                                    **query.filters)
    response = StreamingHttpResponse(lists.writer_lines(lists.csv_rows(rows, _csv_safe)),
                                     content_type="text/csv; charset=utf-8")
    name = lists.csv_filename("queue" if queue else "requests")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@login_required
def request_list_csv(request: HttpRequest) -> StreamingHttpResponse:
    """The requester list as CSV: the same filters and order as the page, every row."""
    return _list_csv(request, queue=False)


@login_required
def request_queue_csv(request: HttpRequest) -> StreamingHttpResponse:
    """The queue as CSV: the same filters and order as the page, every row."""
    if not selectors.sees_everything(request.user):
        raise PermissionDenied("The queue is for approvers.")
    return _list_csv(request, queue=True)


@login_required
@require_POST
def request_assign(request: HttpRequest, pk: int, claim: bool) -> HttpResponse:
    """Claim or release a request (``assignment.py``); back to where the button was.

    A claim of a request someone else holds answers 409 with the holder's name (the
    page says it); a user who could not decide the request gets 403.
    """
    obj = selectors.request_get_for_user(request.user, pk)
    act = assignment.claim if claim else assignment.release
    try:
        act(request_id=obj.pk, by=request.user, source_ip=client_ip(request))
    except ActionConflict as exc:
        return render(request, "requests_app/assignment_conflict.html",
                      {"message": _error_text(exc), "obj": obj},
                      status=409)
    if claim:
        messages.success(request, _("You claimed request #%(id)s.") % {"id": obj.pk})
    else:
        messages.success(request, _("You released request #%(id)s.") % {"id": obj.pk})
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return redirect(target)
    return redirect(obj)


@login_required
@require_POST
def request_take_over(request: HttpRequest, pk: int) -> HttpResponse:
    """Take over the claim another approver holds (``assignment.take_over``).

    The form sends the reason and the holder the page showed: a missing or bad reason is
    a 400 with the request page again, the field named and the text kept; a holder that
    changed meanwhile (another take-over, a release) is the 409 page naming who holds it
    now; a user who could not decide the request gets 403.
    """
    obj = selectors.request_get_for_user(request.user, pk)
    try:
        assignment.take_over(request_id=obj.pk, by=request.user,
                             reason=request.POST.get("reason", ""),
                             holder=request.POST.get("holder") or None,
                             source_ip=client_ip(request))
    except ValidationError as exc:
        return _refused_input(request, obj.pk, exc)
    except ActionConflict as exc:
        return render(request, "requests_app/assignment_conflict.html",
                      {"message": _error_text(exc), "obj": obj}, status=409)
    messages.success(request, _("You took over the claim on request #%(id)s; its previous "
                                "holder is told by mail.") % {"id": obj.pk})
    return HttpResponseRedirect(obj.get_absolute_url() + "#claim")


PRODUCTION_QUEUE_ROWS = 100


@login_required
def request_create(request: HttpRequest, kind: str) -> HttpResponse:
    if kind not in RequestKind.values:
        return render(request, "requests_app/relayrequest_choose.html",
                      {"kinds": _kind_cards()}, status=404)
    form_class = form_class_for(kind)
    form = form_class(request.POST or None, user=request.user)
    # One token per rendered form (hidden field): a double click or a resent POST carries
    # the same token, and the service then returns the request the first POST created.
    token = request.POST.get(FORM_TOKEN_FIELD, "") if request.method == "POST" else ""
    if request.method == "POST" and form.is_valid():
        try:
            obj, created = services.request_create_once(
                by=request.user,
                idempotency_key=token,
                team=form.cleaned_data["team"],
                kind=kind,
                data=form.service_data(),
                source_ip=client_ip(request),
                submit="submit" in request.POST,
            )
        except ValidationError as exc:
            _add_errors(form, exc)
        else:
            if created:
                messages.success(request,
                                 f"Request #{obj.pk} saved ({obj.get_state_display()}).")
                _warn_overlaps(request, obj)
            else:
                messages.info(request, f"Request #{obj.pk} was already saved: this form was "
                                       "sent more than once, and only one request was made.")
            return redirect(obj)
    try:
        token = services.validate_idempotency_key(token) or uuid.uuid4().hex
    except ValidationError:
        token = uuid.uuid4().hex
    return render(
        request,
        "requests_app/relayrequest_form.html",
        {"form": form, "kind": kind, "kind_label": RequestKind(kind).label,
         "quick_check": kind_spec(kind).quick_check,
         "form_token_field": FORM_TOKEN_FIELD, "form_token": token},
        status=400 if request.method == "POST" else 200,  # a POST here had errors
    )


FORM_TOKEN_FIELD = "idempotency_key"


def _warn_overlaps(request: HttpRequest, obj: RelayRequest) -> None:
    """A host another open request names is a warning, not a refusal (``accounts.py``)."""
    obj.refresh_from_db(fields=["fqdn", "ipv4", "ipv6", "replaces"])
    for holder in accounts.host_overlaps([accounts.subject_of(obj)]).get(obj.pk, []):
        messages.warning(request, accounts.overlap_warning(holder))


def _add_errors(form: Any, exc: ValidationError) -> None:
    if hasattr(exc, "error_dict"):
        for field, errors in exc.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc)


@login_required
def request_choose(request: HttpRequest) -> HttpResponse:
    return render(request, "requests_app/relayrequest_choose.html", {"kinds": _kind_cards()})


def _kind_cards() -> list[dict[str, str]]:
    """One card per request kind on the "New request" page: its value, label, description."""
    return [{"value": value, "label": RequestKind(value).label, "description": spec.description}
            for value, spec in KINDS.items()]


@login_required
def request_detail(request: HttpRequest, pk: int,
                   production_form: ProductionRequestForm | None = None) -> HttpResponse:
    obj = selectors.request_get_for_user(request.user, pk)
    # The buttons: the declared actions (actions.py) this user may fire now; the quota
    # actions have their own section ("Sending quota").
    available = [
        USER_ACTIONS[t.name] for t in obj.get_available_user_state_transitions(request.user)
        if t.name in USER_ACTIONS
    ]
    actions = [a for a in available if a.name not in PRODUCTION_ACTIONS]
    quota_actions = {a.name: a for a in available if a.name in PRODUCTION_ACTIONS}
    production_decisions = [quota_actions[n] for n in ("grant_production", "refuse_production")
                            if n in quota_actions]
    can_hand_over = obj.state == RequestState.ACTIVE and obj.is_team_member(request.user)
    # One action panel below the evidence: every button a person may press now, with ONE
    # comment box that each action reads (required for some: said next to the box).
    panel = [*actions, *production_decisions]
    context = {
        "obj": obj,
        "checks": list(obj.checks.all()),
        # Approvers' and other people's source IPs are for approvers and auditors only.
        "events": selectors.events_for_display(request.user, obj.events.all()),
        "actions": actions,
        "panel_actions": panel,
        "comment_required_for": [a.label for a in panel if a.needs_comment],
        # Why the relay config leaves it out, next to the retry/reject buttons.
        "provision_max_attempts": settings.RELAY_PROVISION_MAX_ATTEMPTS,
        "decision_form": DecisionForm(),
        "can_edit": obj.state in services.EDITABLE_STATES and obj.is_team_member(request.user),
        "snippets": snippets_for(obj)
        if obj.state in (RequestState.PROVISIONING, RequestState.ACTIVE) else [],
        "is_owner": obj.is_team_member(request.user),
        # Why mail waits (SMTP down, retrying): visible to the people who can see the request.
        "waiting_mail": list(obj.notifications.exclude(status=Notification.Status.SENT).only(
            "kind", "status", "attempts", "last_error", "created_at")),
        "can_renew": obj.state in services.RENEWABLE_STATES and obj.is_team_member(request.user),
        "can_hand_over": can_hand_over,
        # Suggestions for the handover field: only the user's own other teams, never the
        # list of every team (team slugs are not shown to people outside those teams).
        "other_teams": selectors.team_list_for_user(request.user).exclude(
            pk=obj.team_id).values_list("slug", flat=True)
        if obj.state == RequestState.ACTIVE else [],
        # An account logs in only once it is in the relay-allow group: show where the
        # latest group change stands, so "active" with a pending change is not a mystery.
        "directory_change": obj.directory_changes.order_by("-created_at", "-pk").only(
            "action", "status", "attempts", "last_error", "done_at", "done_by").first()
        if logs_in(obj.kind) else None,
        # Another open request naming the same FQDN or address: a warning (accounts.py).
        "overlap_warnings": [accounts.overlap_warning(h) for h in
                             accounts.host_overlaps([accounts.subject_of(obj)]).get(obj.pk, [])],
        # What a provisioning request still waits for ("active means usable").
        "pending_reasons": activation.pending_reasons(obj),
        # What the relay will do with each declared sender (server requests, from draft on).
        "sender_preview": sender_preview(obj),
        # The sending quota of an active entry, and who may ask for or decide production.
        "quota": quotas.limits_for(obj) if obj.state == RequestState.ACTIVE else None,
        # the owners' form, with their values and errors again after a refusal (400)
        "production_form": (production_form or ProductionRequestForm())
        if "request_production" in quota_actions else None,
        "production_decisions": production_decisions,
        "production_decision": quotas.last_production_decision(obj)
        if obj.state == RequestState.ACTIVE else None,
        # Where the account's password comes from, its rotation date, the owners' buttons.
        "credential": credential_status(obj, request.user),
        # The conversation (comments.py): the thread, and whether this user may write.
        "thread": comments.comment_thread(obj, request.user),
        # Who has claimed it, and the viewer's claim, release or take-over button.
        "claim": assignment.claim_panel(obj, request.user),
        "take_over_limit": assignment.TAKE_OVER_REASON_LIMIT,
    }
    return render(request, "requests_app/relayrequest_detail.html", context)


def _owned_or_403(request: HttpRequest, pk: int, what: str) -> RelayRequest:
    """The request for a page that changes it: 404 if the user cannot see it, 403 if
    they can (approvers, auditors) but are not in the owning team."""
    obj = selectors.request_get_for_user(request.user, pk)
    refusal = role_refusal(Role.REQUESTER, obj, request.user, f"{what} request #{obj.pk}")
    if refusal is not None:
        raise PermissionDenied(refusal)
    return obj


@login_required
def request_edit(request: HttpRequest, pk: int) -> HttpResponse:
    obj = _owned_or_403(request, pk, "edit")
    if obj.state not in services.EDITABLE_STATES:
        messages.error(request, f"A request in state '{obj.get_state_display().lower()}' "
                                "cannot be edited.")
        return redirect(obj)
    form_class = form_class_for(obj.kind)
    form = form_class(request.POST or None, user=request.user, initial=initial_for(obj))
    form.fields["team"].disabled = True
    if request.method == "POST" and form.is_valid():
        try:
            services.request_update(
                request_id=obj.pk,
                by=request.user,
                data=form.service_data(),
                source_ip=client_ip(request),
            )
            if "submit" in request.POST:
                services.request_act(
                    request_id=obj.pk, action="submit", by=request.user,
                    source_ip=client_ip(request),
                )
        except ValidationError as exc:
            _add_errors(form, exc)
        except (PermissionDenied, ActionConflict) as exc:
            messages.error(request, _error_text(exc))
            return redirect(obj)
        else:
            messages.success(request, "Request saved.")
            _warn_overlaps(request, obj)
            return redirect(obj)
    return render(
        request,
        "requests_app/relayrequest_form.html",
        {"form": form, "kind": obj.kind, "kind_label": obj.get_kind_display(), "obj": obj,
         "quick_check": kind_spec(obj.kind).quick_check},
        status=400 if request.method == "POST" else 200,  # a POST here had errors
    )


@login_required
@require_POST
def request_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    obj = selectors.request_get_for_user(request.user, pk)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        return _refused_input(request, obj.pk, form.errors.as_data())
    spec = USER_ACTIONS[action]
    comment = form.cleaned_data.get("comment", "")
    # A missing required comment is refused by the service first (400 naming the field):
    # asking "are you sure?" about a request that would be refused anyway wastes a step.
    if spec.confirm and not confirmed(request) and (comment or not spec.needs_comment):
        return confirm_page(
            request, obj, question=_("%(action)s request #%(pk)s?") % {
                "action": _(spec.label), "pk": obj.pk},
            consequence=_(spec.confirm), yes=_(spec.label),
            url=reverse(f"requests:{action}", args=[obj.pk]), fields={"comment": comment})
    try:
        services.request_act(
            request_id=obj.pk,
            action=action,
            by=request.user,
            comment=comment,
            source_ip=client_ip(request),
        )
    except ValidationError as exc:
        return _refused_input(request, obj.pk, exc)
    except (PermissionDenied, ActionConflict) as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, spec.done_message(obj.pk, _))
    return redirect(obj)


CONFIRM_FIELD = "confirm"


def confirmed(request: HttpRequest) -> bool:
    """Whether this POST is the second step of a confirmation (``confirm=1``): sent by
    the confirmation page without JavaScript, or by the request page's dialog with it."""
    return request.POST.get(CONFIRM_FIELD) == "1"


def confirm_page(request: HttpRequest, obj: RelayRequest, *, question: str,
                  consequence: str, yes: str, url: str, fields: dict[str, str]
                  ) -> HttpResponse:
    """"Are you sure?" for what cannot be undone, working without JavaScript: the same
    POST again with ``confirm=1`` and the typed values carried in hidden fields, or back
    to the request page. Nothing has changed yet, so it answers 200."""
    return render(request, "requests_app/confirm.html", {
        "obj": obj, "question": question, "consequence": consequence, "yes": yes,
        "url": url, "fields": fields, "confirm_field": CONFIRM_FIELD,
    })


@login_required
@require_POST
def request_production(request: HttpRequest, pk: int, action: str = "request_production"
                       ) -> HttpResponse:
    """The owners ask for production access (the form of the "Sending quota" section).

    The service decides, in this order: 403 for a non-member, 409 (a message, back to the
    page) for an entry not active, already in production or with a request pending, 400
    with the page and the form again, naming each bad field, for bad values.
    """
    obj = selectors.request_get_for_user(request.user, pk)
    form = ProductionRequestForm(request.POST)
    form.is_valid()  # only collects the strings: the service applies the rules
    data = form.cleaned_data
    try:
        quotas.request_production_access(
            request_id=obj.pk, by=request.user, volume=data.get("volume", ""),
            use_case=data.get("use_case", ""),
            bounce_handling=data.get("bounce_handling", ""), source_ip=client_ip(request),
        )
    except ValidationError as exc:
        _add_errors(form, exc)
        return _refused_input(request, obj.pk, exc, production_form=form)
    except (PermissionDenied, ActionConflict) as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, USER_ACTIONS[action].done_message(obj.pk, _))
    return redirect(obj)


def _refused_input(request: HttpRequest, pk: int,
                   errors: ValidationError | dict[str, list[ValidationError]],
                   production_form: ProductionRequestForm | None = None) -> HttpResponse:
    """The request page again, answered 400, with what was wrong in which field.

    A comment or team the service refused is bad input (400), not a wrong state (those
    redirect with a message): nothing was saved, and the page says why, field by field.
    """
    if isinstance(errors, ValidationError):
        errors = errors.error_dict if hasattr(errors, "error_dict") else {"": [errors]}
    for field, field_errors in errors.items():
        label = f"{field.replace('_', ' ').capitalize()}: " if field and field != "__all__" \
            else ""
        for error in field_errors:
            messages.error(request, label + " ".join(error.messages))
    response = request_detail(request, pk, production_form=production_form)
    response.status_code = 400
    return response


@requires_csrf_token  # the page's header has the logout form, as Django's own handlers
def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler400``: say which parameter was wrong and why (JSON under ``/api/``).

    Only ``BadParameter`` messages are shown: they are written by this app and never
    echo the value. Django's own 400s (a suspicious host, a too-large body) stay generic.
    """
    if isinstance(exception, params.BadParameter):
        name, message = exception.name, exception.message
    else:
        name, message = "non_field_errors", "The request could not be understood."
    if request.path.startswith("/api/"):
        return JsonResponse({name: [message]}, status=400)
    return render(request, "400.html", {"message": message}, status=400)


@login_required
@require_POST
def request_renew(request: HttpRequest, pk: int) -> HttpResponse:
    """Start a new draft from an entry (recertify with changes, or ask again)."""
    obj = _owned_or_403(request, pk, "renew")
    try:
        copy = services.request_renew(request_id=obj.pk, by=request.user,
                                      source_ip=client_ip(request))
    except (ValidationError, PermissionDenied, ActionConflict) as exc:
        messages.error(request, _error_text(exc))
        return redirect(obj)
    messages.success(request, f"Draft #{copy.pk} renews #{obj.pk}: edit it and submit.")
    return redirect("requests:edit", pk=copy.pk)


@login_required
@require_POST
def request_handover(request: HttpRequest, pk: int) -> HttpResponse:
    obj = _owned_or_403(request, pk, "hand over")
    to_team = request.POST.get("team", "").strip()
    comment = request.POST.get("comment", "")
    if to_team and not confirmed(request):
        return confirm_page(
            request, obj, question=_("Hand request #%(pk)s over to team %(team)s?") % {
                "pk": obj.pk, "team": to_team},
            consequence=_("The receiving team owns it from now on; your team no longer "
                          "sees it unless you are a member of both."),
            yes=_("Hand over"), url=reverse("requests:handover", args=[obj.pk]),
            fields={"team": to_team, "comment": comment})
    try:
        services.request_handover(request_id=obj.pk, by=request.user,
                                  to_team=to_team,
                                  comment=comment,
                                  source_ip=client_ip(request))
    except ValidationError as exc:
        return _refused_input(request, obj.pk, exc)
    except (PermissionDenied, ActionConflict) as exc:
        messages.error(request, _error_text(exc))
        return redirect(obj)
    messages.success(request, f"Request #{obj.pk} handed over.")
    if selectors.request_list_for_user(request.user).filter(pk=obj.pk).exists():
        return redirect(obj)
    return redirect("requests:list")


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Approvers' and auditors' overview: queue age, decisions, teams, lifecycle."""
    if not selectors.sees_everything(request.user):
        raise PermissionDenied("The dashboard is for approvers and auditors.")
    # The median's time window (days): bounded, so its cost does not grow with history.
    data = dashboard_data(timezone.now(), params.query_int(request.GET, "days", minimum=1,
                                                           maximum=3660))
    return render(request, "requests_app/dashboard.html", {
        "data": data,
        # Built from escaped text only (dashboard.weekly_chart_svg escapes every value).
        "chart": mark_safe(weekly_chart_svg(data.weeks)),  # noqa: S308
    })


@login_required
def request_events_csv(request: HttpRequest) -> StreamingHttpResponse:
    """The audit trail as CSV for approvers and auditors: streamed in constant memory,
    filtered by date range (``since``, ``until``: YYYY-MM-DD, both days included),
    ``team`` (slug) and ``request`` (id), ending on a row-count trailer so a cut-off
    download is detectable (``requests_app.audit_export``)."""
    if not selectors.sees_everything(request.user):
        raise PermissionDenied("The audit export is for approvers and auditors.")
    flt = AuditFilter(
        since=_query_date(request, "since"), until=_query_date(request, "until"),
        team=params.query_text(request.GET, "team", max_length=50),
        request_id=params.query_int(request.GET, "request", minimum=1),
    )
    response = StreamingHttpResponse(audit_csv_chunks(request.user, flt),
                                     content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="relaydesk-audit.csv"'
    return response


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _query_date(request: HttpRequest, name: str) -> date | None:
    """A YYYY-MM-DD query parameter (empty: none); anything else is a 400 naming it."""
    value = params.query_text(request.GET, name, max_length=10)
    if not value:
        return None
    try:
        if not _ISO_DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise params.BadParameter(name, _("The '%(name)s' parameter must be a date written "
                                          "YYYY-MM-DD.") % {"name": name}) from None
    return value
