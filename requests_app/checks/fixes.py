"""Exact fixes: the DNS records that would make a failing or warning check pass.

A result that says *what* failed ("no PTR record") leaves the requester to work out
*which record to publish*, and that is where onboarding stalls. So every ``warn`` or
``fail`` result carries, in ``evidence["fix"]``, a list of records, each
``{"action", "type", "name", "value", "note"}``:

* ``action``: ``add`` (publish beside what is there), ``replace`` (publish instead of
  the record of this type and name that is there: the SPF and DMARC records must stay
  one), ``remove``, or ``none`` (no DNS record fixes it; ``note`` says what does);
* ``type``, ``name``, ``value``: the record, names without a trailing dot, TXT values
  as the text receivers join (``strings`` splits one longer than 255 characters into the
  character-strings it must be published as, RFC 7208 3.3);
* ``note``: why, and what to mind.

Everything here is a function of a result, the request's data and the settings (no
DNS, no Django): the one fix that needs DNS, the merged SPF record (it must pass for the
relay and stay within the 10 look-ups for everyone else), is evaluated by the SPF check
itself (``spf.py``), which builds its candidates with :func:`spf_candidates` and stores
the one that works under ``evidence["proposal"]``. ``tests/test_fixes.py`` publishes each
proposed record in the DNS test server and re-runs the checks.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import CheckConfig
from .names import organisational_domain
from .results import CheckResult
from .results import CheckStatus
from .results import Message
from .results import _
from .results import message_dict

__all__ = [
    "TXT_STRING_LIMIT",
    "SpfCandidate",
    "fixes_for",
    "spf_candidates",
    "txt_strings",
    "with_fixes",
]

TXT_STRING_LIMIT = 255  # RFC 1035 3.3: one character-string; RFC 7208 3.3 joins several
SPF_UDP_ADVICE = 450  # RFC 7208 3.4: keep the answer within 512 bytes of UDP
_DMARC_POLICIES = ("none", "quarantine", "reject")
_MODIFIER = re.compile(r"[a-z][a-z0-9_.-]*=.*", re.I)
_ALL = re.compile(r"[+\-~?]?all", re.I)
_FIXED = (CheckStatus.WARN, CheckStatus.FAIL)


def _fix(action: str, rtype: str, name: str, value: str,
         note: Message | list[Message]) -> dict[str, Any]:
    """One record; ``note`` in English under ``note`` (as stored before) and as its
    message(s) under ``note_message`` (a list is said joined with "; "), for the page and
    the mail to translate (``display.fix_note``)."""
    english = "; ".join(str(n) for n in note) if isinstance(note, list) else str(note)
    entry: dict[str, Any] = {"action": action, "type": rtype, "name": name, "value": value,
                             "note": english, "note_message": message_dict(note)}
    if rtype == "TXT" and len(value) > TXT_STRING_LIMIT:
        entry["strings"] = txt_strings(value)
    return entry


def txt_strings(value: str) -> list[str]:
    """``value`` cut into character-strings of at most 255 characters, in order.

    Receivers join them without a separator (RFC 7208 3.3, RFC 6376 3.6.2.2), so the
    cut may fall anywhere; one string longer than 255 cannot be published at all.
    """
    return [value[i:i + TXT_STRING_LIMIT] for i in range(0, len(value), TXT_STRING_LIMIT)] or [""]


# --- SPF -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpfCandidate:
    """One record to evaluate: its text, where the relay's terms went, and what to say."""

    record: str
    placement: str  # "new", "before all", "end", "first"
    notes: tuple[Message, ...] = ()


def _split(record: str) -> tuple[list[str], list[str]]:
    """(mechanisms, modifiers) of an SPF record, in order, the version left out."""
    mechanisms, modifiers = [], []
    for term in record.split()[1:]:
        (modifiers if _MODIFIER.fullmatch(term) else mechanisms).append(term)
    return mechanisms, modifiers


