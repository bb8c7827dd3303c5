"""What a check family declares, and the plan of one request that the engine runs it on.

A *family* is one check id (``forward``, ``sender_spf`` ...). It declares:

* what it applies to (:class:`Applies`): the engine runs it once per such subject of a
  request, and the subject is the ``subject`` of each result;
* how it checks: ``check``, a coroutine that may look things up in DNS through the
  request's :class:`~requests_app.checks.lookups.Run`, or ``judge``, a plain function
  that decides from the request and the settings alone (no DNS, run while planning);
* its ``first_lookups``: the questions its check asks first, whatever the answers. A
  batch asks them ahead for the requests to come, so that most checks find their
  answers in and finish in their first step (``engine.run_many``). They must be
  exactly what the check asks first: a name asked ahead that the check never asks is
  a wasted query, one missing is a wait.

The families and their order live in ``registry.py``: adding a check is one module
and one line there.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

from .config import CheckConfig
from .lookups import Run
from .results import CheckResult

__all__ = ["Applies", "CheckFamily", "Plan"]


class Applies(enum.Enum):
    """The subjects of a request a family is run on (one result each)."""

    ADDRESS = "each address as typed"
    FQDN = "the FQDN of a server entry"
    HOST_ADDRESS = "each address of a server entry that the address policy accepted"
    SENDER_DOMAIN = "each sender domain"
    SENDER_DOMAIN_WITH_SELECTOR = "each sender domain, when a DKIM selector is given"


@dataclass
class Plan:
    """A request's normalised inputs, and what the checks without look-ups decided.

    ``addresses`` are those the address policy accepted: only they are compared with
    the FQDN and looked up in reverse. ``refused`` are well-formed addresses the policy
    refused: never looked up (their ``address_policy`` fail already decides the
    verdict, and a PTR query for an internal address tells outside resolvers about it).
    ``judged`` holds the results of the ``judge`` families by id, in subject order.
    """

    fqdn: str | None
    domains: list[str]
    selector: str | None
    typed: list[str]
    addresses: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    judged: dict[str, list[CheckResult]] = field(default_factory=dict)
    report_to: str | None = None  # the request's contact: the rua of a proposed DMARC record

    def subjects(self, applies: Applies) -> Sequence[str]:
        """The subjects of this request that a family applying to ``applies`` runs on."""
        return SUBJECTS[applies](self)


def _typed(plan: Plan) -> Sequence[str]:
    return plan.typed


def _fqdn(plan: Plan) -> Sequence[str]:
    return (plan.fqdn,) if plan.fqdn is not None else ()


def _host_addresses(plan: Plan) -> Sequence[str]:
    return plan.addresses if plan.fqdn is not None else ()


def _domains(plan: Plan) -> Sequence[str]:
    return plan.domains


def _domains_with_selector(plan: Plan) -> Sequence[str]:
    return plan.domains if plan.selector else ()


# How to read each kind of subject off a plan. A family keeps its own getter
# (``CheckFamily.subjects``): the engine asks it several times per request, and an enum
# member's attribute access costs a descriptor call on this Python.
SUBJECTS: dict[Applies, Callable[[Plan], Sequence[str]]] = {
    Applies.ADDRESS: _typed,
    Applies.FQDN: _fqdn,
    Applies.HOST_ADDRESS: _host_addresses,
    Applies.SENDER_DOMAIN: _domains,
    Applies.SENDER_DOMAIN_WITH_SELECTOR: _domains_with_selector,
}


Check = Callable[[Run, Plan, str], Awaitable[CheckResult]]
Judge = Callable[[CheckConfig, Plan, str], CheckResult]
FirstLookups = Callable[[Plan, str], Iterable[tuple[str, str]]]


@dataclass(frozen=True)
class CheckFamily:
    """One check id, what it applies to, how it checks, and the look-ups it starts with.

    Exactly one of ``check`` (with DNS) and ``judge`` (without) is given. A ``judge``
    runs while the request is planned, in registry order, and ``narrow`` (if given) may
    then narrow the plan from its results: the address policy removes the addresses it
    refuses from what the DNS checks see.
    """

    id: str
    applies_to: Applies
    check: Check | None = None
    judge: Judge | None = None
    first_lookups: FirstLookups | None = None
    narrow: Callable[[Plan, list[CheckResult]], None] | None = None
    # the subjects of a plan this family runs on (derived from ``applies_to``)
    subjects: Callable[[Plan], Sequence[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "subjects", SUBJECTS[self.applies_to])
        if (self.check is None) == (self.judge is None):
            raise ValueError(f"check family {self.id!r}: give exactly one of check and judge")
        if self.judge is not None and self.first_lookups is not None:
            raise ValueError(f"check family {self.id!r}: a judge makes no look-ups")
