"""The check families the engine runs, in report order: adding a check is one line here.

Each family is declared in its own module (what it applies to, how it checks, its first
look-ups: see ``family.py``). The engine reads this list on every run: planning runs
the families without look-ups (``judge``) in this order, the report lists results in
this order, and a batch asks ahead the first look-ups of the families with DNS checks.

Order matters twice: the address policy comes first because it decides which addresses
the DNS checks see, and the report's order is part of its contract (tests and pages
compare it).

A new check id is also new to every entry approved before it: the nightly recheck does
not count it as drift on its first night (``drift.py``, docs/dns-checks.md "Drift and
new checks").
"""

from __future__ import annotations

from .family import CheckFamily
from .host import FORWARD
from .host import REVERSE
from .policy import ADDRESS_POLICY
from .sender import DKIM
from .sender import DMARC
from .sender import DOMAIN_POLICY
from .spf import SENDER_SPF

__all__ = ["FAMILIES", "family_ids", "register", "unregister"]

FAMILIES: list[CheckFamily] = [
    ADDRESS_POLICY,
    FORWARD,
    REVERSE,
    SENDER_SPF,
    DMARC,
    DKIM,
    DOMAIN_POLICY,
]


def family_ids() -> list[str]:
    """The ids of every registered check, in report order."""
    return [family.id for family in FAMILIES]


def register(family: CheckFamily, *, before: str | None = None) -> None:
    """Add ``family`` at the end of the report, or before the family ``before``.

    For checks that live outside this package (and for tests); the package's own checks
    are the list above. The list is changed in place, so the engine sees it on its next
    run; a batch split over processes sees what was registered when they started.
    Raises ``ValueError`` for an id already registered or an unknown ``before``.
    """
    if family.id in family_ids():
        raise ValueError(f"check family {family.id!r} is already registered")
    if before is None:
        FAMILIES.append(family)
        return
    ids = family_ids()
    if before not in ids:
        raise ValueError(f"no check family {before!r} to insert before")
    FAMILIES.insert(ids.index(before), family)


def unregister(family_id: str) -> CheckFamily:
    """Remove the family ``family_id`` and return it; ``KeyError`` when there is none."""
    for index, family in enumerate(FAMILIES):
        if family.id == family_id:
            return FAMILIES.pop(index)
    raise KeyError(family_id)