def _relay_terms(include: str | None, relay_addresses: Sequence[str]) -> list[str]:
    if include:
        return [f"include:{include}"]
    terms = []
    for address in relay_addresses:
        version = ipaddress.ip_address(address).version
        terms.append(f"ip{version}:{address}")
    return terms


def spf_candidates(records: Sequence[str], include: str | None,
                   relay_addresses: Sequence[str]) -> list[SpfCandidate]:
    """The one SPF record to publish instead of ``records``, in order of preference.

    The relay's terms (``include:RELAY_SPF_INCLUDE``, else ``ip4:``/``ip6:`` for each of
    ``RELAY_ADDRESSES``) are added to the existing mechanisms, never as a second record
    (two make every receiver's result a permerror, RFC 7208 4.5). The first candidate
    puts them just before the ``all`` term (which keeps its qualifier, last); the second
    puts them first, for a record where an earlier term decides for the relay's
    addresses (a ``-ip4:`` of them, or the relay's own networks listed without the
    include). Several records are merged into one: mechanisms in order without
    repeats, the first record's ``all``. The caller evaluates each candidate and keeps
    the first that passes within the limits. Empty when nothing can be proposed
    (no relay setting; two ``redirect=`` with no ``all``).
    """
    added = _relay_terms(include, relay_addresses)
    if not added:
        return []
    if not records:
        return [SpfCandidate(f"v=spf1 {' '.join(added)} ~all", "new", (
            Message(_("a new record: list every other server that sends as this domain (mx, "
                      "ip4:, include: of your providers) before ~all, and tighten it to -all "
                      "once they are all listed")),))]
    notes: list[Message] = []
    mechanisms: list[str] = []
    modifiers: list[str] = []
    alls: list[str] = []
    for record in records:
        mech, mods = _split(record)
        for term in mech:
            if _ALL.fullmatch(term):
                alls.append(term)
            elif term.lower() not in (m.lower() for m in mechanisms):
                mechanisms.append(term)
        for mod in mods:
            if mod.split("=", 1)[0].lower() not in (m.split("=", 1)[0].lower()
                                                    for m in modifiers):
                modifiers.append(mod)
    if len(records) > 1:
        notes.append(Message(_("merges the %(count)s SPF records into one (two or more make "
                               "every receiver's result a permerror, RFC 7208 4.5): remove "
                               "the others"), count=len(records)))
        if len({a.lower() for a in alls}) > 1:
            notes.append(Message(_("the records end differently (%(alls)s); this keeps the "
                                   "first, %(first)s"), alls=", ".join(alls), first=alls[0]))
    wanted = [t.lower() for t in added]
    mechanisms = [m for m in mechanisms if m.lower() not in wanted]  # moved, not repeated
    if alls:
        redirects = [m for m in modifiers if m.lower().startswith("redirect=")]
        if redirects:  # RFC 7208 6.1: ignored when the record has an "all"
            modifiers = [m for m in modifiers if m not in redirects]
            notes.append(Message(_("drops %(redirect)s: receivers ignore it beside an all "
                                   "term (RFC 7208 6.1)"), redirect=redirects[0]))
    elif len([m for m in modifiers if m.lower().startswith("redirect=")]) > 1:
        return []
    tail = [alls[0]] if alls else []

    def text(terms: list[str]) -> str:
        return " ".join(["v=spf1", *terms, *tail, *modifiers])

    where = "before all" if alls else "end"
    return [SpfCandidate(text(mechanisms + added), where, tuple(notes)),
            SpfCandidate(text(added + mechanisms), "first", tuple(notes))]


