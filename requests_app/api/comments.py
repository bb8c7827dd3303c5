"""``GET/POST /api/requests/{id}/comments/``: the conversation on a request.

The same service as the request page (``comments.comment_add``), so the same rules:
404 outside the caller's scope, 403 for a reader who may not write (auditors, other
teams' people who can see it), 400 naming ``body`` for empty, too long or
control-character text. The thread is short and read whole, so it is a plain array.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import comments
from .. import selectors
from ..models import RequestComment
from ..views import client_ip

__all__ = ["RequestCommentSerializer", "RequestCommentsView"]


class RequestCommentSerializer(serializers.ModelSerializer):
    """One comment as the thread shows it."""

    author = serializers.CharField(source="author_name", read_only=True,
                                   help_text="The author's user name.")
    side = serializers.ChoiceField(
        choices=[comments.OWNERS, comments.APPROVERS], read_only=True,
        help_text="Whom the author wrote for: the owning team (`owners`, mailed to the "
                  "approvers) or the approvers (`approvers`, mailed to the owners).")

    class Meta:
        model = RequestComment
        fields = ("id", "author", "side", "body", "created_at")
        read_only_fields = fields


CommentInput = inline_serializer("CommentInput", fields={
    "body": serializers.CharField(
        max_length=comments.COMMENT_LIMIT,
        help_text="The text; no control or text-direction characters."),
})


class RequestCommentsView(APIView):
    """The thread of one request: read it (whoever sees the request), add to it (its
    team and the approvers; the other side is mailed)."""

    pagination_class = None

    @extend_schema(operation_id="requests_comments_list",
                   responses=RequestCommentSerializer(many=True))
    def get(self, request: Request, pk: int) -> Response:
        obj = selectors.request_get_for_user(request.user, pk)  # 404 outside the scope
        return Response(RequestCommentSerializer(comments.comment_list(obj), many=True).data)

    @extend_schema(operation_id="requests_comments_create", request=CommentInput,
                   responses={201: RequestCommentSerializer})
    def post(self, request: Request, pk: int) -> Response:
        obj = selectors.request_get_for_user(request.user, pk)  # 404 outside the scope
        body: Any = request.data.get("body") if hasattr(request.data, "get") else None
        comment = comments.comment_add(request_id=obj.pk, by=request.user, body=body,
                                       source_ip=client_ip(request))
        return Response(RequestCommentSerializer(comment).data,
                        status=status.HTTP_201_CREATED)
