"""Key handling for functional-account passwords: AES-GCM at rest, one-time link tokens.

Kept apart from ``credentials.py`` (domain) so the outbox (``notifications.py``, core)
can put a link into a mail when it renders it, without the link's token ever being
stored: the token is derived from ``RELAY_CREDENTIAL_KEY`` and the row's random salt,
and only its SHA-256 is in the database. Whoever holds a database dump but not the key
gets neither the password (encrypted) nor a working link (only a hash).

* ``encrypt``/``decrypt``: AES-256-GCM, a fresh 96-bit nonce per message, associated data
  naming the row and the purpose (``credential:<id>:<purpose>``), so a ciphertext copied
  into another row (or from the "old password" column into the "new password" one) does
  not decrypt.
* ``key_id``: the first 16 hex digits of the SHA-256 of the key, stored with each
  ciphertext, so a changed key is recognised and reported, not mistaken for tampering.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse

from .models import AccountCredential

__all__ = [
    "CredentialKeyChanged",
    "CredentialUnreadable",
    "associated_data",
    "credential_key",
    "credential_link_url",
    "decrypt",
    "encrypt",
    "key_id",
    "link_token",
    "new_salt",
    "token_hash",
]

NONCE_BYTES = 12
_TOKEN_LABEL = b"relaydesk one-time credential link v1"


class CredentialUnreadable(Exception):
    """A stored ciphertext does not decrypt (tampered, or moved to another row)."""


class CredentialKeyChanged(CredentialUnreadable):
    """The ciphertext was made with another ``RELAY_CREDENTIAL_KEY`` (rotated or lost)."""


def credential_key() -> bytes:
    """The 32-byte key from ``RELAY_CREDENTIAL_KEY`` (base64), or ImproperlyConfigured."""
    raw = settings.RELAY_CREDENTIAL_KEY
    if not raw:
        raise ImproperlyConfigured(
            "RELAY_CREDENTIAL_KEY is not set: issue mode needs base64 of 32 random bytes."
        )
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ImproperlyConfigured("RELAY_CREDENTIAL_KEY is not valid base64.") from None
    if len(key) != 32:
        raise ImproperlyConfigured(
            f"RELAY_CREDENTIAL_KEY must decode to 32 bytes (AES-256), not {len(key)}."
        )
    return key


def key_id(key: bytes | None = None) -> str:
    """A short, non-secret name of the key: which key a ciphertext needs."""
    return hashlib.sha256(key or credential_key()).hexdigest()[:16]


def associated_data(row_id: int, purpose: str) -> bytes:
    """What a ciphertext is bound to: this row and this column's purpose."""
    return f"relaydesk-credential:{row_id}:{purpose}".encode()


def encrypt(plaintext: str, *, row_id: int, purpose: str) -> tuple[bytes, str]:
    """``nonce || ciphertext+tag`` and the key id; a new random nonce every call."""
    key = credential_key()
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), associated_data(row_id, purpose))
    return nonce + sealed, key_id(key)


def decrypt(blob: bytes, *, row_id: int, purpose: str, stored_key_id: str) -> str:
    """The plaintext, or :class:`CredentialKeyChanged` / :class:`CredentialUnreadable`."""
    key = credential_key()
    if stored_key_id and stored_key_id != key_id(key):
        raise CredentialKeyChanged(
            "this secret was encrypted with another RELAY_CREDENTIAL_KEY; it cannot be read"
        )
    blob = bytes(blob)
    try:
        plain = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                    associated_data(row_id, purpose))
    except InvalidTag:
        raise CredentialUnreadable("the stored secret does not decrypt") from None
    return plain.decode()


def new_salt() -> str:
    """Per-link randomness: 128 bits, hex."""
    return secrets.token_hex(16)


def link_token(row_id: int, salt: str) -> str:
    """The link's token: HMAC-SHA256 under a key derived from ``RELAY_CREDENTIAL_KEY``.

    Unguessable without the key (the salt is random per link); recomputed when the mail
    is rendered, so the token itself is never stored.
    """
    derived = hmac.new(credential_key(), _TOKEN_LABEL, hashlib.sha256).digest()
    mac = hmac.new(derived, f"{row_id}:{salt}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def token_hash(token: str) -> str:
    """What the database keeps of a token (looked up by equality: an index hit)."""
    return hashlib.sha256(token.encode()).hexdigest()


def credential_link_url(row_id: int) -> str:
    """The absolute one-time link of a credential row, for the mail (empty if none)."""
    row = AccountCredential.objects.filter(pk=row_id).only("pk", "token_salt").first()
    if row is None or not row.token_salt:
        return ""
    token = link_token(row.pk, row.token_salt)
    path = reverse("requests:credential_link", kwargs={"token": token})
    return settings.RELAYDESK_BASE_URL.rstrip("/") + path
