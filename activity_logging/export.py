"""Streaming export of activities to JSON lines or CSV, in constant memory.

On PostgreSQL the database formats the rows: one ``COPY (SELECT …) TO STDOUT`` streamed to
the output as it arrives (``export_pg``). On SQLite, and in the viewer's export,
rows come from a server-side cursor (``ActivityLogCRUD.iter_batches`` on a
``db.read_connection``) in batches, are encoded and written batch by batch, so exporting
millions of rows holds one batch in memory at a time. Order is ``(timestamp, id)``
ascending: an export can be cut into windows (``--since``/``--until``) and concatenated
without overlap.

Formats: ``jsonl`` is one JSON object per line, the same shape as ``ActivityRecord.to_dict``;
``csv`` has a header of ``schema.COLUMNS``, ``changes``/``metadata`` as JSON text
and ``NULL`` as an empty field.

CSV formula neutralisation: a value of a text column that begins with one of
``FORMULA_PREFIXES`` (``=``, ``+``, ``-``, ``@``, a tab, a carriage return) is written with a
single quote ``'`` in front, so a spreadsheet opening the file shows it as text instead of
running it (the text comes from anonymous clients: a User-Agent, a path). Both stores do it,
PostgreSQL in the SELECT, SQLite here; JSON lines are never changed.

Where the two paths differ in bytes, not in values: PostgreSQL's CSV ends lines with ``\n``
(``csv.writer``'s with ``\r\n``), and its JSON cells and nested JSON are PostgreSQL's
``jsonb`` text (``{"a": 1}``, where orjson writes ``{"a":1}``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final

import orjson

from .crud import activity_log_crud
from .crud_select import ActivityFilter
from .db import read_connection
from .exceptions import ConfigurationError
from .export_pg import TEXT_COLUMNS as _TEXT_COLUMNS
from .export_pg import copy_out
from .schema import COLUMNS
from .urls import is_postgres

EXPORT_FORMATS: Final = ("jsonl", "csv")
DEFAULT_BATCH_SIZE: Final = 5_000
#: The leading characters that make a CSV text value a spreadsheet formula.
FORMULA_PREFIXES: Final = ("=", "+", "-", "@", "\t", "\r")
_JSON_COLUMNS: Final = frozenset({"changes", "metadata"})


@dataclass(frozen=True, slots=True)
class ExportResult:
    """How many rows were written, in what format, and how long it took."""

    rows: int
    format: str
    seconds: float


def _json_default(value: Any) -> str:
    # asyncpg returns inet values as ipaddress objects; everything else orjson handles.
    return str(value)


def encode_jsonl(rows: Sequence[Sequence[Any]]) -> bytes:
    """Rows in ``schema.COLUMNS`` order → JSON lines (ids and times as strings, UTC)."""
    cols = COLUMNS
    dumps = orjson.dumps
    return b"".join(
        dumps(dict(zip(cols, row, strict=True)), default=_json_default,
              option=orjson.OPT_APPEND_NEWLINE)
        for row in rows
    )


def _csv_value(column: str, value: Any) -> Any:
    if value is None:
        return ""
    if column in _JSON_COLUMNS:
        return orjson.dumps(value).decode()
    if column == "timestamp":
        return value.isoformat()
    if column in _TEXT_COLUMNS and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def encode_csv(rows: Sequence[Sequence[Any]], *, header: bool = False) -> bytes:
    """Rows in ``schema.COLUMNS`` order → CSV lines (UTF-8), after a header line when asked.

    Text values starting with one of ``FORMULA_PREFIXES`` get a leading ``'``.

    Encoded in a buffer of its own, batch by batch, so no text wrapper is ever put around
    (and, after a failed write, left to close) the caller's binary stream.
    """
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    if header:
        writer.writerow(COLUMNS)
    writer.writerows(
        [_csv_value(c, v) for c, v in zip(COLUMNS, row, strict=True)] for row in rows
    )
    return buffer.getvalue().encode("utf-8")


class ProgressLine:
    """A one-line progress report on a terminal (``\\r``-rewritten), at most 5 times a second.

    Does nothing unless ``enabled``; ``total`` (when known; it may be set later) adds a
    percentage. ``unit`` names what is counted (``"rows"``, ``"rows deleted"``).
    """

    def __init__(self, stream: IO[str], *, enabled: bool, total: int | None = None,
                 unit: str = "rows") -> None:
        self.stream = stream
        self.enabled = enabled
        self.total = total
        self.unit = unit
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        """Show ``done`` rows; ``final`` forces the line out and ends it."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last < 0.2:
            return
        self._last = now
        rate = done / max(now - self.started, 1e-9)
        if self.total:
            pct = min(done / self.total, 1.0)
            bar = "#" * int(pct * 30)
            text = f"[{bar:<30}] {done:,}/{self.total:,} {self.unit} {pct:6.1%}  {rate:,.0f} rows/s"
        else:
            text = f"{done:,} {self.unit}  {rate:,.0f} rows/s"
        self.stream.write("\r" + text + ("\n" if final else ""))
        self.stream.flush()


