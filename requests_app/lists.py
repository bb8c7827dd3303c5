"""The requester list and the approvers' queue as people use them: filters from the
query string, sortable columns, how long a request has waited, and the CSV of the view.

Why one module for both pages: the list, the queue and their CSV exports must read the
same parameters the same way (a CSV that sorted or filtered differently from the page it
was downloaded from would be a different answer to the same question). Every parameter
goes through ``params`` (a bad value is a 400 naming it) and the query is
``selectors.request_search``; this module only turns the query string into its
arguments, and rows into table cells.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy

from . import params
from .display import unicode_name
from .models import CheckStatus
from .models import QuotaTier
from .models import RelayRequest
from .models import RequestKind
from .models import RequestState
from .selectors import ASSIGNED_CHOICES
from .selectors import QUEUE_STATES
from .selectors import SORT_KEYS

__all__ = [
    "AGE_LATE",
    "AGE_OLD",
    "CSV_COLUMNS",
    "Column",
    "ListQuery",
    "age_of",
    "columns_for",
    "csv_rows",
    "mark_ages",
    "parse_query",
]

#: Waiting longer than these is highlighted (a class and a text, never colour alone).
AGE_LATE = timedelta(days=1)
AGE_OLD = timedelta(days=3)

#: The query-string names of the filters (``page`` and ``sort`` come on top).
FILTER_NAMES = ("q", "state", "kind", "team", "verdict", "tier", "assigned", "drifted")


@dataclass(frozen=True)
class ListQuery:
    """The parsed query string: the filters for ``request_search`` and the sort key."""

    filters: dict[str, Any]
    sort: str
    raw: dict[str, str]

    def url(self, **changes: str) -> str:
        """``?...`` of this view with some parameters changed (empty removes one); the
        page number is dropped, since a new sort or filter starts at page one."""
        values = {k: v for k, v in self.raw.items() if k != "page"}
        for key, value in changes.items():
            if value:
                values[key] = value
            else:
                values.pop(key, None)
        return "?" + urlencode(values) if values else "?"

    @property
    def active(self) -> bool:
        """Whether any filter is set (the page offers "Clear filters")."""
        return any(self.raw.get(name) for name in FILTER_NAMES)


def parse_query(get: Mapping[str, str]) -> ListQuery:
    """Read the filters and the sort from the query string; 400 (``BadParameter``) for
    a value outside its choices, too long, or with control characters."""
    sorts = [*SORT_KEYS, *(f"-{key}" for key in SORT_KEYS)]
    filters = {
        "q": params.query_text(get, "q", max_length=200).strip(),
        "state": params.query_choice(get, "state", RequestState.values),
        "kind": params.query_choice(get, "kind", RequestKind.values),
        "team": params.query_text(get, "team", max_length=50).strip(),
        "verdict": params.query_choice(get, "verdict", [s.value for s in CheckStatus]),
        "tier": params.query_choice(get, "tier", QuotaTier.values),
        "assigned": params.query_choice(get, "assigned", ASSIGNED_CHOICES),
        "drifted": params.query_flag(get, "drifted"),
    }
    sort = params.query_choice(get, "sort", sorts)
    raw = {name: get[name] for name in (*FILTER_NAMES, "sort", "page") if get.get(name)}
    return ListQuery(filters=filters, sort=sort, raw=raw)


@dataclass(frozen=True)
class Column:
    """A table header: its label, the sort link and the ``aria-sort`` it announces."""

    key: str
    label: str
    url: str = ""
    aria_sort: str = ""  # "ascending", "descending" or "" (not sorted by this column)


_LABELS = {
    "id": gettext_lazy("#"),
    "submitted": gettext_lazy("Waiting"),
    "created": gettext_lazy("Created"),
    "kind": gettext_lazy("Kind"),
    "subject": gettext_lazy("Subject"),
    "team": gettext_lazy("Team"),
    "requester": gettext_lazy("Requester"),
    "state": gettext_lazy("State"),
    "checks": gettext_lazy("Checks"),
    "assigned": gettext_lazy("Assigned to"),
}


def columns_for(query: ListQuery, keys: tuple[str, ...], default_sort: str) -> list[Column]:
    """Sortable headers: a click sorts by the column, a second click reverses it."""
    current = query.sort or default_sort
    out = []
    for key in keys:
        if key not in SORT_KEYS:
            out.append(Column(key, str(_LABELS.get(key, key))))
            continue
        if current == key:
            aria, target = "ascending", f"-{key}"
        elif current == f"-{key}":
            aria, target = "descending", key
        else:
            aria, target = "", key
        out.append(Column(key, str(_LABELS[key]), query.url(sort=target), aria))
    return out


def waiting_since(request: RelayRequest) -> datetime | None:
    """Since when the request waits for approvers: submitted (queue states), or asked
    for production access; ``None`` for a request nobody waits on."""
    if request.state in QUEUE_STATES:
        return request.submitted_at or request.created_at
    if request.state == RequestState.ACTIVE and request.production_requested_at:
        return request.production_requested_at
    return None


def age_of(request: RelayRequest, now: datetime) -> str:
    """``"old"`` (over 3 days), ``"late"`` (over 1 day) or ``""`` for the row's class."""
    since = waiting_since(request)
    if since is None:
        return ""
    waited = now - since
    if waited > AGE_OLD:
        return "old"
    if waited > AGE_LATE:
        return "late"
    return ""


def mark_ages(rows: Any, now: datetime) -> None:
    """Set ``waiting_since`` and ``age`` on each row of a page (in memory, no query)."""
    for row in rows:
        row.waiting_since = waiting_since(row)
        row.age = age_of(row, now)


CSV_COLUMNS = (
    "id", "kind", "subject", "subject_ascii", "addresses", "sender_domains",
    "sender_addresses", "team", "requester", "state", "checks", "tier", "submitted_at",
    "created_at", "waiting_days", "assigned_to", "assigned_at",
)


def csv_rows(requests: QuerySet[RelayRequest], safe: Any) -> Iterator[list[object]]:
    """The header and one row per request, read in chunks (a streamed response).

    ``safe`` neutralises spreadsheet formulas in a text cell (the audit export's
    ``_csv_safe``). Names are given in Unicode and in the stored ASCII form.
    """
    now = timezone.now()
    yield list(CSV_COLUMNS)
    for r in requests.iterator(chunk_size=2000):
        since = waiting_since(r)
        yield [
            r.pk, r.kind, safe(unicode_name(r.subject)), safe(r.subject),
            " ".join(r.addresses), safe(" ".join(unicode_name(d) for d in r.sender_domains)),
            safe(" ".join(r.sender_addresses)), safe(r.team.slug),
            safe(r.created_by.get_username()), r.state, r.check_verdict, r.quota_tier,
            r.submitted_at.isoformat() if r.submitted_at else "",
            r.created_at.isoformat(),
            f"{(now - since).total_seconds() / 86400:.1f}" if since else "",
            safe(r.assigned_to.get_username()) if r.assigned_to else "",
            r.assigned_at.isoformat() if r.assigned_at else "",
        ]


def csv_filename(base: str) -> str:
    """``relaydesk-queue-20250101-1200.csv``: which view, and when it was taken."""
    return f"relaydesk-{base}-{timezone.localtime():%Y%m%d-%H%M}.csv"


def writer_lines(rows: Iterator[list[object]]) -> Iterator[str]:
    """CSV text line by line, for ``StreamingHttpResponse``."""

    class _Echo:
        def write(self, value: str) -> str:
            return value

    writer = csv.writer(_Echo())
    for row in rows:
        yield writer.writerow(row)
