"""Names as the engine uses them: the intake's rules, DNS names, organisational domains.

Where the rules live: host names, sender domains and host addresses are normalised by
``requests_app/rules.py``, the one rule set shared by the forms, the validators, the
API, the admin and the Postfix renderer. They stay there rather than here because the
renderer and the validators must not import the check engine (asyncio, the DNS client,
the public suffix list) to read a name; this module re-exports them under the engine's
names and adds only what the engine alone needs:

* :func:`dns_name` for names that are not host names (``_spf``, ``_dmarc``, DKIM
  selectors, SPF targets): ``_`` allowed, a single label allowed, same IDNA rules;
* :func:`organisational_domain` for DMARC's fallback (RFC 7489 3.2).
"""

from __future__ import annotations

import functools
import re

from publicsuffixlist import PublicSuffixList

from requests_app import rules
from requests_app.rules import normalise_address
from requests_app.rules import normalise_fqdn

__all__ = ["dns_name", "normalise_address", "normalise_domain", "normalise_fqdn",
           "organisational_domain"]

# Names that are not host names (``_spf``, ``_dmarc``, DKIM selectors) may use "_".
DNS_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
normalise_domain = normalise_fqdn  # sender domains follow host-name syntax too


def dns_name(value: str, what: str = "name") -> str:
    """Like :func:`normalise_fqdn` but allows ``_`` and single labels (SPF/DKIM names)."""
    return ".".join(rules.ascii_labels(value, what, DNS_LABEL_RE))


@functools.cache
def _psl() -> PublicSuffixList:
    # The list bundled with the package: never fetched at run time, updated with the package.
    return PublicSuffixList()


def organisational_domain(domain: str) -> str | None:
    """Public suffix + 1 label (RFC 7489 section 3.2), or None for a public suffix."""
    return _psl().privatesuffix(domain)
