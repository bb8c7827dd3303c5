"""The JSON API: the same selectors and services as the web UI, so the same rules."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from drf_spectacular.utils import extend_schema
from drf_spectacular.utils import inline_serializer
from rest_framework import mixins
from rest_framework import serializers
from rest_framework import status
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from .. import selectors
from .. import services
from ..models import CheckResult
from ..models import RelayRequest
from ..views import client_ip
from .serializers import CheckResultSerializer
from .serializers import QuickCheckSerializer
from .serializers import RelayRequestSerializer
from .serializers import RequestEventSerializer

__all__ = ["RelayRequestViewSet", "quick_check"]

ActionSerializer = inline_serializer(
    "ActionInput", fields={"comment": serializers.CharField(required=False, allow_blank=True)}
)


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
    lookup_value_regex = r"\d+"
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> Any:
        qs = selectors.request_list_for_user(self.request.user).prefetch_related(
            Prefetch("checks", queryset=CheckResult.objects.order_by("check_id", "subject"))
        )
        params = self.request.query_params
        for field in ("state", "kind"):
            if params.get(field):
                qs = qs.filter(**{field: params[field]})
        if params.get("team"):
            qs = qs.filter(team__slug=params["team"])
        if params.get("drifted") in ("1", "true", "on"):
            qs = qs.filter(drifted_at__isnull=False)
        return qs.order_by("-created_at", "-pk")

    def perform_create(self, serializer: RelayRequestSerializer) -> None:
        data = dict(serializer.validated_data)
        team = data.pop("team")
        kind = data.pop("kind")
        submit = data.pop("submit", False)
        serializer.instance = services.request_create(
            by=self.request.user,
            team=team,
            kind=kind,
            data=data,
            source_ip=client_ip(self.request),
            submit=submit,
        )

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

    @extend_schema(responses=RequestEventSerializer(many=True))
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str | None = None) -> Response:
        obj = self.get_object()
        return Response(RequestEventSerializer(obj.events.all(), many=True).data)

    @extend_schema(responses=CheckResultSerializer(many=True))
    @action(detail=True, methods=["get"])
    def checks(self, request: Request, pk: str | None = None) -> Response:
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

    handler.__name__ = name
    handler.__doc__ = f"Lifecycle action `{name}`: 403 for a wrong role, 409 for a wrong state."
    handler = extend_schema(request=ActionSerializer, responses=RelayRequestSerializer)(handler)
    return action(detail=True, methods=["post"], url_path=name, url_name=name)(handler)


for _name in services.USER_ACTIONS:
    setattr(RelayRequestViewSet, _name, _make_action(_name))


@extend_schema(
    request=QuickCheckSerializer,
    responses=inline_serializer(
        "QuickCheckReport",
        fields={"verdict": serializers.CharField(), "checks": CheckResultSerializer(many=True)},
    ),
)
@api_view(["POST"])
def quick_check(request: Request) -> Response:
    """Address policy, forward and reverse checks for the form as the requester types.

    Bounded by ``DNS_LIFETIME_SECONDS``; nothing is stored.
    """
    serializer = QuickCheckSerializer(data=request.data)
    if not serializer.is_valid():
        return Response({"errors": serializer.errors, "checks": []}, status=400)
    from ..checking import quick_check_report

    data = serializer.validated_data
    return Response(
        quick_check_report(
            fqdn=data["fqdn"], addresses=[*data.get("ipv6", []), *data.get("ipv4", [])]
        )
    )
