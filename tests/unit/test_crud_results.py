"""The query results agree with the table: ``ActivityRecord`` is ``schema.make_table`` row for row."""

from __future__ import annotations

import types
import uuid
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, get_type_hints

from activity_logging.crud import ActivityRecord
from activity_logging.schema import COLUMNS, activity_logs


def test_record_fields_are_the_table_columns_in_table_order() -> None:
    assert tuple(f.name for f in fields(ActivityRecord)) == COLUMNS


def test_a_record_field_admits_none_exactly_when_its_column_is_nullable() -> None:
    hints = get_type_hints(ActivityRecord)
    for column in activity_logs.columns:
        hint = hints[column.name]
        if hint is Any:  # the JSON columns: any decoded value, None included
            assert column.nullable, column.name
            continue
        admits_none = isinstance(hint, types.UnionType) and type(None) in hint.__args__
        assert admits_none == bool(column.nullable), column.name


def test_to_dict_keeps_table_order_and_is_what_from_row_reads() -> None:
    row = {name: None for name in COLUMNS} | {
        "id": uuid.uuid4().hex, "timestamp": datetime(2026, 1, 2, 3, 4, 5),  # as SQLite gives
        "activity_type": "call_created", "severity": "info", "level": 20,
        "ip_address": "192.0.2.1",
    }
    record = ActivityRecord.from_row(row)
    assert record.timestamp.tzinfo is UTC
    out = record.to_dict()
    assert tuple(out) == COLUMNS
    assert out["id"] == str(uuid.UUID(row["id"]))
    assert ActivityRecord.from_row(out | {"timestamp": record.timestamp}) == record
