"""The JSON API: the same selectors and services as the web UI, so the same rules."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Prefetch
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter
from drf_spectacular.utils import OpenApiResponse
from drf_spectacular.utils import extend_schema
from drf_spectacular.utils import inline_serializer
from rest_framework import mixins
from rest_framework import serializers
from rest_framework import status
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.decorators import api_view
from rest_framework.decorators import authentication_classes
from rest_framework.decorators import permission_classes
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from .. import accounts
from .. import activation
from .. import assignment
from .. import credentials
from .. import quotas
from .. import selectors
from .. import services
from ..actions import USER_ACTIONS
from ..checking import quick_check_report
from ..models import CheckResult
from ..models import RelayRequest
from ..models import RequestKind
from ..models import RequestState
from ..params import query_choice
from ..params import query_flag
from ..params import query_text
from ..validators import FREE_TEXT_LIMITS
from ..views import client_ip
from .schema import VALIDATION_ERRORS_SCHEMA
from .serializers import CheckResultSerializer
from .serializers import ProductionRequestSerializer
from .serializers import QuickCheckSerializer
from .serializers import RelayRequestSerializer
from .serializers import RequestEventSerializer

__all__ = ["QuickCheckThrottle", "RelayRequestViewSet", "not_found", "quick_check"]

# The body of a lifecycle action, derived from the action's comment rule (actions.py):
# where a comment is required the schema says so, as ``services.request_act`` does (400).
ActionSerializer = inline_serializer(
    "ActionInput", fields={"comment": serializers.CharField(
        required=False, allow_blank=True, max_length=FREE_TEXT_LIMITS["comment"],
        help_text="Goes to the audit trail (and the mail, where the action sends one).")}
)
CommentedActionSerializer = inline_serializer(
    "CommentedActionInput", fields={"comment": serializers.CharField(
        max_length=FREE_TEXT_LIMITS["comment"],
        help_text="Required: the reason, shown to the owners and kept in the audit trail; "
                  "empty or blank is a 400 naming `comment`.")}
)

_BOOLEAN = ("true", "false", "1", "0", "on", "off", "yes", "no")
LIST_FILTERS = [
    OpenApiParameter("state", str, enum=RequestState.values,
                     description="Only requests in this state."),
    OpenApiParameter("kind", str, enum=RequestKind.values,
                     description="Only requests of this kind."),
    OpenApiParameter("team", str, description="Only this team's requests (its slug, at "
                                              "most 50 characters)."),
    OpenApiParameter("drifted", str, enum=_BOOLEAN,
                     description="Only entries whose relay config drifted (true/1/on/yes)."),
    OpenApiParameter("production_pending", str, enum=_BOOLEAN,
                     description="Only active entries whose owners asked for production "
                                 "access (true/1/on/yes)."),
    OpenApiParameter("assigned", str, enum=["me", "none"],
                     description="Only requests claimed by the caller (me) or by nobody "
                                 "(none)."),
]


class RelayRequestViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Relay requests visible to the caller (a requester: their teams'; 404 otherwise)."""

    serializer_class = RelayRequestSerializer
    queryset = RelayRequest.objects.none()  # for the schema; get_queryset applies the scope
    lookup_value_regex = r"[0-9]+"  # ASCII digits: \d would also route "/requests/١/"
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> Any:
        qs = selectors.request_list_for_user(self.request.user).select_related(
            "assigned_to").prefetch_related(
            Prefetch("checks", queryset=CheckResult.objects.order_by("check_id", "subject"))
        )
        # Filters through the parameter helper: an unknown state or a NUL is a 400 naming
        # the parameter, not an empty list or a database error.
        params = self.request.query_params
        state = query_choice(params, "state", RequestState.values)
        kind = query_choice(params, "kind", RequestKind.values)
        team = query_text(params, "team", max_length=50)
        if state:
            qs = qs.filter(state=state)
        if kind:
            qs = qs.filter(kind=kind)
        if team:
            qs = qs.filter(team__slug=team)
        if query_flag(params, "drifted"):
            qs = qs.filter(drifted_at__isnull=False)
        assigned = query_choice(params, "assigned", ("me", "none"))
        if assigned == "me":
            qs = qs.filter(assigned_to=self.request.user)
        elif assigned == "none":
            qs = qs.filter(assigned_to__isnull=True)
        if query_flag(params, "production_pending"):
            # active entries whose owners asked for production access (approvers decide)
            qs = qs.filter(pk__in=quotas.production_pending_requests(qs).values("pk"))
        return qs.order_by("-created_at", "-pk")

    @extend_schema(parameters=LIST_FILTERS)
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """The caller's requests; each row's ``pending`` and ``warnings`` are computed for
        the whole page at once (a constant number of queries, not one per row)."""
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        rows = list(page) if page is not None else list(self.get_queryset())
        context = {
            **self.get_serializer_context(),
            "pending": activation.pending_reasons_many(rows),
            "overlaps": accounts.host_overlaps(accounts.subject_of(r) for r in rows),
        }
        data = self.get_serializer_class()(rows, many=True, context=context).data
        return self.get_paginated_response(data) if page is not None else Response(data)

    @extend_schema(
        parameters=[OpenApiParameter(
            "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
            description="Up to 100 visible ASCII characters. A retry with a key this user "
                        "already used returns the first request (200, header "
                        "Idempotent-Replayed: true) instead of creating a second one.",
        )],
        responses={201: RelayRequestSerializer, 200: RelayRequestSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create a request; ``Idempotency-Key`` makes a retried create return the first."""
        # Checked before the body, so a bad key is named as such whatever the body holds.
        services.validate_idempotency_key(request.headers.get("Idempotency-Key", ""))
        self._replayed = False
        response = super().create(request, *args, **kwargs)
        if self._replayed:
            response.status_code = status.HTTP_200_OK
            response["Idempotent-Replayed"] = "true"
        return response

    def perform_create(self, serializer: RelayRequestSerializer) -> None:
        data = dict(serializer.validated_data)
        team = data.pop("team")
        kind = data.pop("kind")
        submit = data.pop("submit", False)
        serializer.instance, created = services.request_create_once(
            by=self.request.user,
            idempotency_key=self.request.headers.get("Idempotency-Key", ""),
            team=team,
            kind=kind,
            data=data,
            source_ip=client_ip(self.request),
            submit=submit,
        )
        self._replayed = not created

    def perform_update(self, serializer: RelayRequestSerializer) -> None:
        data = dict(serializer.validated_data)
        data.pop("kind", None)
        submit = data.pop("submit", False)
        request_id = serializer.instance.pk
        services.request_update(
            request_id=request_id, by=self.request.user, data=data,
            source_ip=client_ip(self.request),
        )
        if submit:
            services.request_act(
                request_id=request_id, action="submit", by=self.request.user,
                source_ip=client_ip(self.request),
            )
        serializer.instance = self.get_queryset().get(pk=request_id)

    # The whole trail and every result as one array: no limit/offset (the pagination
    # class would put them in the schema, and a Paginated* body the view never sends).
    @extend_schema(responses=RequestEventSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def events(self, request: Request, pk: str | None = None) -> Response:
        """The audit trail, oldest first, as one array."""
        obj = self.get_object()
        return Response(RequestEventSerializer(
            obj.events.all(), many=True, context=self.get_serializer_context()).data)

    @extend_schema(responses=CheckResultSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def checks(self, request: Request, pk: str | None = None) -> Response:
        """The current check results, as one array."""
        obj = self.get_object()
        return Response(CheckResultSerializer(obj.checks.all(), many=True).data)

    @extend_schema(request=None, responses={201: RelayRequestSerializer})
    @action(detail=True, methods=["post"])
    def renew(self, request: Request, pk: str | None = None) -> Response:
        """A new draft copying this entry (recertify with changes, or ask again)."""
        obj = self.get_object()
        copy = services.request_renew(request_id=obj.pk, by=request.user,
                                      source_ip=client_ip(request))
        fresh = self.get_queryset().get(pk=copy.pk)
        return Response(self.get_serializer(fresh).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=inline_serializer("HandoverInput", fields={
            "team": serializers.CharField(),
            "comment": serializers.CharField(required=False, allow_blank=True)}),
        responses=RelayRequestSerializer,
    )
    @action(detail=True, methods=["post"])
    def handover(self, request: Request, pk: str | None = None) -> Response:
        """Give the entry to another team (audited; both teams are told)."""
        obj = self.get_object()
        team = request.data.get("team", "") if hasattr(request.data, "get") else ""
        comment = request.data.get("comment", "") if hasattr(request.data, "get") else ""
        if not isinstance(team, str) or not isinstance(comment, str):
            return Response({"team": ["Must be text."]}, status=status.HTTP_400_BAD_REQUEST)
        updated = services.request_handover(request_id=obj.pk, by=request.user, to_team=team,
                                            comment=comment, source_ip=client_ip(request))
        return Response(self.get_serializer(updated).data)

    def _act(self, request: Request, pk: str | None, name: str) -> Response:
        obj = self.get_object()  # 404 outside the caller's scope
        comment = request.data.get("comment", "") if hasattr(request.data, "get") else ""
        if not isinstance(comment, str):
            return Response({"comment": ["Must be text."]}, status=status.HTTP_400_BAD_REQUEST)
        services.request_act(
            request_id=obj.pk, action=name, by=request.user, comment=comment,
            source_ip=client_ip(request),
        )
        fresh = self.get_queryset().get(pk=obj.pk)
        return Response(self.get_serializer(fresh).data)


def _make_action(name: str) -> Any:
    def handler(self: RelayRequestViewSet, request: Request, pk: str | None = None) -> Response:
        return self._act(request, pk, name)

    spec = USER_ACTIONS[name]
    handler.__name__ = name
    handler.__doc__ = (f"{spec.label} (lifecycle action `{name}`, by the {spec.role}; comment "
                       f"{spec.comment}): 403 for a wrong role, 409 for a wrong state.")
    # ``action`` first: it replaces the function's ``kwargs``, where ``extend_schema``
    # leaves the schema (applied the other way round, the schema showed the request
    # body as the whole RelayRequest instead of the comment).
    handler = action(detail=True, methods=["post"], url_path=name, url_name=name)(handler)
    body = CommentedActionSerializer if spec.needs_comment else ActionSerializer
    return extend_schema(request=body, responses=RelayRequestSerializer)(handler)


for _name in USER_ACTIONS:
    setattr(RelayRequestViewSet, _name, _make_action(_name))


def _request_production(self: RelayRequestViewSet, request: Request,
                        pk: str | None = None) -> Response:
    """Ask for production access for an active sandbox entry (owners): volume, use case,
    bounce and complaint handling. 403 for a non-member; 409 when the entry is not
    active, already in production or has a request pending; 400 naming each bad field.
    Approvers answer with `grant_production` or `refuse_production` (comment required)."""
    obj = self.get_object()  # 404 outside the caller's scope
    body = request.data if hasattr(request.data, "get") else {}
    quotas.request_production_access(
        request_id=obj.pk, by=request.user, volume=body.get("volume"),
        use_case=body.get("use_case"), bounce_handling=body.get("bounce_handling"),
        source_ip=client_ip(request),
    )
    fresh = self.get_queryset().get(pk=obj.pk)
    return Response(self.get_serializer(fresh).data)


# The one action whose transition takes data (``Action.data``): its own input replaces
# the comment-only handler made above, at the same path.
_request_production.__name__ = "request_production"
RelayRequestViewSet.request_production = extend_schema(  # type: ignore[attr-defined]
    request=ProductionRequestSerializer, responses=RelayRequestSerializer,
)(action(detail=True, methods=["post"], url_path="request_production",
         url_name="request_production")(_request_production))


_PASSWORD_STATUS = inline_serializer("PasswordStatus", fields={
    "mode": serializers.ChoiceField(choices=["directory", "issue"]),
    "password_help": serializers.CharField(),
    "last_set_at": serializers.DateTimeField(allow_null=True),
    "rotate_due": serializers.DateTimeField(allow_null=True),
    "overdue": serializers.BooleanField(),
    "latest": serializers.JSONField(allow_null=True),
    "can_act": serializers.BooleanField(),
})


def _password_status(self: RelayRequestViewSet, request: Request,
                     pk: str | None = None) -> Response:
    """The account's password as the page shows it (mode, where to set it, last set,
    rotation due, the latest one-time link's state): never the password itself. 404 for
    a server entry or outside the caller's scope."""
    obj = self.get_object()
    status_ = credentials.credential_status(obj, request.user)
    if status_ is None:
        return Response({"detail": "Not a functional account."},
                        status=status.HTTP_404_NOT_FOUND)
    return Response(status_)


def _password_rotate(self: RelayRequestViewSet, request: Request,
                     pk: str | None = None) -> Response:
    """Rotate now (owners, `issue` mode): a new password is set in the directory and a
    new one-time link mailed to the owners; the old password stops working (after
    `RELAY_ACCOUNT_ROTATE_OVERLAP_MINUTES`). 403 for a non-member, 409 in `directory`
    mode or when the account is not active."""
    obj = self.get_object()
    credentials.credential_rotate_now(request_id=obj.pk, by=request.user,
                                      source_ip=client_ip(request))
    return Response(credentials.credential_status(obj, request.user))


def _password_rotated(self: RelayRequestViewSet, request: Request,
                      pk: str | None = None) -> Response:
    """"I rotated it" (owners, `directory` mode): restarts the rotation clock. 403 for a
    non-member, 409 in `issue` mode or when the account is not active."""
    obj = self.get_object()
    credentials.credential_confirm_rotated(request_id=obj.pk, by=request.user,
                                           source_ip=client_ip(request))
    return Response(credentials.credential_status(obj, request.user))


for _handler, _method, _path in ((_password_status, "get", "password"),
                                 (_password_rotate, "post", "password/rotate"),
                                 (_password_rotated, "post", "password/rotated")):
    _handler.__name__ = _path.replace("/", "_")
    setattr(RelayRequestViewSet, _handler.__name__, extend_schema(
        request=None, responses=_PASSWORD_STATUS,
    )(action(detail=True, methods=[_method], url_path=_path,
             url_name=_path.replace("/", "-"))(_handler)))


QUICK_CHECK_REFUSAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"errors": VALIDATION_ERRORS_SCHEMA,
                   "checks": {"type": "array", "maxItems": 0, "items": {}}},
    "required": ["errors", "checks"],
}
QUICK_CHECK_THROTTLED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"detail": {"type": "string"},
                   "checks": {"type": "array", "maxItems": 0, "items": {}}},
    "required": ["detail", "checks"],
}


