"""API pagination whose ``limit`` and ``offset`` go through the parameter helper.

DRF's own ``LimitOffsetPagination`` parses with ``int()``: ``?limit=١`` is taken as 1,
``?limit=abc`` silently becomes the default, and ``?limit=9999999999999999999999999``
reached SQLite's LIMIT and failed there (a 500). Here each is a 400 naming the
parameter, and a page holds at most ``MAX_LIMIT`` rows.
"""

from __future__ import annotations

from typing import Any

from rest_framework.pagination import LimitOffsetPagination

from ..params import query_int

__all__ = ["MAX_LIMIT", "StrictLimitOffsetPagination"]

MAX_LIMIT = 1000
MAX_OFFSET = 2**31 - 1


class StrictLimitOffsetPagination(LimitOffsetPagination):
    max_limit = MAX_LIMIT

    def get_limit(self, request: Any) -> int | None:
        return query_int(request.query_params, self.limit_query_param, minimum=1,
                         maximum=MAX_LIMIT, default=self.default_limit)

    def get_offset(self, request: Any) -> int:
        return query_int(request.query_params, self.offset_query_param, minimum=0,
                         maximum=MAX_OFFSET, default=0) or 0
