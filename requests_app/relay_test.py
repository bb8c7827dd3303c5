"""The test-mail tool of one request: its facts, and the single-file script the owners run.

Organisations' onboarding guides ship such a tool because "it does not work" has a dozen
causes that only the sending host can see (its DNS, its firewall, its address, its TLS
trust store, its password). The checks themselves live in ``relay_probe`` (standard
library only); the script is that module's source with the request's facts written into
its facts block, and the relay's sender rule (``sender_policy``) written in place of
its import, so the downloaded script, ``manage.py relay_test`` and the relay decide
alike.

Every request value (host, senders, addresses, account, FQDN) is written as a Python
literal by ``snippets.python_string`` (printable ASCII, escaped), and into the header
comments by ``snippets.comment_text``: a value that got past the validators, or was
stored before a rule change, stays data in the script and never becomes code. The
messages are those of ``relay_probe`` in the language active at download
(``TRANSLATIONS``), kept only where the translation has the same ``{placeholders}``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import string
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext

from . import relay_probe
from . import sender_policy
from .checking import check_config
from .kinds import kind_spec
from .models import RelayRequest
from .models import TlsMode
from .snippets import comment_text
from .snippets import python_string
from .snippets import relay_endpoint

__all__ = ("facts_for", "render_script", "script_filename")

PROBE_SOURCE = Path(relay_probe.__file__)
_BLOCKS = {
    "rule": ("# relaydesk:rule-begin", "# relaydesk:rule-end"),
    "facts": ("# relaydesk:facts-begin", "# relaydesk:facts-end"),
}
#: The functions of the relay's sender rule the script carries (``sender_allowed`` and
#: what it calls), in definition order.
_RULE = (sender_policy.domain_approved, sender_policy._declared, sender_policy.sender_allowed)


def script_filename(request: RelayRequest) -> str:
    return f"relaydesk-test-{int(request.pk)}.py"


def _default_sender(request: RelayRequest) -> str:
    """The snippets' sender: the first declared address, else noreply@ the first domain."""
    if request.sender_addresses:
        return str(request.sender_addresses[0])
    if request.sender_domains:
        return f"noreply@{request.sender_domains[0]}"
    return ""


def facts_for(request: RelayRequest, *, page_url: str = "") -> relay_probe.Facts:
    """What the tool needs to know about ``request``: the snippets' endpoint and port
    (servers use the submission port with STARTTLS; accounts their TLS mode), the
    declared senders, the approved domains and the relay's sender mode and TLS rule."""
    endpoint = relay_endpoint()
    spec = kind_spec(request.kind)
    account = spec.authenticates
    implicit = account and request.tls_mode == TlsMode.SMTPS
    return relay_probe.Facts(
        request_id=int(request.pk),
        kind=str(request.kind),
        subject=str(getattr(request, spec.subject_field) or ""),
        host=str(endpoint.host),
        port=int(endpoint.smtps_port if implicit else endpoint.submission_port),
        implicit_tls=bool(implicit),
        # Accounts log in only over TLS; servers need it when RELAY_REQUIRE_TLS says so.
        require_tls=bool(account or settings.RELAY_REQUIRE_TLS),
        account=str(getattr(request, spec.login_field)) if account else "",
        addresses=tuple(str(a) for a in (*request.ipv6, *request.ipv4)) if not account
        else (),
        senders=(*(str(s) for s in request.sender_addresses),
                 *(f"@{d}" for d in request.sender_domains)),
        approved=tuple(check_config().approved_sender_domains),
        sender_mode=str(settings.RELAY_SENDER_MODE),
        tier=str(request.quota_tier),
        default_sender=_default_sender(request),
        page=page_url,
    )


def _literal(value: object) -> str:
    """A Python literal of a facts value (str, int, bool or tuple of str) only."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return python_string(value)
    if isinstance(value, tuple):
        return "(" + "".join(python_string(str(v)) + ", " for v in value).rstrip() + ")"
    raise TypeError(f"no literal for {type(value).__name__}")


def _messages(source: str) -> list[str]:
    """Every ``_("...")`` message of the probe, in order, each once."""
    found: dict[str, None] = {}
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "_" and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            found[node.args[0].value] = None
    return list(found)


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def translations(source: str) -> dict[str, str]:
    """The probe's messages in the active language; a translation whose placeholders
    differ from the message's is left out (the script would fail on it)."""
    out = {}
    for message in _messages(source):
        translated = gettext(message)
        if translated != message:
            try:
                same = _fields(translated) == _fields(message)
            except ValueError:
                same = False
            if same:
                out[message] = translated
    return out


def _facts_block(facts: relay_probe.Facts, messages: dict[str, str]) -> str:
    lines = ["# The facts of this request (written by Relaydesk; edit --options, not these).",
             "FACTS: Facts | None = Facts("]
    for field in dataclasses.fields(facts):
        lines.append(f"    {field.name}={_literal(getattr(facts, field.name))},")
    lines.append(")")
    lines.append("TRANSLATIONS: dict[str, str] = {")
    for message, translated in messages.items():
        lines.append(f"    {python_string(message)}: {python_string(translated)},")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _rule_block() -> str:
    parts = ["# The relay's sender rule (Relaydesk's requests_app/sender_policy.py)."]
    parts += [inspect.getsource(function) for function in _RULE]
    return "\n\n".join(parts)


def _replace(source: str, block: str, text: str) -> str:
    begin, end = _BLOCKS[block]
    lines = source.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(begin)]
    ends = [i for i, line in enumerate(lines) if line.startswith(end)]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"relay_probe.py must have one {block} block")
    return "".join(lines[:starts[0]]) + text + "".join(lines[ends[0] + 1:])


def render_script(request: RelayRequest, *, page_url: str = "") -> str:
    """The single-file test-mail tool of ``request`` (ASCII; standard library only)."""
    source = PROBE_SOURCE.read_text(encoding="ascii")
    facts = facts_for(request, page_url=page_url)
    body = _replace(source, "rule", _rule_block())
    body = _replace(body, "facts", _facts_block(facts, translations(source)))
    name = script_filename(request)
    header = [
        "#!/usr/bin/env python3",
        f"# Relaydesk test-mail tool for request #{facts.request_id} "
        f"({comment_text(facts.kind)} {comment_text(facts.subject)}).",
        f"# Run: python3 {name} --to you@example.org   (python3 {name} --help for options)",
        f"# Made {timezone.now():%Y-%m-%d %H:%M} UTC; standard library only.",
    ]
    return "\n".join(header) + "\n" + body
