"""Normalisation of host names and addresses, shared by forms, checks and config.

Django-free on purpose: the DNS engine and the Postfix renderer use it too, so what
is stored is exactly what is checked and written.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["normalise_address", "normalise_fqdn"]

_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalise_fqdn(value: str) -> str:
    """IDN to punycode, lower case, no trailing dot; raise ``ValueError`` if invalid.

    A valid host name has no wildcard, no empty label, labels of 1-63 letters, digits
    or hyphens (not at either end), and at most 253 characters in all.
    """
    if not isinstance(value, str):
        raise ValueError("a host name must be text")
    name = value.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("empty name")
    if "*" in name:
        raise ValueError("wildcards are not allowed")
    labels = name.split(".")
    out = []
    for label in labels:
        if not label:
            raise ValueError("empty label (two dots in a row or a leading dot)")
        if not label.isascii():
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                raise ValueError(f"label {label!r} is not a valid IDN label") from None
        label = label.lower()
        if len(label) > 63:
            raise ValueError(f"label {label[:20]!r}... is longer than 63 characters")
        if not _LABEL_RE.match(label):
            raise ValueError(
                f"label {label!r} may only hold letters, digits and inner hyphens"
            )
        out.append(label)
    fqdn = ".".join(out)
    if len(fqdn) > 253:
        raise ValueError("name is longer than 253 characters")
    return fqdn


def normalise_address(value: str) -> str:
    """The canonical text of a host address (``2001:0db8::0001`` -> ``2001:db8::1``)."""
    if not isinstance(value, str):
        raise ValueError("an address must be text")
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        raise ValueError("scoped addresses (with %zone) are not host addresses")
    return str(ipaddress.ip_address(text))
