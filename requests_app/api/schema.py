"""The OpenAPI schema's error answers: every status code the API can give, with its body.

drf-spectacular documents the success answer of each operation and nothing else, so a
generated client knew no 400, 401, 403, 404, 409 or 415, and a schema-driven tester
(Schemathesis, ``tests/test_openapi_truth.py``) found every one of them undocumented.
The rules below say where each one can happen, from what the view is (its path
parameters, its method, whether it takes a body, who may call it), so a new endpoint
is documented the same way without a decorator of its own:

* 400 everywhere: a NUL in any query parameter or form field is refused at the door
  (``params.RefuseNulMiddleware``), a bad filter or body names itself;
* 401 wherever a token is read: none where one is needed, or a wrong one (even on
  ``/api/token/``, which needs none);
* 403 for a write to one request (a wrong role: ``services``' ``PermissionDenied``);
* 404 for a path with an id (another team's request is not found, not forbidden);
* 409 for a write to one request (wrong state, lost race, stale checks);
* 415 for a body in a media type the view does not parse.

An operation that declares one of these codes itself (``extend_schema(responses=...)``)
keeps its own.
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent

__all__ = ["ERROR_SCHEMA", "VALIDATION_ERRORS_SCHEMA", "RelaydeskAutoSchema"]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A refusal with one readable reason.",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
VALIDATION_ERRORS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "What was wrong, by name: `{field: [messages]}` for a body field "
        "(`non_field_errors` for the body as a whole), `{parameter: [message]}` for a "
        "query parameter. A list field names its bad items by index "
        "(`{\"ipv4\": {\"0\": [messages]}}`); a body that could not be parsed at all "
        "answers `{\"detail\": message}`."
    ),
    "additionalProperties": {
        "anyOf": [
            {"type": "array", "items": {"type": "string"}},
            {"type": "object",
             "additionalProperties": {"type": "array", "items": {"type": "string"}}},
            {"type": "string"},
        ],
    },
}

_DESCRIPTIONS: dict[str, Any] = {
    "400": _("Bad input: the body, a field or a query parameter, named with its reason."),
    "401": _("No valid credentials: send `Authorization: Token <key>` (from POST "
             "/api/token/); a token that is not valid is refused on every operation."),
    "403": _("Not allowed: the caller's role may not do this to this request."),
    "404": _("No such request among those the caller may see."),
    "409": _("Not now: the request's state does not allow it, someone changed it at the "
             "same time, or its check results are stale."),
    "415": _("The body's Content-Type is not one the operation reads (use "
             "application/json)."),
}
_WRITES = ("POST", "PUT", "PATCH")


def _component(registry: Any, name: str, schema: dict[str, Any]) -> dict[str, str]:
    """Register ``schema`` once as ``#/components/schemas/<name>``; return its $ref."""
    component = ResolvedComponent(name=name, type=ResolvedComponent.SCHEMA, schema=schema,
                                  object=f"relaydesk-{name}")
    registry.register_on_missing(component)
    return component.ref


class RelaydeskAutoSchema(AutoSchema):
    """drf-spectacular's schema plus the error answers each operation really gives."""

    def error_codes(self) -> list[str]:
        """The error status codes this operation can answer (rules: module docstring)."""
        codes = ["400"]
        if self.view.get_authenticators():
            codes.append("401")  # a wrong token is refused even where none is needed
        has_id = "{" in self.path
        writes = self.method in _WRITES
        if has_id:
            codes.append("404")
        if writes and has_id:
            codes += ["403", "409"]
        if writes:
            codes.append("415")
        return sorted(codes)

    def _resolve_path_parameters(self, variables: list[str]) -> list[dict[str, Any]]:
        """A request id is an integer: the router's digits-only pattern
        (``lookup_value_regex``) made drf-spectacular call it a string with a pattern,
        so generated clients took ``id`` as text. Any other value is a JSON 404."""
        parameters = super()._resolve_path_parameters(variables)
        for parameter in parameters:
            if parameter["schema"] == {"type": "string", "pattern": "^[0-9]+$"}:
                parameter["schema"] = {"type": "integer"}
        return parameters

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        error = _component(self.registry, "Error", ERROR_SCHEMA)
        invalid = _component(self.registry, "ValidationErrors", VALIDATION_ERRORS_SCHEMA)
        for code in self.error_codes():
            if code in responses:
                continue
            schema = invalid if code == "400" else error
            responses[code] = {
                "content": {"application/json": {"schema": schema}},
                "description": str(_DESCRIPTIONS[code]),
            }
        return responses

