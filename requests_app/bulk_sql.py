"""Bulk writes as plain statements, where Django's bulk helpers cost more than the work.

Recording a batch of check runs writes hundreds of result rows and updates dozens of
request rows. ``bulk_update`` builds a ``CASE WHEN`` per column and row as Python
expressions, and ``bulk_create`` on PostgreSQL sends each column as an array literal
that psycopg quotes element by element in Python: together several times the DNS
engine's own work for the same batch (``bench/scale_pipeline.py``). An ``executemany``
of one small statement is sent by psycopg in one pipeline and costs SQLite nothing to
plan; values are adapted by their fields as ``save`` would, skipping the adaptation of
fields whose Python value is already what the driver takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from django.db import connection
from django.db import models
from django.utils.functional import Promise

__all__ = ["insert_values", "update_rows"]

# Fields whose Python value the database drivers take as it is (no adaptation needed).
# Exact classes: a subclass may adapt its values in ``get_prep_value``.
_AS_IS = frozenset({models.CharField, models.TextField, models.IntegerField,
                    models.PositiveIntegerField, models.BigAutoField, models.AutoField})


def _preparer(field: models.Field) -> Callable[[Any], Any]:
    """How a value of ``field`` is adapted for the driver (cheaply where it can be)."""
    target = field.target_field if isinstance(field, models.ForeignKey) else field
    if type(target) in _AS_IS:
        return _plain

    def prepare(value: Any) -> Any:
        return field.get_db_prep_save(value, connection)

    return prepare


def _plain(value: Any) -> Any:
    """A plain value as it is; a lazy translation string as the text it stands for."""
    return str(value) if isinstance(value, Promise) else value


def insert_values(model: type[models.Model], fields: Sequence[str],
                  rows: Iterable[Sequence[Any]], *, same: dict[str, Any] | None = None,
                  ) -> None:
    """``INSERT INTO <model> (...) VALUES (...), (...), ...`` from plain Python values.

    For rows nobody needs the new ids of (the results of a check run): no model
    instances, no ``RETURNING``. Each row gives its values in the order of ``fields``
    (field names; the id for a foreign key); ``same`` names columns that have one value
    in every row (a timestamp), adapted once. On PostgreSQL the rows go in one
    ``COPY … FROM STDIN``: psycopg quotes a client-side statement's parameters in
    Python, COPY's in C, and the server plans nothing per row
    (``bench/scale_pipeline.py`` prints it beside ``bulk_create`` and an
    ``executemany`` in the same run); elsewhere as one ``executemany``.
    """
    meta = model._meta
    constants = same or {}
    columns = [meta.get_field(name) for name in (*fields, *constants)]
    preparers = [_preparer(field) for field in columns[:len(fields)]]
    tail = [field.get_db_prep_save(value, connection)
            for field, value in zip(columns[len(fields):], constants.values(), strict=True)]
    params = [[prep(value) for prep, value in zip(preparers, row, strict=True)] + tail
              for row in rows]
    if not params:
        return
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    names = ", ".join(quote(f.column) for f in columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and hasattr(cursor.cursor, "copy"):
            _copy(cursor, f"COPY {table} ({names}) FROM STDIN", params)
        else:
            cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ("
                               + ", ".join(["%s"] * len(columns)) + ")", params)


def _copy(cursor: Any, sql: str, rows: list[list[Any]]) -> None:
    """``COPY … FROM STDIN`` through psycopg 3, as Django's cursor would run a statement.

    Django's wrapper has no ``copy``: the raw cursor is used inside the connection's
    error translation (an ``IntegrityError`` is Django's, as for any query), after the
    broken-transaction check, and the statement is logged where queries are (debug,
    ``CaptureQueriesContext``), so query counts stay true.
    """
    db = cursor.db
    db.validate_no_broken_transaction()
    started = time.monotonic()
    with db.wrap_database_errors, cursor.cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)
    if db.queries_logged:
        db.queries_log.append({"sql": f"{sql} -- {len(rows)} rows",
                               "time": f"{time.monotonic() - started:.3f}"})


def update_rows(rows: Sequence[models.Model], fields: Sequence[str]) -> None:
    """Write ``fields`` of each row (by primary key) in one statement.

    On PostgreSQL one ``UPDATE … FROM (VALUES …)`` (the server plans one statement,
    not one per row; each column cast to its type, so a ``NULL`` or a text literal
    reads as the column's type); elsewhere an ``executemany`` of ``UPDATE … WHERE id =
    %s``. The rows are locked by the caller; values are adapted by their fields as
    ``save`` does.
    """
    if not rows:
        return
    meta = rows[0]._meta
    columns = [meta.get_field(name) for name in fields]
    quote = connection.ops.quote_name
    table, pk = quote(meta.db_table), quote(meta.pk.column)
    params = [[f.get_db_prep_save(getattr(row, f.attname), connection) for f in columns]
              + [row.pk] for row in rows]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            names = [quote(f.column) for f in columns]
            one = "(" + ", ".join(["%s"] * (len(columns) + 1)) + ")"
            cursor.execute(
                f"UPDATE {table} AS t SET "
                + ", ".join(f"{name} = v.{name}::{field.db_type(connection)}"
                            for name, field in zip(names, columns, strict=True))
                + f" FROM (VALUES {', '.join([one] * len(params))}) AS v("
                + ", ".join(names) + f", {pk}) WHERE t.{pk} = v.{pk}",
                [value for row in params for value in row])
        else:
            cursor.executemany(
                f"UPDATE {table} SET " + ", ".join(f"{quote(f.column)} = %s" for f in columns)
                + f" WHERE {pk} = %s", params)
