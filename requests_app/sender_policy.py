"""The relay's sender policy for allowlisted servers: one rule, used everywhere it is shown.

A server entry may send only as the senders it declared (``user@domain`` exactly, or
any local part at ``@domain``), and only on an approved sender domain (the domain itself
or a subdomain of one: ``RELAY_APPROVED_SENDER_DOMAINS`` plus the admin's list). The
relay's policy service (``policyd.py``) decides with :func:`sender_allowed`; the request
page and the snippets show the requester what :func:`outcome` says will happen, so what
is promised before approval is what the relay does after it.

For anything else the relay does what ``RELAY_SENDER_MODE`` says: ``rewrite`` (the
Sender Rewriting Scheme under the rewrite domain, done by postsrsd on the relay: the
envelope sender and the From header become ``SRS0=hash=day=domain=local@rewrite-domain``,
and a bounce to that address is turned back into the original sender) or ``reject``
(``553 5.7.1``, naming the approved domains).

The null sender (``MAIL FROM:<>``, a server's own bounces) is always passed unchanged.

No Django imports: the policy service runs on the relay without the app.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = (
    "MODES",
    "Outcome",
    "Verdict",
    "domain_approved",
    "outcome",
    "refusal_text",
    "sender_allowed",
    "srs_example",
)

#: The values of ``RELAY_SENDER_MODE``.
MODES = ("rewrite", "reject")


class Verdict(enum.StrEnum):
    UNCHANGED = "unchanged"
    REWRITTEN = "rewritten"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the relay does with one sender: the verdict, the address the recipient sees,
    and why (a sentence for the request page)."""

    sender: str
    verdict: Verdict
    shown_as: str
    reason: str


def domain_approved(domain: str, approved: Iterable[str]) -> str | None:
    """The approved domain that covers ``domain`` (itself or a parent), else ``None``."""
    domain = domain.lower().rstrip(".")
    for candidate in approved:
        if domain == candidate or domain.endswith("." + candidate):
            return candidate
    return None


def _declared(sender: str, declared: Iterable[str]) -> bool:
    domain = sender.rpartition("@")[2]
    for item in declared:
        item = item.lower()
        if item == sender or (item.startswith("@") and item[1:] == domain):
            return True
    return False


def sender_allowed(sender: str, declared: Iterable[str], approved: Iterable[str]) -> bool:
    """Whether the relay passes ``sender`` unchanged for an entry that declared ``declared``.

    ``sender`` is the envelope sender as Postfix reports it (``""`` for the null sender);
    compared case-insensitively, like Postfix's own table look-ups.
    """
    if sender == "":
        return True
    sender = sender.lower()
    if "@" not in sender:
        return False
    return _declared(sender, declared) and (
        domain_approved(sender.rpartition("@")[2], approved) is not None
    )


def srs_example(sender: str, rewrite_domain: str) -> str:
    """The form a rewritten sender takes (postsrsd's SRS0 with ``=`` separators); the hash
    and the day stamp change with the relay's secret and the date, so they are shown as
    placeholders."""
    local, _, domain = sender.rpartition("@")
    return f"SRS0=HHHH=TT={domain}={local}@{rewrite_domain}"


def _(text: str) -> str:
    """Mark ``text`` for makemessages (no Django here); the page translates it."""
    return text


def refusal_text(approved: Iterable[str]) -> str:
    """The relay's reply to a refused sender: code, enhanced status and the approved
    domains (policy-service action text, one line)."""
    domains = ", ".join(approved) or "none configured"
    return ("553 5.7.1 Sender address not permitted for this client: send as a sender "
            f"declared on its Relaydesk request, on an approved domain ({domains})")


def outcome(
    sender: str,
    declared: Iterable[str],
    approved: Iterable[str],
    *,
    mode: str,
    rewrite_domain: str,
) -> Outcome:
    """What the relay will do with ``sender`` (an address or ``@domain``, as declared)."""
    declared, approved = tuple(declared), tuple(approved)
    probe = f"anything{sender}" if sender.startswith("@") else sender
    if sender_allowed(probe, declared, approved):
        # gettext_noop: the page translates this reason (the composed ones stay English)
        return Outcome(sender, Verdict.UNCHANGED, sender,
                       _("declared on the request and on an approved sender domain"))
    domain = probe.rpartition("@")[2]
    reason = ("not declared on the request" if not _declared(probe.lower(), declared)
              else f"{domain} is not an approved sender domain")
    if mode == "reject":
        return Outcome(sender, Verdict.REFUSED, "", f"{reason}: refused with 553 5.7.1")
    return Outcome(sender, Verdict.REWRITTEN, srs_example(probe, rewrite_domain),
                   f"{reason}: From and Return-Path are rewritten (SRS), bounces still "
                   "reach the sender")