async def export_activities(
    database_url: str,
    out: IO[bytes],
    *,
    fmt: str = "jsonl",
    filters: ActivityFilter | None = None,
    schema: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool | None = None,
    progress_stream: IO[str] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write every activity matching ``filters`` to the binary stream ``out``.

    ``progress=None`` shows the progress line when ``progress_stream`` (stderr by default)
    is a terminal. On PostgreSQL the rows are one ``COPY`` (``export_pg.copy_out``;
    ``batch_size`` does not apply, the server sends chunks of its own size, and ``on_batch``
    is called after each chunk); the progress line and ``on_batch`` then count the newlines
    written, against the ``COUNT`` it takes
    first: exact for JSON lines, approximate for CSV (the header and the line breaks
    inside quoted values count too). ``ExportResult.rows`` is exact either way. Raises
    ``ConfigurationError`` for an unknown format, ``StoreUnavailableError`` when the database
    cannot be reached, and the ``OSError`` of a
    failed write to ``out`` (``BrokenPipeError``, disk full) as it is.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigurationError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    pstream = progress_stream if progress_stream is not None else sys.stderr
    show = pstream.isatty() if progress is None else progress
    started = time.monotonic()
    written = 0
    # read_connection holds one transaction for the block (the server-side cursor lives in
    # it) and maps only database failures to StoreUnavailableError: an OSError from writing
    # ``out`` (a closed pipe, a full disk) passes through, the caller's to report.
    async with read_connection(database_url, schema=schema) as conn:
        total = await activity_log_crud.count(conn, filters) if show else None
        bar = ProgressLine(pstream, enabled=show, total=total)
        if is_postgres(database_url):
            def chunk_done(lines: int) -> None:
                bar.update(lines)
                if on_batch is not None:
                    on_batch(lines)

            written = await copy_out(conn, out, fmt=fmt, filters=filters,
                                     on_chunk=chunk_done if show or on_batch else None)
            bar.update(written, final=True)
            out.flush()
            return ExportResult(rows=written, format=fmt,
                                seconds=round(time.monotonic() - started, 3))
        encode = encode_jsonl if fmt == "jsonl" else encode_csv
        async with contextlib.aclosing(
                activity_log_crud.iter_batches(conn, filters, batch_size=batch_size)) as batches:
            batch = await anext(batches, None)  # the query runs before anything is written
            if fmt == "csv":
                out.write(encode_csv([], header=True))
            while batch is not None:
                out.write(encode(batch))
                written += len(batch)
                bar.update(written)
                if on_batch is not None:
                    on_batch(written)
                batch = await anext(batches, None)
        bar.update(written, final=True)
    out.flush()
    return ExportResult(rows=written, format=fmt, seconds=round(time.monotonic() - started, 3))


__all__ = ["EXPORT_FORMATS", "FORMULA_PREFIXES", "ExportResult", "ProgressLine", "encode_csv", "encode_jsonl",
           "export_activities"]