def _claim(self: RelayRequestViewSet, request: Request, pk: str | None = None) -> Response:
    """Claim the request ("assigned to me"; approvers who could decide it): 403 for
    anyone else, 409 when it does not wait for approvers or another approver holds it
    (named). Audited."""
    obj = self.get_object()
    assignment.claim(request_id=obj.pk, by=request.user, source_ip=client_ip(request))
    return Response(self.get_serializer(self.get_queryset().get(pk=obj.pk)).data)


def _release(self: RelayRequestViewSet, request: Request, pk: str | None = None) -> Response:
    """Release one's own claim: 409 naming the holder when someone else holds it."""
    obj = self.get_object()
    assignment.release(request_id=obj.pk, by=request.user, source_ip=client_ip(request))
    return Response(self.get_serializer(self.get_queryset().get(pk=obj.pk)).data)


for _handler, _path in ((_claim, "claim"), (_release, "release")):
    _handler.__name__ = _path
    setattr(RelayRequestViewSet, _path, extend_schema(
        request=None, responses=RelayRequestSerializer,
    )(action(detail=True, methods=["post"], url_path=_path, url_name=_path)(_handler)))


TakeOverSerializer = inline_serializer("TakeOverInput", fields={
    "reason": serializers.CharField(
        max_length=assignment.TAKE_OVER_REASON_LIMIT,
        help_text="Required: why you take the claim over (the previous holder is mailed "
                  "it, the audit trail keeps it); empty or blank is a 400 naming `reason`."),
    "holder": serializers.CharField(
        required=False,
        help_text="The username you saw holding the claim (`assigned_to`). The claim moves "
                  "only if they still hold it, else 409 naming who does; without it, the "
                  "holder at the start of the call."),
})


