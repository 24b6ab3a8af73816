"""Export from PostgreSQL at database speed: the server formats the rows, ``COPY`` streams them.

``export.export_activities`` comes here for a PostgreSQL URL. One statement,
``COPY (SELECT … FROM activity_logs WHERE <filters> ORDER BY "timestamp", id) TO STDOUT``,
run through asyncpg's copy-out on the ``db.read_connection`` connection: PostgreSQL encodes
every row, and each chunk it sends is written to the output stream as it arrives (constant
memory, no Python per row). The WHERE clause is ``crud_select.build_select``'s, compiled for
asyncpg with ``$n`` bind parameters: no user value is ever put into the SQL text.

The SQL reproduces the Python encoders' value formats: the timestamp as Python's
``isoformat()`` of the UTC time (``2026-01-02T03:04:05.123456+00:00``, no fraction when it is
zero), the id and the address as PostgreSQL prints ``uuid`` and ``inet``. In CSV an empty
text is an empty field (as ``csv.writer`` writes it) and a text starting with a formula
character is prefixed with ``'`` (``export.FORMULA_PREFIXES``), both in the SELECT.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, Final

from sqlalchemy import Dialect, Select, literal_column
from sqlalchemy.ext.asyncio import AsyncConnection

from .crud_select import ActivityFilter, build_select
from .db import quote_identifier
from .schema import COLUMNS, activity_logs

#: The text columns (``Text`` in ``schema.make_table``): the ones CSV neutralises.
TEXT_COLUMNS: Final[frozenset[str]] = frozenset(
    str(c.name) for c in activity_logs.columns if c.type.python_type is str
    and str(c.name) != "ip_address"
)

# Python's isoformat() of an aware UTC datetime: microseconds only when there are any.
_TIMESTAMP_SQL: Final = (
    "replace(to_char(\"timestamp\" AT TIME ZONE 'UTC', "
    "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), '.000000+', '+')"
)

# The code points of export.FORMULA_PREFIXES (= + - @ tab CR); ascii('') is 0.
_FORMULA_CODES: Final = (61, 43, 45, 64, 9, 13)

# JSON lines through CSV with a quote and a delimiter that JSON text never holds raw (it
# escapes every control character), so PostgreSQL writes row_to_json's text untouched.
_COPY_OPTIONS: Final[dict[str, dict[str, Any]]] = {
    "csv": {"format": "csv", "header": True},
    "jsonl": {"format": "csv", "quote": "\x01", "delimiter": "\x02"},
}


def _csv_column(name: str) -> str:
    q = quote_identifier(name)
    if name == "timestamp":
        return f"{_TIMESTAMP_SQL} AS {q}"
    if name in TEXT_COLUMNS:
        # one ascii() and integer tests: the cheapest per-value check PostgreSQL offers
        prefixed = " ".join(f"WHEN {code} THEN '''' || {q}" for code in _FORMULA_CODES)
        return f"CASE ascii({q}) WHEN 0 THEN NULL {prefixed} ELSE {q} END AS {q}"
    return f"{q} AS {q}"


def _jsonl_column(name: str) -> str:
    q = quote_identifier(name)
    return f"{_TIMESTAMP_SQL} AS {q}" if name == "timestamp" else f"{q} AS {q}"


def _bind(value: Any) -> Any:
    # What schema.UTCDateTime does for a bound time: a naive datetime is UTC.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def copy_query(fmt: str, filters: ActivityFilter | None, dialect: Dialect
               ) -> tuple[str, list[Any]]:
    """The SELECT that ``COPY (…) TO STDOUT`` runs for ``fmt`` (``csv``, ``jsonl``), its arguments.

    The rows are ``build_select(filters, order="asc")``'s, in ``schema.COLUMNS`` order, with
    the values formatted as the module docstring says (for ``jsonl`` one ``row_to_json``
    column), compiled for ``dialect`` (the connection's: asyncpg's ``$1``…``$n`` parameters);
    the arguments go with them.
    """
    make = _csv_column if fmt == "csv" else _jsonl_column
    columns: list[Any] = [literal_column(make(c)) for c in COLUMNS]
    stmt: Select[Any] = build_select(filters, order="asc").with_only_columns(
        *columns, maintain_column_froms=True)
    compiled = stmt.compile(dialect=dialect,
                            compile_kwargs={"render_postcompile": True})
    params = compiled.params
    args = [_bind(params[key]) for key in compiled.positiontup or ()]
    select_sql = str(compiled)
    if fmt == "csv":
        return select_sql, args
    return f"SELECT row_to_json(t) FROM ({select_sql}) t", args


async def copy_out(
    conn: AsyncConnection,
    out: IO[bytes],
    *,
    fmt: str,
    filters: ActivityFilter | None,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Stream the export of ``filters`` in ``fmt`` to ``out``; the number of rows COPY sent.

    Every chunk from the server is written to ``out`` as it arrives; ``on_chunk`` is then
    called with the count of newlines written so far (rows for JSON lines; for CSV the
    header and the line breaks inside quoted values count too, so it is approximate). The
    ``OSError`` of a failed write to ``out`` is raised as it is once the COPY has ended:
    nothing more is written after it, and the rest of the rows are read and dropped.
    """
    sql, args = copy_query(fmt, filters, conn.dialect)
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    lines = 0
    write = out.write
    failed: list[OSError] = []

    async def sink(chunk: bytes) -> None:
        # Never raise into asyncpg: an exception there cancels the query from a second
        # connection, which can leave this one waiting. The rest is read and dropped.
        nonlocal lines
        if failed:
            return
        try:
            write(chunk)
        except OSError as exc:
            failed.append(exc)
            return
        if on_chunk is not None:
            lines += chunk.count(b"\n")
            on_chunk(lines)

    # asyncpg puts the arguments in as literals it has the server quote (COPY takes no
    # bind parameters); the SQL text itself never holds a user value.
    status: str = await driver.copy_from_query(sql, *args, output=sink, **_COPY_OPTIONS[fmt])
    if failed:
        raise failed[0]
    return int(status.rsplit(" ", 1)[-1])


__all__ = ["TEXT_COLUMNS", "copy_out", "copy_query"]
