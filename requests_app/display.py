"""How ids and stored values read to people: one place for pages, mails, flashes and CSV.

The application stores ids (``checks_passed``, ``pending_approval``, ``sender_spf``),
JSON (evidence, audit parameters) and host names in punycode, because those are what the
code, the API and DNS compare. People read labels instead, and the labels come from the
declarations themselves, never from a second copy:

* actions: ``actions.ACTIONS`` (the past tense: "Passed on to approvers");
* states: ``models.RequestState`` labels ("Pending approval");
* checks and statuses: ``checks.labels`` ("Reverse DNS names the host (PTR)", "Failed");
* JSON: ``json.dumps`` (pretty on pages, compact in the audit CSV), never ``repr``;
* IDN: the Unicode form of each ``xn--`` label (``bücher.example``).

The template filters (``templatetags/relaydesk.py``, loaded everywhere as a builtin)
are thin wrappers of these functions.
"""

from __future__ import annotations

import json
from datetime import UTC
from datetime import datetime
from typing import Any

import idna
from django.utils.text import capfirst
from django.utils.translation import gettext

from .actions import ACTIONS
from .checks import labels as check_labels
from .models import RequestEvent
from .models import RequestState

__all__ = [
    "action_done",
    "check_detail",
    "check_label",
    "check_progress",
    "compact_json",
    "event_summary",
    "fix_note",
    "pretty_json",
    "state_label",
    "status_label",
    "unicode_name",
    "words",
]


def check_label(check_id: str) -> str:
    """"Reverse DNS names the host (PTR)" for ``reverse``, translated."""
    return gettext(check_labels.check_label(check_id))


def _said(message: Any) -> str:
    """A stored engine message (``checks.results.Message.as_dict``) in the active language.

    The template is looked up in the catalog (an untranslated one, or one not in the
    catalog, reads as English) and each value that is itself a message in turn; a list of
    messages reads joined with "; ". Raises on a malformed message; callers fall back.
    """
    if isinstance(message, list):
        return "; ".join(_said(m) for m in message)
    if isinstance(message, dict) and "text" in message:
        args = {key: _said(value) if isinstance(value, dict | list) else value
                for key, value in (message.get("args") or {}).items()}
        return gettext(str(message["text"])) % args
    return str(message)


def check_detail(detail: str, evidence: Any) -> str:
    """A check result's ``detail`` in the reader's language.

    The engine has no Django: it stores the English sentence (what audit, API and CSV
    keep) and beside it the template and values (``evidence["message"]``); a result
    stored before that, or a message that no longer formats, reads as the English.
    """
    message = evidence.get("message") if isinstance(evidence, dict) else None
    if not message:
        return str(detail or "")
    try:
        return _said(message)
    except (KeyError, TypeError, ValueError):
        return str(detail or "")


def fix_note(fix: Any) -> str:
    """A proposed fix's note in the reader's language (``fix["note_message"]``, else the
    stored English ``note``), as :func:`check_detail` does for the detail."""
    if not isinstance(fix, dict):
        return ""
    message = fix.get("note_message")
    if not message:
        return str(fix.get("note") or "")
    try:
        return _said(message)
    except (KeyError, TypeError, ValueError):
        return str(fix.get("note") or "")


def status_label(status: str) -> str:
    """"Failed" for ``fail`` (a check's status or a request's verdict), translated."""
    if not status:
        return ""
    return gettext(check_labels.status_label(status))


def state_label(state: str) -> str:
    """"Pending approval" for ``pending_approval``; an unknown value as words."""
    if not state:
        return ""
    if state in RequestState.values:
        return str(RequestState(state).label)
    return state.replace("_", " ").capitalize()


def action_done(action: str) -> str:
    """What an action did, as an event title: "Sent back for changes" (``request_changes``).

    From the action's declared past tense (``actions.py``), the words the flash
    messages and 409s use too; an unknown name (an action since removed, on an old
    event) reads as its words.
    """
    spec = ACTIONS.get(action)
    if spec is None:
        return action.replace("_", " ").capitalize()
    return capfirst(gettext(spec.past))


