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

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from django.db import connection
from django.db import models

__all__ = ["insert_values", "update_rows"]

# Fields whose Python value the database drivers take as it is (no adaptation needed).
_AS_IS = (models.CharField, models.TextField, models.IntegerField, models.BooleanField,
          models.BigAutoField, models.AutoField)


def _preparer(field: models.Field) -> Callable[[Any], Any] | None:
    """How a value of ``field`` is adapted for the driver; ``None`` when it needs nothing."""
    target = field.target_field if isinstance(field, models.ForeignKey) else field
    if isinstance(target, _AS_IS):  # a choices member is a str or int subclass: as is
        return None

    def prepare(value: Any) -> Any:
        return field.get_db_prep_save(value, connection)

    return prepare


def insert_values(model: type[models.Model], fields: Sequence[str],
                  rows: Iterable[Sequence[Any]], *, same: dict[str, Any] | None = None,
                  ) -> None:
    """``INSERT INTO <model> (...) VALUES (...), (...), ...`` from plain Python values.

    For rows nobody needs the new ids of (the results of a check run): no model
    instances, no ``RETURNING``. Each row gives its values in the order of ``fields``
    (field names; the id for a foreign key); ``same`` names columns that have one value
    in every row (a timestamp), adapted once. On PostgreSQL the rows go in one
    ``COPY … FROM STDIN`` (measured against one multi-row ``INSERT`` and an
    ``executemany`` in ``bench/scale_pipeline.py``: psycopg quotes a client-side
    statement's parameters in Python, COPY's in C, and the server plans nothing per
    row); elsewhere as one ``executemany``.
    """
    meta = model._meta
    constants = same or {}
    columns = [meta.get_field(name) for name in (*fields, *constants)]
    preparers = [_preparer(field) for field in columns[:len(fields)]]
    tail = [field.get_db_prep_save(value, connection)
            for field, value in zip(columns[len(fields):], constants.values(), strict=True)]
    params = [[value if prep is None else prep(value)
               for prep, value in zip(preparers, row, strict=True)] + tail for row in rows]
    if not params:
        return
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    names = ", ".join(quote(f.column) for f in columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # COPY: rows streamed in one statement, adapted by psycopg's C dumpers
            with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in params:
                    copy.write_row(row)
        else:
            cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ("
                               + ", ".join(["%s"] * len(columns)) + ")", params)


def update_rows(rows: Sequence[models.Model], fields: Sequence[str]) -> None:
    """``UPDATE … WHERE id = %s`` for each row, sent as one ``executemany``.

    The rows are locked by the caller; values are adapted by their fields as ``save``
    does.
    """
    if not rows:
        return
    meta = rows[0]._meta
    columns = [meta.get_field(name) for name in fields]
    quote = connection.ops.quote_name
    sql = (f"UPDATE {quote(meta.db_table)} SET "
           + ", ".join(f"{quote(f.column)} = %s" for f in columns)
           + f" WHERE {quote(meta.pk.column)} = %s")
    params = [[f.get_db_prep_save(getattr(row, f.attname), connection) for f in columns]
              + [row.pk] for row in rows]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)