def _spf_fix(result: CheckResult, config: CheckConfig) -> list[dict[str, Any]]:
    evidence = result.evidence
    domain = result.subject
    proposal = evidence.get("proposal")
    if not proposal:
        return []
    if "record" not in proposal:
        problem = _stored(proposal.get("problem_message"), proposal.get("problem", ""))
        return [_fix("none", "TXT", domain, "",
                     Message(_("No single SPF record can be proposed: %(problem)s"),
                             problem=problem))]
    record = proposal["record"]
    relay = (f"include:{config.spf_include}" if config.spf_include
             else Message(_("the relay's addresses")))
    existing = proposal.get("replaces") or []
    notes: list[Message] = []
    if existing:
        notes.append(Message(_("replaces %(records)s: the same mechanisms with %(relay)s "
                               "added, one record"),
                             records=" and ".join(f"'{r}'" for r in existing), relay=relay))
    stored = proposal.get("note_messages")
    if stored:
        notes.extend(_stored(m, "") for m in stored)
    else:  # a proposal stored before its notes had messages
        notes.extend(_stored(None, n) for n in proposal.get("notes", ()))
    if proposal.get("placement") == "first":
        notes.append(Message(_("%(relay)s comes first: a term before it decides for the "
                               "relay's addresses"), relay=relay))
    notes.append(Message(_("%(lookups)s of 10 DNS look-ups for a sender it does not list "
                           "(RFC 7208 4.6.4)"), lookups=proposal["lookups"]))
    if len(record) > TXT_STRING_LIMIT:
        notes.append(Message(_("%(length)s characters: publish it as the %(count)s quoted "
                               "strings shown (at most 255 each; receivers join them)"),
                             length=len(record), count=len(txt_strings(record))))
    if len(record) > SPF_UDP_ADVICE:
        notes.append(Message(_("longer than 450 characters: some receivers may not get it "
                               "over UDP (RFC 7208 3.4)")))
    return [_fix("replace" if existing else "add", "TXT", domain, record, notes)]


def _stored(stored: Any, english: str) -> Message:
    """A message kept in evidence (a dict) as a :class:`Message` again; without one, the
    English text as it is (an older result)."""
    if isinstance(stored, dict) and "text" in stored:
        args = {k: _stored(v, "") if isinstance(v, dict) and "text" in v else v
                for k, v in (stored.get("args") or {}).items()}
        return Message(stored["text"], **args)
    return Message("%(text)s", text=english)


# --- DMARC -------------------------------------------------------------------------------


def _tags(record: str) -> list[tuple[str, str]]:
    tags = []
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            tags.append((key.strip().lower(), value.strip()))
    return tags


