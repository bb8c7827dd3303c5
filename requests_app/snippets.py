"""Ready-to-paste settings for the requester, rendered from the relay settings.

Accounts always use TLS (STARTTLS on the submission port, or implicit TLS): the relay
refuses plain text. No password is ever shown in a snippet: the snippets carry the real
account name, read the password from the environment (``RELAY_PASSWORD``) or leave a
placeholder, and say in a comment where it comes from (``activation.password_source``:
set in the directory, or the one-time link of the activation mail in ``issue`` mode).
Every snippet is a complete program or file of its language: the Django snippet imports
``os`` because it reads the environment, and the nodemailer one is CommonJS with its
``await`` inside an async function (``tests/test_snippets_run.py`` compiles each Python
snippet and runs ``node --check`` on each JavaScript one).

Every value placed in a snippet is encoded for the snippet's language, whatever the
validators let in: a requester copies the text into a program or a shell, so a value
such as ``"+__import__('os').system('id')+"@x.org`` (stored before a rule change, or
written past the validators) must stay a string there, never become code. Python and
JavaScript get double-quoted ASCII-only string literals (so also no U+2028, no
``</script>``), the shell gets ``shlex.quote``; Postfix's files have no quoting at all,
so a value outside the plain host/account alphabet is not rendered into them.

Server snippets also carry, as comment lines, what the relay will do with each declared
sender (:func:`sender_preview`, the relay's own rule in ``sender_policy``): a sender
inside a comment is written as an escaped ASCII literal too, because a line break in it
would end the comment and start code.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.template.loader import render_to_string
from django.utils.translation import gettext_lazy

from .activation import password_source
from .checking import check_config
from .kinds import kind_spec
from .models import RelayEndpoint
from .models import RelayRequest
from .models import TlsMode
from .sender_policy import Outcome
from .sender_policy import Verdict
from .sender_policy import outcome

__all__ = [
    "ISSUED_PASSWORD_PLACEHOLDER",
    "PASSWORD_PLACEHOLDER",
    "SenderPreview",
    "Snippet",
    "comment_text",
    "js_string",
    "python_string",
    "relay_endpoint",
    "sender_preview",
    "snippets_for",
]

PASSWORD_PLACEHOLDER = "<password from the directory>"
#: The placeholder in ``issue`` mode (``RELAY_ACCOUNT_CREDENTIALS``).
ISSUED_PASSWORD_PLACEHOLDER = "<password from your one-time link>"


@dataclass(frozen=True)
class Snippet:
    key: str
    title: str
    language: str
    text: str


@dataclass(frozen=True)
class Endpoint:
    host: str
    submission_port: int
    smtps_port: int


def relay_endpoint() -> Endpoint:
    """The default endpoint from the admin, else the ``RELAY_*`` settings."""
    row = RelayEndpoint.objects.filter(is_default=True).first()
    if row is not None:
        return Endpoint(row.host, row.submission_port, row.smtps_port)
    return Endpoint(
        settings.RELAY_HOST, settings.RELAY_SUBMISSION_PORT, settings.RELAY_SMTPS_PORT
    )


# The titles are headings on the request page (translated, lazily: this table is built at
# import); the snippets themselves are configuration, their comments stay English.
TITLES = {
    "postfix": (gettext_lazy("Postfix relayhost (main.cf)"), "ini"),
    "sasl_passwd": ("Postfix sasl_passwd", "text"),
    "django": (gettext_lazy("Django settings"), "python"),
    "smtplib": ("Python smtplib", "python"),
    "nodemailer": ("Node.js nodemailer", "javascript"),
    "test": (gettext_lazy("Connectivity test"), "shell"),
}


def _escaped_string(value: str, *, astral: str) -> str:
    """A double-quoted literal of ``value`` using only printable ASCII.

    Shared by Python and JavaScript, whose escapes agree for everything used here:
    backslash and double quote are escaped, and every other character outside
    printable ASCII (control characters, newlines, U+2028/U+2029, non-ASCII) becomes
    ``\\xNN`` or ``\\uNNNN``; ``<``, ``>`` and ``&`` too, so a literal pasted into an
    HTML ``<script>`` block cannot close it. ``astral`` formats code points above U+FFFF.
    """
    out = ['"']
    for char in value:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F and char not in "<>&":
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(astral.format(code))
    out.append('"')
    return "".join(out)


def python_string(value: str) -> str:
    """A Python string literal that evaluates to exactly ``value``."""
    return _escaped_string(value, astral="\\U{:08x}")


def js_string(value: str) -> str:
    """A JavaScript string literal that evaluates to exactly ``value`` (ES2015 escapes)."""
    return _escaped_string(value, astral="\\u{{{:x}}}")


# What Postfix's main.cf and sasl_passwd can take unquoted: no space, comment, comma,
# bracket or control character. Validated hosts and account names always match.
_POSTFIX_SAFE = re.compile(r"[A-Za-z0-9._-]+")


def _postfix_value(value: str) -> str | None:
    return value if _POSTFIX_SAFE.fullmatch(value) else None


def comment_text(value: str) -> str:
    """``value`` as one line of printable ASCII, safe inside a ``#`` or ``//`` comment of
    any snippet: whitespace runs (line breaks included) become one space and anything
    outside printable ASCII (U+2028 ends a JavaScript comment) becomes ``\\uNNNN``."""
    flat = " ".join(value.split())
    return "".join(ch if 0x20 <= ord(ch) < 0x7F else f"\\u{ord(ch):04x}" for ch in flat)


def _password_facts(request: RelayRequest) -> tuple[str, str]:
    """The placeholder and the comment saying where the password comes from."""
    issued = getattr(settings, "RELAY_ACCOUNT_CREDENTIALS", "directory") == "issue"
    placeholder = ISSUED_PASSWORD_PLACEHOLDER if issued else PASSWORD_PLACEHOLDER
    return placeholder, comment_text("Password: " + password_source(request))


def _encoded(values: dict[str, str | int]) -> dict[str, dict[str, str]]:
    """Each value as a Python literal, a JavaScript literal and a shell word."""
    return {
        "py": {k: python_string(str(v)) for k, v in values.items()},
        "js": {k: js_string(str(v)) for k, v in values.items()},
        "sh": {k: shlex.quote(str(v)) for k, v in values.items()},
    }


@dataclass(frozen=True)
class SenderPreview:
    """What the relay will do with a server's senders, before approval: one
    :class:`~requests_app.sender_policy.Outcome` per declared sender, and the settings
    the outcomes depend on (shown next to them)."""

    mode: str
    rewrite_domain: str
    approved_domains: tuple[str, ...]
    outcomes: tuple[Outcome, ...]

    @property
    def rewrites(self) -> bool:
        """As ``sender_policy.outcome`` reads the mode: anything but ``reject`` rewrites."""
        return self.mode != "reject"


def _rewrite_domain() -> str:
    """``RELAY_REWRITE_DOMAIN``, or ``srs.<RELAY_HOST>`` when it is empty (as the relay)."""
    return settings.RELAY_REWRITE_DOMAIN or f"srs.{settings.RELAY_HOST}"


def sender_preview(request: RelayRequest) -> SenderPreview | None:
    """Each declared sender of a server request with the relay's verdict on it.

    ``None`` for kinds that log in: the relay ties an account's senders to its login
    (``reject_authenticated_sender_login_mismatch``), not to this rule. The approved
    domains are the settings' plus the admin's (``checking.check_config``), the same
    list the relay config is built with, so the page promises what the relay does.
    """
    if kind_spec(request.kind).authenticates:
        return None
    declared = (*request.sender_addresses, *(f"@{d}" for d in request.sender_domains))
    approved = check_config().approved_sender_domains
    mode, rewrite_domain = settings.RELAY_SENDER_MODE, _rewrite_domain()
    outcomes = tuple(outcome(sender, declared, approved, mode=mode,
                             rewrite_domain=rewrite_domain) for sender in declared)
    return SenderPreview(mode, rewrite_domain, approved, outcomes)


def _preview_comments(preview: SenderPreview | None, literal: Callable[[str], str]
                      ) -> list[str]:
    """The sender preview as comment text, one line each, every request value written
    as an escaped literal (``literal``) so no value can end the comment."""
    if preview is None:
        return []
    lines = ["What the relay does with the senders declared on this request:"]
    for item in preview.outcomes:
        if item.verdict is Verdict.UNCHANGED:
            lines.append(f"  {literal(item.sender)}: sent unchanged")
        elif item.verdict is Verdict.REWRITTEN:
            lines.append(f"  {literal(item.sender)}: From and Return-Path become "
                         f"{literal(item.shown_as)}")
        else:
            lines.append(f"  {literal(item.sender)}: refused by the relay (553 5.7.1)")
    if not preview.outcomes:
        lines.append("  (none declared)")
    lines.append("Any other sender is " + (
        "rewritten the same way (SRS); bounces still reach it." if preview.rewrites
        else "refused with 553 5.7.1."))
    return lines


def snippets_for(request: RelayRequest) -> list[Snippet]:
    """The snippets for a request's kind and TLS mode, every value encoded for its target.

    The kind says which snippets it gets and whether it logs in (``kinds.py``).
    """
    endpoint = relay_endpoint()
    spec = kind_spec(request.kind)
    account = spec.authenticates
    smtps = account and request.tls_mode == TlsMode.SMTPS
    # Allowlisted servers use the submission port with opportunistic STARTTLS.
    port = int(endpoint.smtps_port if smtps else endpoint.submission_port)
    sender = (request.sender_addresses or [f"noreply@{d}" for d in request.sender_domains]
              or ["noreply@example.org"])[0]
    account_name = getattr(request, spec.login_field) if account else ""
    preview = sender_preview(request)
    placeholder, password_comment = _password_facts(request) if account else ("", "")
    context: dict[str, object] = {
        "port": port,
        "is_account": account,
        "smtps": smtps,
        # ``RELAY_REQUIRE_TLS``: the relay answers a plain MAIL with 530 5.7.0, so a
        # server's Postfix must not fall back to plain text ("encrypt", not "may").
        "require_tls": bool(settings.RELAY_REQUIRE_TLS),
        # comment lines, each value an escaped literal of the snippet's language
        "preview_py": _preview_comments(preview, python_string),
        "preview_js": _preview_comments(preview, js_string),
        "password": placeholder,
        # where the password comes from, one comment-safe line (accounts only)
        "password_comment": password_comment,
        # Postfix files: the raw value only when it needs no quoting (else None)
        "postfix_host": _postfix_value(endpoint.host),
        "postfix_account": _postfix_value(account_name) if account else "",
        **_encoded({
            "host": endpoint.host,
            "account": account_name,
            "sender": sender,
            "greeting": f"Hello through {endpoint.host}",
            "connect": f"{endpoint.host}:{port}",
        }),
    }
    out = []
    for key in spec.snippets:
        title, language = TITLES[key]
        text = render_to_string(f"requests_app/snippets/{key}.txt", context).strip() + "\n"
        out.append(Snippet(key=key, title=title, language=language, text=text))
    return out