def _take_over(self: RelayRequestViewSet, request: Request, pk: str | None = None) -> Response:
    """Take over the claim another approver holds (they are away), with a reason: an
    audited `assignment` event and one mail to the previous holder. 403 for anyone who
    could not decide the request, 400 naming `reason` (or `holder`) for bad input, 409
    when it does not wait for approvers, nobody holds it (claim it), or the holder
    changed (named). Taking over one's own claim changes nothing."""
    obj = self.get_object()
    body = request.data if hasattr(request.data, "get") else {}
    holder = body.get("holder")
    if holder is not None and not isinstance(holder, str):
        raise ValidationError({"holder": [_("The holder must be a username (text).")]})
    assignment.take_over(request_id=obj.pk, by=request.user, reason=body.get("reason"),
                         holder=holder or None,  # "" as the form sends it: not given
                         source_ip=client_ip(request))
    return Response(self.get_serializer(self.get_queryset().get(pk=obj.pk)).data)


_take_over.__name__ = "take_over"
RelayRequestViewSet.take_over = extend_schema(  # type: ignore[attr-defined]
    request=TakeOverSerializer, responses=RelayRequestSerializer,
)(action(detail=True, methods=["post"], url_path="take-over", url_name="take-over")(_take_over))


class QuickCheckThrottle(SimpleRateThrottle):
    """Per-user budget of quick checks (DRF's sliding window in Django's cache).

    The rate is read from the setting on every use, so a changed setting applies at
    once; 0 turns the limit off.
    """

    scope = "quick_check"

    def get_rate(self) -> str | None:
        per_minute = settings.RELAYDESK_QUICK_CHECK_PER_MINUTE
        return f"{per_minute}/min" if per_minute > 0 else None

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


