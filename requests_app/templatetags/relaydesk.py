"""Template filters for what people read (a builtin: no ``{% load %}`` needed).

Each filter is one function of ``requests_app/display.py``, so a page, a mail and a
flash message say the same words for the same id.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import json_script
from django.utils.safestring import SafeString

from .. import display
from ..checks.labels import CHECK_LABELS
from ..checks.labels import STATUS_LABELS
from ..models import RequestEvent

register = template.Library()


@register.filter
def check_label(check_id: str) -> str:
    """``{{ c.check_id|check_label }}``: "Reverse DNS names the host (PTR)"."""
    return display.check_label(str(check_id))


@register.filter
def status_label(status: str) -> str:
    """``{{ c.status|status_label }}``: "Failed"."""
    return display.status_label(str(status or ""))


@register.filter
def check_detail(result: Any) -> str:
    """``{{ c|check_detail }}``: a check result's detail in the reader's language (a
    stored ``CheckResult``, a report's dict, or a mail's failing check with ``message``)."""
    if isinstance(result, dict):
        evidence = result["evidence"] if "evidence" in result else result
        return display.check_detail(result.get("detail", ""), evidence)
    return display.check_detail(getattr(result, "detail", ""), getattr(result, "evidence", None))


@register.filter
def check_progress(request: Any) -> str:
    """What a request in ``checking`` is doing now (running, or waiting for a worker)."""
    return display.check_progress(request, timezone.now())


@register.filter
def fix_note(fix: Any) -> str:
    """``{{ f|fix_note }}``: a proposed record's note in the reader's language."""
    return display.fix_note(fix)


@register.filter
def state_label(state: str) -> str:
    """``{{ e.to_state|state_label }}``: "Pending approval"."""
    return display.state_label(str(state or ""))


@register.filter
def action_done(action: str) -> str:
    """``{{ name|action_done }}``: "Sent back for changes"."""
    return display.action_done(str(action or ""))


@register.filter
def event_summary(event: RequestEvent) -> str:
    """``{{ e|event_summary }}``: "Passed on to approvers (Checking → Pending approval)"."""
    return display.event_summary(event)


@register.filter
def pretty_json(value: Any) -> str:
    """``<pre>{{ c.evidence|pretty_json }}</pre>``: indented JSON (auto-escaped)."""
    return display.pretty_json(value)


@register.filter
def idn(value: Any) -> str:
    """``{{ obj.fqdn|idn }}``: IDN labels in Unicode (``bücher.example``)."""
    return display.unicode_name(value)


@register.filter
def idn_list(values: Any) -> list[str]:
    """``{{ obj.sender_domains|idn_list|join:", " }}``: each item through :func:`idn`."""
    return [display.unicode_name(v) for v in values or ()]


@register.filter
def words(name: str) -> str:
    """``{{ n.kind|words }}``: "Checks failed" for a name without a declared label."""
    return display.words(name)


@register.simple_tag
def check_labels_script() -> SafeString:
    """``{% check_labels_script %}``: the check and status labels, translated, as a JSON
    ``<script>`` (id ``check-labels``) for the quick check's script to read."""
    return json_script({
        "checks": {key: display.check_label(key) for key in CHECK_LABELS},
        "statuses": {key: display.status_label(key) for key in STATUS_LABELS},
    }, "check-labels")
