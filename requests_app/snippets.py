"""Ready-to-paste settings for the requester, rendered from the relay settings.

Accounts always use TLS (STARTTLS on the submission port, or implicit TLS): the relay
refuses plain text. No password is ever stored or shown; snippets carry a placeholder
and the credential comes from the directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.template.loader import render_to_string

from .models import RelayEndpoint
from .models import RelayRequest
from .models import RequestKind
from .models import TlsMode

__all__ = ["PASSWORD_PLACEHOLDER", "Snippet", "relay_endpoint", "snippets_for"]

PASSWORD_PLACEHOLDER = "<password from the directory>"


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


TITLES = {
    "postfix": ("Postfix relayhost (main.cf)", "ini"),
    "sasl_passwd": ("Postfix sasl_passwd", "text"),
    "django": ("Django settings", "python"),
    "smtplib": ("Python smtplib", "python"),
    "nodemailer": ("Node.js nodemailer", "javascript"),
    "test": ("Connectivity test", "shell"),
}


def snippets_for(request: RelayRequest) -> list[Snippet]:
    endpoint = relay_endpoint()
    account = request.kind == RequestKind.ACCOUNT
    smtps = account and request.tls_mode == TlsMode.SMTPS
    port = endpoint.smtps_port if smtps else endpoint.submission_port
    if not account:
        # Allowlisted servers use the submission port with opportunistic STARTTLS.
        port = endpoint.submission_port
    sender = (request.sender_addresses or [f"noreply@{d}" for d in request.sender_domains]
              or ["noreply@example.org"])[0]
    context = {
        "host": endpoint.host,
        "port": port,
        "account": request.account_name if account else "",
        "is_account": account,
        "smtps": smtps,
        "password": PASSWORD_PLACEHOLDER,
        "sender": sender,
    }
    keys = ["postfix", *(["sasl_passwd"] if account else []), "django", "smtplib",
            "nodemailer", "test"]
    out = []
    for key in keys:
        title, language = TITLES[key]
        text = render_to_string(f"requests_app/snippets/{key}.txt", context).strip() + "\n"
        out.append(Snippet(key=key, title=title, language=language, text=text))
    return out
