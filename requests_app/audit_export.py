"""The audit trail as CSV: streamed in constant memory, filtered, with a row-count trailer.

Why this shape (issue 15, measured at 561k events): building a model instance per event
and decoding its JSON took 35.7 s, past the web server's timeout, and the cut-off file
ended on a whole line and looked complete. So:

* rows are read as plain tuples (``values_list``) through the database's streaming cursor
  (a server-side cursor on PostgreSQL), a chunk at a time: memory does not grow with the
  trail, and nothing is decoded that the CSV does not show;
* the ``parameters`` column is read as its stored JSON text and re-written as compact,
  key-sorted JSON (:func:`requests_app.display.compact_json`) through a small bounded
  cache, since most events share a few parameter sets;
* the last line is a trailer naming the number of rows (:data:`TRAILER_PREFIX`): a
  download without it, or with another count, was cut short.

``bench/scale_audit_dashboard.py`` times this against PostgreSQL's ``COPY`` of the same rows.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import unicodedata
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connections
from django.db import transaction
from django.db.models import CharField
from django.db.models import Func
from django.db.models import QuerySet
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone

from . import selectors
from .display import compact_json
from .kinds import KINDS
from .models import RequestEvent

__all__ = [
    "COLUMNS",
    "TRAILER_PREFIX",
    "AuditFilter",
    "audit_csv_chunks",
    "audit_rows",
    "csv_safe",
    "parse_trailer",
]

COLUMNS = (
    "time", "request", "team", "subject", "type", "actor", "source_ip", "from_state",
    "to_state", "comment", "parameters",
)
# The last line of every export: "# end of Relaydesk audit export: 561234 rows".
TRAILER_PREFIX = "# end of Relaydesk audit export: "
CHUNK_ROWS = 5000  # rows fetched and written per chunk: memory is bounded by this
_CACHE_MAX = 4096  # distinct parameter texts kept converted (bounded, then dropped)

# What spreadsheets read as the start of a formula (plus the full-width forms, which
# some of them fold to ASCII), and what they skip before looking for one.
_FORMULA_TRIGGERS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
_SKIPPED_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
# A cell starting with one of these is text whatever follows: the common case, decided
# without the loop below (it runs for every text cell of every row).
_PLAIN_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#.'")


def csv_safe(value: str) -> str:
    """Neutralise spreadsheet formulas (CSV injection) in a text cell.

    A cell is a formula if its first character is a trigger, but also if a trigger
    follows leading whitespace or control/format characters (a space, a newline, NUL, a
    zero-width space): spreadsheets skip those. Such a cell gets a leading apostrophe,
    which spreadsheets show as text; the value itself is otherwise unchanged.
    """
    if not value or value[0] in _PLAIN_FIRST:
        return value
    for ch in value:
        if ch in _FORMULA_TRIGGERS:
            return "'" + value
        if not (ch.isspace() or unicodedata.category(ch) in _SKIPPED_CATEGORIES):
            return value
    return value


@dataclass(frozen=True)
class AuditFilter:
    """Which events to export: a date range (whole days, both ends included, in the
    site's time zone), one team by slug, one request; empty means no bound."""

    since: date | None = None
    until: date | None = None
    team: str = ""
    request_id: int | None = None


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


class _IsoTimeUTC(Func):
    """A timestamp as ``datetime.isoformat()`` writes Django's UTC datetimes, made by
    PostgreSQL: parsing each timestamp into a datetime and formatting it back was the
    largest share of the export's Python time. (Microseconds are left out when zero, as
    ``isoformat`` does.)"""

    output_field = CharField()
    template = (
        "CASE WHEN date_trunc('second', %(expressions)s) = %(expressions)s "
        "THEN to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"') "
        "ELSE to_char(%(expressions)s AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"') END"
    )


def audit_rows(user: AbstractBaseUser, flt: AuditFilter) -> QuerySet[RequestEvent]:
    """The events ``user`` may see, filtered, oldest first, as plain tuples in CSV order
    (the subject's two candidate columns and the kind stand in for the subject; the
    time is a datetime, or on PostgreSQL already its ISO text)."""
    events = selectors.event_list_for_user(user).select_related(None)
    if flt.since is not None:
        events = events.filter(created_at__gte=_day_start(flt.since))
    if flt.until is not None:
        events = events.filter(created_at__lt=_day_start(flt.until + timedelta(days=1)))
    if flt.team:
        events = events.filter(request__team__slug=flt.team)
    if flt.request_id is not None:
        events = events.filter(request_id=flt.request_id)
    time_column = "created_at"
    if connections[events.db].vendor == "postgresql":
        events = events.annotate(time_text=_IsoTimeUTC("created_at"))
        time_column = "time_text"
    return (
        events.order_by("created_at", "pk")
        # the stored JSON text as it is: decoded only to be re-written compactly
        .annotate(parameters_text=Cast("parameters", TextField()))
        .values_list(
            time_column, "request_id", "request__team__slug", "request__kind",
            "request__fqdn", "request__account_name", "type", "actor_name", "source_ip",
            "from_state", "to_state", "comment", "parameters_text",
        )
    )


class _Lines:
    """A file-like sink for ``csv.writer``: collects the lines of one chunk."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, value: str) -> None:
        self.parts.append(value)

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        return text


def audit_csv_chunks(user: AbstractBaseUser, flt: AuditFilter,
                     chunk_rows: int = CHUNK_ROWS) -> Iterator[str]:
    """The CSV text in chunks of ``chunk_rows`` rows: header, rows, trailer.

    A generator, so a streaming response sends each chunk as it is made; the database
    cursor is read ``chunk_rows`` at a time. Every text cell goes through :func:`csv_safe`
    (usernames may start with "+", "-" or "@", slugs with "-", and old rows hold whatever
    was typed then).
    """
    subject_is_fqdn = {name: spec.subject_field == "fqdn" for name, spec in KINDS.items()}
    sink = _Lines()
    writer = csv.writer(sink)
    writer.writerow(COLUMNS)
    params_cache: dict[str, str] = {}
    count = 0
    pending = 0
    rows = audit_rows(user, flt)
    with _streaming_read(rows.db):
        for (created, request_id, team, kind, fqdn, account, type_, actor, source_ip,
             from_state, to_state, comment, params) in _read(rows, chunk_rows):
            shown = params_cache.get(params)
            if shown is None:
                if len(params_cache) >= _CACHE_MAX:
                    params_cache.clear()
                # JSON, not a Python repr: any tool (and the eye) can read it back.
                shown = params_cache[params] = csv_safe(compact_json(
                    json.loads(params) if params else {}))
            writer.writerow((
                created if isinstance(created, str) else created.isoformat(), request_id,
                csv_safe(team),
                csv_safe(fqdn if subject_is_fqdn.get(kind, False) else account),
                type_, csv_safe(actor), source_ip or "", from_state, to_state,
                csv_safe(comment), shown,
            ))
            count += 1
            pending += 1
            if pending >= chunk_rows:
                pending = 0
                yield sink.take()
    sink.write(f"{TRAILER_PREFIX}{count} rows\r\n")
    yield sink.take()


def _read(rows: QuerySet[RequestEvent], chunk_rows: int) -> Iterator[Sequence[Any]]:
    """The rows of ``rows``: on PostgreSQL through ``COPY ... TO STDOUT`` (text format),
    elsewhere through the streaming cursor of ``iterator``.

    Why COPY: reading 550k rows through a cursor cost twice the ``COPY`` of the same
    query (psycopg's per-row loading and Django's iteration); splitting COPY's text
    lines on tabs is C work. The values are the same strings the cursor gives (the
    ``inet`` column's text output is what Django's loader returns); a cell holding a
    backslash is unescaped as COPY escaped it. NULL is written as an empty cell: only
    the source IP can be NULL, and the CSV shows it empty either way.
    """
    connection = connections[rows.db]
    if connection.vendor == "postgresql":
        sql, params = rows.query.sql_with_params()
        with connection.cursor() as cursor:
            raw = cursor.cursor
            if hasattr(raw, "mogrify"):  # client-side binding (Django's default)
                with raw.copy(f"COPY ({raw.mogrify(sql, params)}) TO STDOUT (NULL '')") as copy:
                    tail = ""
                    decode = codecs.getincrementaldecoder("utf-8")().decode  # blocks may split
                    for data in copy:                                       # a character
                        lines = (tail + decode(bytes(data))).split("\n")
                        tail = lines.pop()
                        for line in lines:
                            cells = line.split("\t")
                            yield [_unescape(c) for c in cells] if "\\" in line else cells
                return
    yield from rows.iterator(chunk_size=chunk_rows)


_COPY_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_COPY_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _unescape(cell: str) -> str:
    if "\\" not in cell:
        return cell
    return _COPY_ESCAPE.sub(lambda m: _COPY_ESCAPES.get(m.group(1), m.group(1)), cell)


@contextmanager
def _streaming_read(alias: str) -> Iterator[None]:
    """On PostgreSQL, read the export inside a transaction tuned for reading it all.

    Why: outside a transaction Django declares its server-side cursor ``WITH HOLD``,
    which makes PostgreSQL materialise the whole result before the first row; and a
    cursor is planned for its first 10 % (``cursor_tuple_fraction``), a nested-loop
    plan that is slower for reading every row. Inside a transaction with the fraction
    at 1.0 the rows stream with the plan ``COPY`` would use. Read-only, so closing the
    download early just rolls back. Elsewhere nothing changes.
    """
    if connections[alias].vendor != "postgresql":
        yield
        return
    with transaction.atomic(using=alias):
        with connections[alias].cursor() as cursor:
            cursor.execute("SET LOCAL cursor_tuple_fraction = 1.0")
        yield


def parse_trailer(text: str) -> int | None:
    """The row count a complete export's last line states, or None if it has none
    (the download was cut short). For scripts that fetch the export."""
    last = text.rstrip("\r\n").rpartition("\n")[2].rstrip("\r")
    if not last.startswith(TRAILER_PREFIX) or not last.endswith(" rows"):
        return None
    number = last[len(TRAILER_PREFIX):-len(" rows")]
    return int(number) if number.isdigit() else None
