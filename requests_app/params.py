"""Query parameters, parsed one way everywhere: a bad value is a 400 naming it, never a 500.

Why a helper of its own: ``int()`` accepts what a URL should not carry (``int("²")``
fails, ``int("١")`` is 1, ``int(" 7 ")`` is 7), ``str.isdigit`` says yes to ``"²"``,
and a number that fits Python may not fit the database (SQLite refuses an integer
above 2**63-1 in LIMIT). Every view and the API read their query parameters through
these functions; ``BadParameter`` becomes a 400 page (``views.bad_request``) or a JSON
``{name: [message]}`` (``api.exceptions``). Messages name the parameter and the rule and
never echo the value (it may be huge or hold control characters).

``RefuseNulMiddleware`` answers 400 to a NUL character in any query parameter or form
field before a view runs: no field accepts one and PostgreSQL cannot store it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping

from django.core.exceptions import BadRequest
from django.http import HttpRequest
from django.http import HttpResponse
from django.utils.translation import gettext as _

__all__ = [
    "BadParameter",
    "RefuseNulMiddleware",
    "query_choice",
    "query_flag",
    "query_int",
    "query_text",
]

# The largest value a database integer column holds on every supported back end.
INT_MAX = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")  # [0-9] is ASCII only (\d would match "١" and "²")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_TRUE, _FALSE = ("1", "true", "on", "yes"), ("", "0", "false", "off", "no")


class BadParameter(BadRequest):
    """A query parameter (or form field) the request cannot be served with: HTTP 400."""

    def __init__(self, name: str, message: str) -> None:
        self.name, self.message = name, message
        super().__init__(f"{name}: {message}")


def _raw(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is not None and _CONTROL.search(value):
        raise BadParameter(name, _("Control characters and text-direction overrides are "
                                   "not allowed in the '%(name)s' parameter.") % {"name": name})
    return value


def query_int(params: Mapping[str, str], name: str, *, minimum: int = 0,
              maximum: int = INT_MAX, default: int | None = None) -> int | None:
    """A whole number written with the ASCII digits 0-9, within ``minimum..maximum``."""
    value = _raw(params, name)
    if value is None or value == "":
        return default
    if not _DIGITS.fullmatch(value) or not minimum <= int(value) <= maximum:
        raise BadParameter(name, _("The '%(name)s' parameter must be a whole number from "
                                   "%(minimum)d to %(maximum)d, written with the digits 0-9.")
                           % {"name": name, "minimum": minimum, "maximum": maximum})
    return int(value)


def query_choice(params: Mapping[str, str], name: str, choices: Iterable[str], *,
                 default: str = "") -> str:
    """One of ``choices``; absent or empty gives ``default``."""
    value = _raw(params, name)
    if value is None or value == "":
        return default
    allowed = list(choices)
    if value not in allowed:
        raise BadParameter(name, _("The '%(name)s' parameter must be one of: %(choices)s.")
                           % {"name": name, "choices": ", ".join(allowed)})
    return value


def query_text(params: Mapping[str, str], name: str, *, max_length: int = 200,
               default: str = "") -> str:
    """Free text of at most ``max_length`` characters, without control characters."""
    value = _raw(params, name)
    if value is None:
        return default
    if len(value) > max_length:
        raise BadParameter(name, _("The '%(name)s' parameter is at most %(limit)d characters.")
                           % {"name": name, "limit": max_length})
    return value


def query_flag(params: Mapping[str, str], name: str) -> bool:
    """A yes/no switch: 1/true/on/yes or 0/false/off/no (absent is no)."""
    value = (_raw(params, name) or "").lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadParameter(name, _("The '%(name)s' parameter must be 1/true/on or 0/false/off.")
                       % {"name": name})


class RefuseNulMiddleware:
    """400 for a NUL character in any query parameter or form field, names and values.

    Forms already refuse NUL field by field, but not every value reaches a form (a
    filter, a comment read directly, a field of another form on the same page), and
    PostgreSQL raises on a NUL in any string it is sent: one check at the door keeps
    every such request a 400. JSON bodies are checked by the serializers and services.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        sources = [("query parameter", request.GET)]
        if request.method == "POST" and request.content_type in (
            "application/x-www-form-urlencoded", "multipart/form-data"
        ):
            sources.append(("form field", request.POST))
        for what, data in sources:
            for key, values in data.lists():
                if "\x00" in key or any("\x00" in v for v in values):
                    name = key.replace("\x00", "\\0")[:100]
                    raise BadParameter(name, _("The %(what)s '%(name)s' contains a NUL "
                                               "character (U+0000), which no field accepts.")
                                       % {"what": what, "name": name})
        return self.get_response(request)