@extend_schema(
    request=QuickCheckSerializer,
    responses={
        200: inline_serializer(
            "QuickCheckReport",
            fields={"verdict": serializers.CharField(),
                    "checks": CheckResultSerializer(many=True)},
        ),
        400: OpenApiResponse(
            {"anyOf": [QUICK_CHECK_REFUSAL_SCHEMA, VALIDATION_ERRORS_SCHEMA]},
            description="Bad input: `errors` names each bad field (`checks` is empty); a "
                        "body that is not JSON answers `{detail}`."),
        429: OpenApiResponse(
            QUICK_CHECK_THROTTLED_SCHEMA,
            description="Too many quick checks this minute (RELAYDESK_QUICK_CHECK_PER_MINUTE); "
                        "the Retry-After header says when to try again."),
    },
)
@api_view(["POST"])
def quick_check(request: Request) -> Response:
    """Address policy, forward and reverse checks for the form as the requester types.

    It runs on the web worker that answers, so it is bounded twice: each user gets
    ``RELAYDESK_QUICK_CHECK_PER_MINUTE`` calls a minute (then 429 with Retry-After), and
    the DNS work ends after ``RELAYDESK_QUICK_CHECK_SECONDS``. Nothing is stored.
    """
    throttle = QuickCheckThrottle()
    if not throttle.allow_request(request, None):
        wait = max(1, math.ceil(throttle.wait() or 60))
        return Response(
            {"detail": f"Too many quick checks: at most {throttle.num_requests} a minute "
                       f"per user. Try again in {wait} s.",
             "checks": []},
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(wait)},
        )
    serializer = QuickCheckSerializer(data=request.data)
    if not serializer.is_valid():
        return Response({"errors": serializer.errors, "checks": []}, status=400)
    data = serializer.validated_data
    return Response(
        quick_check_report(
            fqdn=data["fqdn"], addresses=[*data.get("ipv6", []), *data.get("ipv4", [])]
        )
    )


@extend_schema(exclude=True)
@api_view(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
@permission_classes([AllowAny])
@authentication_classes([])
def not_found(request: Request, *args: Any, **kwargs: Any) -> Response:
    """A path under /api/ that names no endpoint: JSON 404, as for a request not found.

    Generated clients (and Schemathesis) send ids that are not numbers; the router's
    digit-only pattern then matched nothing and Django answered with the web UI's HTML
    404 page, a Content-Type the schema does not promise.
    """
    raise NotFound()
