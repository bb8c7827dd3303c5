"""What people read instead of the check ids and statuses: the one table of their names.

The ids (``address_policy``, ``sender_spf``) and statuses (``pass``, ``fail``) are a
contract: stored with every result, compared by the nightly recheck, returned by the API.
They are not words a requester knows, so every page and mail shows the label declared
here, next to the families' registry (``registry.py``): a new check is one module, one
line there and one line here (``tests/test_readable.py`` fails on a family without one).

No Django here (engine layer): the strings are marked with the no-op :func:`_`, which
``makemessages`` extracts, and translated where they are shown (``display.py``).
"""

from __future__ import annotations

__all__ = ["CHECKS_RUN", "CHECK_LABELS", "STATUS_LABELS", "check_label", "status_label"]

#: The id of the one result a request gets when its checks crashed (``checking``).
CHECKS_RUN = "checks_run"


def _(text: str) -> str:
    """Mark ``text`` for translation; the display code translates it (gettext_noop)."""
    return text


#: One label per check id, in report order. Says what the check wants to be true.
CHECK_LABELS: dict[str, str] = {
    "address_policy": _("Address allowed on the relay"),
    "forward": _("Host name points to its addresses (A/AAAA)"),
    "reverse": _("Reverse DNS names the host (PTR)"),
    "sender_spf": _("SPF lets the relay send for the domain"),
    "sender_dmarc": _("DMARC policy published"),
    "sender_dkim": _("DKIM key published"),
    "sender_domain_policy": _("Sender domain approved"),
    CHECKS_RUN: _("Checks ran to the end"),
}

#: The outcome of one check (and the verdict of a request: the worst of them).
STATUS_LABELS: dict[str, str] = {
    "pass": _("Passed"),
    "warn": _("Warning"),
    "fail": _("Failed"),
    "error": _("DNS did not answer"),
}


def check_label(check_id: str) -> str:
    """The untranslated label of ``check_id``; an unknown id (a check since removed,
    still on old results) reads as its id with spaces, never as an empty cell."""
    return CHECK_LABELS.get(check_id) or check_id.replace("_", " ").capitalize()


def status_label(status: str) -> str:
    """The untranslated label of a status or verdict; an unknown one as itself."""
    return STATUS_LABELS.get(status) or status.replace("_", " ").capitalize()
