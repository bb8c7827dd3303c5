"""The DNS and address checks of a relay request (no Django imports).

Ids, statuses and the report shape are a contract (docs/dns-checks.md). The package,
lowest layer first (each module imports only from those above it):

* ``results``: statuses, the verdict order, a result, a report;
* ``names``: the engine's view of names (the rules themselves are ``rules.py``);
* ``config``: the inputs, :class:`CheckConfig` (settings) and :class:`CheckSpec` (a request);
* ``fixes``: the records that would make a warn or fail pass (``evidence["fix"]``);
* ``lookups``: look-ups shared within a run, and one request's run with its deadline;
* ``family``: what a check family declares (:class:`CheckFamily`, :class:`Applies`)
  and the :class:`Plan` of a request it is run on;
* the families: ``policy`` (address policy), ``host`` (forward, reverse), ``spf``,
  ``sender`` (DMARC, DKIM, domain policy);
* ``registry``: the families in report order (a new check: one module, one line);
* ``engine``: planning, running, batching (ask-ahead), sharding.

Callers import from the package: ``from requests_app.checks import run_checks``.
"""

from __future__ import annotations

from .config import CheckConfig
from .config import CheckSpec
from .engine import DEADLINE_MARGIN
from .engine import batch_event_loop
from .engine import gc_paused
from .engine import run_checks
from .engine import run_checks_sync
from .engine import run_many
from .engine import run_many_sharded
from .engine import run_many_sync
from .engine import run_sync
from .family import Applies
from .family import CheckFamily
from .names import normalise_address
from .names import normalise_domain
from .names import normalise_fqdn
from .names import organisational_domain
from .registry import family_ids
from .registry import register
from .registry import unregister
from .results import VERDICT_ORDER
from .results import CheckResult
from .results import CheckStatus
from .results import Report
from .results import worst_status

__all__ = [
    "DEADLINE_MARGIN",
    "VERDICT_ORDER",
    "Applies",
    "CheckConfig",
    "CheckFamily",
    "CheckResult",
    "CheckSpec",
    "CheckStatus",
    "Report",
    "batch_event_loop",
    "family_ids",
    "gc_paused",
    "normalise_address",
    "normalise_domain",
    "normalise_fqdn",
    "organisational_domain",
    "register",
    "run_checks",
    "run_checks_sync",
    "run_many",
    "run_many_sharded",
    "run_many_sync",
    "run_sync",
    "unregister",
    "worst_status",
]