def _states(event: RequestEvent) -> str:
    if not (event.from_state or event.to_state):
        return ""
    return f" ({state_label(event.from_state)} → {state_label(event.to_state)})"


def event_summary(event: RequestEvent) -> str:
    """One line of the timeline: "Passed on to approvers (Checking → Pending approval)",
    "Checks recorded: Failed", "Edited"; never an id."""
    parameters = event.parameters if isinstance(event.parameters, dict) else {}
    if event.type == RequestEvent.Type.TRANSITION:
        return action_done(str(parameters.get("action", ""))) + _states(event)
    if event.type == RequestEvent.Type.OVERRIDE:
        return gettext("Overrode the failed checks") + _states(event)
    if event.type == RequestEvent.Type.CHECKS_RECORDED:
        return gettext("Checks recorded: %(verdict)s") % {
            "verdict": status_label(str(parameters.get("verdict", "")))}
    if event.type == RequestEvent.Type.ASSIGNMENT and parameters.get("action") == "take_over":
        return gettext("Took over the claim from %(previous)s") % {
            "previous": str(parameters.get("previous", ""))}
    return capfirst(str(event.get_type_display())) + _states(event)


def pretty_json(value: Any) -> str:
    """Indented, key-sorted JSON with Unicode kept: evidence and parameters on a page
    (escaped by the template like any text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def compact_json(value: Any) -> str:
    """One-line key-sorted JSON: the audit CSV's ``parameters`` cell, readable by any
    JSON parser (a Python ``repr`` is not: single quotes, ``None``, ``True``)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      default=str)


def _unicode_domain(domain: str) -> str:
    labels = domain.split(".")
    if not any(label.lower().startswith("xn--") for label in labels):
        return domain
    shown = []
    for label in labels:
        if label.lower().startswith("xn--"):
            try:
                label = idna.decode(label)
            except (idna.IDNAError, UnicodeError):
                return domain  # broken punycode: show what is stored, not a guess
        shown.append(label)
    return ".".join(shown)


def unicode_name(value: Any) -> str:
    """A host name, domain or sender address with its IDN labels in Unicode:
    ``xn--bcher-kva.example`` reads ``bücher.example``, ``info@xn--bcher-kva.example``
    reads ``info@bücher.example``. Anything else (an address, plain ASCII) unchanged."""
    text = "" if value is None else str(value)
    if "xn--" not in text.lower():
        return text
    local, at, domain = text.rpartition("@")
    return f"{local}{at}{_unicode_domain(domain)}"


def words(name: str) -> str:
    """An internal name without a declared label (a mail kind, a parameter key) as
    words: ``checks_failed`` reads "Checks failed", never "checksfailed"."""
    return str(name or "").replace("_", " ").strip().capitalize()


#: After this long in ``checking`` with no worker on it, the page says it waits for one.
WAIT_NOTICE_SECONDS = 30


def check_progress(request: Any, now: datetime) -> str:
    """What a request in ``checking`` is doing, in the reader's language.

    Why: "the checks are running" is untrue while no worker has the request (a worker
    or its broker down, a long queue), and the requester should see why it waits and
    that nothing is lost. A claim (a lease) or a retry due later is written in
    ``check_next_attempt_at``; without one, or with one that is overdue, the request
    waits for a worker, since its last change, check run or the retry's due time
    (whichever is latest: a retry just due is being run, not forgotten).
    """
    due = request.check_next_attempt_at
    busy = due is not None and due > now
    since = max(filter(None, (request.updated_at, request.checks_ran_at, due)), default=now)
    if not busy and (now - since).total_seconds() >= WAIT_NOTICE_SECONDS:
        return gettext(
            "Waiting for a check worker since %(since)s UTC. Nothing is lost: the request is "
            "saved, and its checks start as soon as a worker is free; were their message "
            "lost, the periodic sweep sends them again.") % {
                "since": since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")}
    if request.check_attempts:
        return gettext(
            "DNS checks are running (attempt %(n)s: DNS did not answer last time, retrying "
            "with backoff). This page shows the results when they are in."
        ) % {"n": request.check_attempts + 1}
    return gettext("DNS checks are running. This page shows the results when they are in.")
