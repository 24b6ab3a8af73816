"""The ``activity_logs`` table (SQLAlchemy 2.0 Core) and database URL handling.

One model for both stores: native uuid / timestamptz / jsonb / inet on PostgreSQL, portable
equivalents on the embedded SQLite store. Pure: defines, never connects.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.dialects.postgresql import INET, JSONB

from .config import DEFAULT_TABLE


class UTCDateTime(TypeDecorator[datetime]):
    """``timestamptz`` on PostgreSQL; on SQLite stored as naive UTC and read back aware (UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# none_as_null: a missing value is SQL NULL on both stores (SQLite wrote the JSON text 'null')
JSONType: Final = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
InetType: Final = String(45).with_variant(INET(), "postgresql")

metadata_obj: Final = MetaData()


def make_table(metadata: MetaData, name: str = DEFAULT_TABLE, schema: str | None = None) -> Table:
    """Build the ``activity_logs`` table (and its indexes) on ``metadata``.

    The one definition of the columns: their order (``COLUMNS``, the order ``COPY`` and the
    row tuples use), their types on each store, and in ``info["max_chars"]`` how many
    characters a text column keeps (``TEXT_LIMITS``; longer values are cut, see
    docs/guarantees.md). Everything else derives from it: the rows (``rows.py``), the
    partitioned variant (``db.make_partitioned_table``) and the query results (``crud``).
    """
    table = Table(
        name,
        metadata,
        Column("id", Uuid(as_uuid=True), primary_key=True),
        Column("timestamp", UTCDateTime(), nullable=False),
        Column("activity_type", Text, nullable=False, info={"max_chars": 255}),
        Column("description", Text, info={"max_chars": 8_192}),
        Column("severity", Text, nullable=False),
        Column("level", SmallInteger, nullable=False),
        Column("actor_type", Text, info={"max_chars": 255}),
        Column("actor_id", Text, info={"max_chars": 255}),
        Column("target_type", Text, info={"max_chars": 255}),
        Column("target_id", Text, info={"max_chars": 255}),
        Column("changes", JSONType),
        Column("metadata", JSONType),
        Column("ip_address", InetType),
        Column("user_agent", Text, info={"max_chars": 512}),
        Column("request_id", Text, info={"max_chars": 255}),
        Column("http_method", Text, info={"max_chars": 16}),
        Column("path", Text, info={"max_chars": 2_048}),
        Column("logger", Text, info={"max_chars": 255}),
        Column("hostname", Text, info={"max_chars": 255}),
        Column("process_id", Integer),
        Column("producer_id", Text, info={"max_chars": 64}),
        Column("seq", BigInteger),
        # the keyed chain (signing.py): NULL on an unauthenticated trail
        Column("key_id", Text, info={"max_chars": 32}),
        Column("prev_mac", Text, info={"max_chars": 64}),
        Column("mac", Text, info={"max_chars": 64}),
        Column("row_mac", Text, info={"max_chars": 64}),
        schema=schema,
    )
    # The queries people run: by time; who (actor) / what (target, type) over time; one request.
    Index(f"ix_{name}_timestamp", table.c.timestamp)
    # actor_id leads so "one actor's day" uses it with or without actor_type (ids rarely collide
    # across types, so the extra actor_type check filters almost nothing)
    Index(f"ix_{name}_actor_time", table.c.actor_id, table.c.actor_type, table.c.timestamp)
    Index(f"ix_{name}_target_time", table.c.target_type, table.c.target_id, table.c.timestamp)
    Index(f"ix_{name}_type_time", table.c.activity_type, table.c.timestamp)
    Index(f"ix_{name}_request_id", table.c.request_id)
    return table


activity_logs: Final = make_table(metadata_obj)


def cuts_table_name(table: str = DEFAULT_TABLE) -> str:
    """The retention cut markers' table of ``table``: ``activity_log_cuts`` for the default."""
    return "activity_log_cuts" if table == DEFAULT_TABLE else f"{table}_cuts"


def make_cuts_table(metadata: MetaData, table: str = DEFAULT_TABLE,
                    schema: str | None = None) -> Table:
    """The retention cut markers (``retention``, ``verify``): per producer, the last ``seq``
    that retention deleted and that row's link, signed (``signing.cut_mac``)."""
    return Table(
        cuts_table_name(table),
        metadata,
        Column("producer_id", Text, primary_key=True),
        Column("seq", BigInteger, nullable=False),
        Column("link", Text, nullable=False),
        Column("closed", Boolean, nullable=False, default=False),
        Column("cutoff", UTCDateTime(), nullable=False),
        Column("cut_at", UTCDateTime(), nullable=False),
        Column("key_id", Text, nullable=False),
        Column("mac", Text, nullable=False),
        schema=schema,
    )


activity_log_cuts: Final = make_cuts_table(metadata_obj)

#: The columns of ``activity_logs``, in table order, as plain ``str`` (a Column's name is
#: SQLAlchemy's ``quoted_name``, which orjson refuses as a key).
COLUMNS: Final[tuple[str, ...]] = tuple(str(c.name) for c in activity_logs.columns)

#: Maximum characters stored per text column (from each column's ``info["max_chars"]``).
TEXT_LIMITS: Final[Mapping[str, int]] = {
    c.name: int(c.info["max_chars"]) for c in activity_logs.columns if "max_chars" in c.info
}