def _mailbox_domain(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def _rua(domain: str, report_to: str | None) -> tuple[str, list[dict[str, Any]], Message]:
    """The rua URI of a starter record, any authorisation record it needs, a note.

    The request's contact reads the reports (they are who will act on them). A mailbox
    outside the domain's organisational domain receives reports only if its domain
    says so, with ``<domain>._report._dmarc.<its domain>`` (RFC 7489 7.1).
    """
    if not report_to or "@" not in report_to:
        address = f"dmarc-reports@{domain}"
        return (f"mailto:{address}", [],
                Message(_("aggregate reports go to %(address)s: create that mailbox, or use "
                          "one you read"), address=address))
    target = _mailbox_domain(report_to)
    extra = []
    org = organisational_domain(domain) or domain
    if target and (organisational_domain(target) or target) != org:
        extra.append(_fix(
            "add", "TXT", f"{domain}._report._dmarc.{target}", "v=DMARC1",
            Message(_("published by %(target)s: receivers send %(domain)s's reports to a "
                      "mailbox in another domain only when that domain agrees (RFC 7489 "
                      "7.1)"), target=target, domain=domain)))
    return (f"mailto:{report_to}", extra,
            Message(_("aggregate reports go to %(address)s, the request's contact"),
                    address=report_to))


def _dmarc_record(tags: list[tuple[str, str]]) -> str:
    order = {"v": 0, "p": 1}
    ordered = sorted(tags, key=lambda t: order.get(t[0], 2))
    return "; ".join(f"{k}={v}" if k != "v" else "v=DMARC1" for k, v in ordered)


def _dmarc_fix(result: CheckResult, report_to: str | None) -> list[dict[str, Any]]:
    evidence = result.evidence
    domain = result.subject
    own = f"_dmarc.{domain}"
    record = evidence.get("record")
    found_at = evidence.get("found_at")
    if record is None:  # none at all, or several
        rua, extra, rua_note = _rua(domain, report_to)
        several = [n for n, values in (evidence.get("queried") or {}).items()
                   if sum(1 for v in values if v.startswith("v=DMARC1")) > 1]
        value = f"v=DMARC1; p=none; rua={rua}"
        if several:
            note = Message(_("%(name)s has several DMARC records and receivers ignore them "
                             "all: keep only this one"), name=several[0])
            return [_fix("replace", "TXT", several[0], value, [note, rua_note]), *extra]
        return [_fix("add", "TXT", own, value,
                     Message(_("a starter record: p=none only monitors (this check then "
                               "warns) while the reports show which mail passes; %(rua)s; "
                               "then p=quarantine"), rua=rua_note)),
                *extra]
    tags = _tags(record)
    if found_at and found_at != own:
        # the organisational domain's record applies: a record of the domain's own
        # overrides it for this domain alone (RFC 7489 6.6.3)
        rua = dict(tags).get("rua")
        extra: list[dict[str, Any]] = []
        rua_note = Message(_("reports to %(rua)s, as %(found_at)s says"), rua=rua,
                           found_at=found_at)
        if not rua:
            rua, extra, rua_note = _rua(domain, report_to)
        return [_fix("add", "TXT", own, f"v=DMARC1; p=quarantine; rua={rua}",
                     Message(_("a record of its own: receivers use it before %(found_at)s's; "
                               "%(rua)s"), found_at=found_at, rua=rua_note)), *extra]
    invalid = evidence.get("invalid_tags") or {}
    if result.status is CheckStatus.FAIL:  # no valid policy and no valid rua URI
        rua, extra, rua_note = _rua(domain, report_to)
        kept = [(k, v) for k, v in tags if k not in ("v", "p", "sp", "rua")]
        return [_fix("replace", "TXT", own,
                     _dmarc_record([("v", ""), ("p", "none"), *kept, ("rua", rua)]),
                     Message(_("a valid policy and a report address (%(rua)s): p=none only "
                               "monitors (this check then warns), p=quarantine once the "
                               "reports show that your own mail passes"), rua=rua_note)),
                *extra]
    fixed = []
    for key, value in tags:
        if key in ("p", "sp") and (value.lower() == "none" or key in invalid):
            value = "quarantine"
        elif key == "pct" and ("pct" in invalid or value == "0"):
            continue  # without pct= the policy covers all failing mail
        fixed.append((key, value))
    if "p" not in dict(fixed):
        fixed.append(("p", "quarantine"))
    return [_fix("replace", "TXT", own, _dmarc_record(fixed),
                 Message(_("p=quarantine once the aggregate reports show that all your own "
                           "mail passes SPF or DKIM aligned (mail that fails DMARC then goes "
                           "to spam)")))]


# --- the others --------------------------------------------------------------------------


def _address_type(address: str) -> str:
    return "AAAA" if ":" in address else "A"


def _forward_fix(result: CheckResult) -> list[dict[str, Any]]:
    evidence = result.evidence
    fqdn = result.subject
    target = evidence.get("canonical_name") or fqdn
    where: Message | str = (Message(_("; %(fqdn)s is a CNAME to %(target)s: the address "
                                      "records belong there"), fqdn=fqdn, target=target)
                            if target != fqdn else "")
    missing = evidence.get("missing")
    if missing is None:  # NXDOMAIN: every accepted address
        missing = evidence.get("expected", [])
    fixes = [_fix("add", _address_type(a), target, a,
                  Message(_("%(fqdn)s must resolve to every address of the request%(where)s"),
                          fqdn=fqdn, where=where))
             for a in missing]
    if result.status is CheckStatus.WARN or missing:
        fixes += [_fix("remove", _address_type(a), target, a,
                       Message(_("%(address)s is not in the request: remove it if that host "
                                 "does not send through the relay, or add it to the request"),
                               address=a))
                  for a in evidence.get("extra", [])]
    return fixes


def _reverse_fix(result: CheckResult) -> list[dict[str, Any]]:
    evidence = result.evidence
    fqdn = evidence.get("fqdn")
    if not fqdn:
        return []
    address = result.subject
    ptr = evidence.get("ptr") or []
    note = Message(_("published in the reverse zone of %(address)s, by whoever holds that "
                     "address block (your hosting or network provider), not in your domain's "
                     "zone; %(fqdn)s must also resolve to %(address)s (forward-confirmed)"),
                   address=address, fqdn=fqdn)
    if ptr:
        note = Message(_("one PTR, instead of %(names)s; %(rest)s"), names=", ".join(ptr),
                       rest=note)
    return [_fix("replace" if ptr else "add", "PTR", evidence.get("ptr_name", ""), fqdn, note)]


def _dkim_fix(result: CheckResult) -> list[dict[str, Any]]:
    evidence = result.evidence
    name = evidence.get("name", "")
    revoked = bool(evidence.get("records"))
    note = Message(_(
        "<public key> is the base64 public key of the key your mail signer uses for this "
        "selector (Relaydesk does not sign and cannot know it: opendkim-genkey writes it "
        "to <selector>.txt, a mail provider shows it in its DKIM settings; k=ed25519 for "
        "an Ed25519 key); a 2048-bit RSA key is longer than 255 characters: publish it "
        "as several quoted strings"))
    notes = [note, Message(_("the key there now is revoked (empty p=)"))] if revoked else note
    return [_fix("replace" if revoked else "add", "TXT", name,
                 "v=DKIM1; k=rsa; p=<public key>", notes)]


def _address_policy_fix(result: CheckResult) -> list[dict[str, Any]]:
    return [_fix("none", "", result.subject, "",
                 Message(_("no DNS record changes this: the relay allows only global host "
                           "addresses; use the public address the server sends from (its NAT "
                           "address), or ask the relay's administrators about a lab "
                           "network")))]


def _domain_policy_fix(result: CheckResult) -> list[dict[str, Any]]:
    return [_fix("none", "", result.subject, "",
                 Message(_("no DNS record changes this: mail from a domain the relay is not "
                           "approved for goes out with its envelope sender and From "
                           "rewritten; ask the relay's administrators to approve the domain "
                           "if it must not be")))]


def fixes_for(result: CheckResult, config: CheckConfig, *,
              report_to: str | None = None) -> list[dict[str, Any]]:
    """The records that would make ``result`` pass (empty for pass, error, or none known).

    ``report_to`` is the request's contact address, the ``rua`` of a proposed DMARC
    record. ``error`` gets none: an unanswered look-up says nothing about what to change.
    """
    if result.status not in _FIXED:
        return []
    check_id = result.id
    if check_id == "forward":
        return _forward_fix(result)
    if check_id == "reverse":
        return _reverse_fix(result)
    if check_id == "sender_spf":
        return _spf_fix(result, config)
    if check_id == "sender_dmarc":
        return _dmarc_fix(result, report_to)
    if check_id == "sender_dkim":
        return _dkim_fix(result)
    if check_id == "address_policy":
        return _address_policy_fix(result)
    if check_id == "sender_domain_policy":
        return _domain_policy_fix(result)
    return []


def with_fixes(results: Iterable[CheckResult], config: CheckConfig, *,
               report_to: str | None = None) -> list[CheckResult]:
    """``results`` with ``evidence["fix"]`` on each warn or fail that has a fix.

    Passing results are returned as they are (the common case costs one comparison).
    """
    out = []
    for result in results:
        if result.status in _FIXED:
            fix = fixes_for(result, config, report_to=report_to)
            if fix:
                result = CheckResult(result.id, result.subject, result.status, result.detail,
                                     {**result.evidence, "fix": fix})
        out.append(result)
    return out
