"""What the viewer shows, computed from stored values: pure functions, no I/O, no HTML.

Every stored value is untrusted (user agents, changes and ids come from clients). Nothing
here builds markup: it turns values into plain text and link targets, and the templates
(autoescaped) turn those into HTML. Never raises on any stored value, whatever its shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlencode

import orjson

from ..crud import ActivityFilter
from ..exceptions import ConfigurationError
from ..levels import SEVERITIES
from ..when import parse_when

#: Query parameters a listing understands (the names of ``ActivityFilter`` and the CLI flags).
FILTER_PARAMS: Final = (
    "since", "until", "activity_type", "severity", "actor_type", "actor_id",
    "target_type", "target_id", "request_id", "text",
)
_MULTI_PARAMS: Final = frozenset({"activity_type", "severity"})
#: Longest filter value accepted from a query string (longer ones are a 400, not a query).
MAX_PARAM_CHARS: Final = 512


# --- changes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChangeRow:
    """One field of ``changes``: ``old -> new`` (``is_diff``), or a value without a before."""

    field: str
    old: str | None
    new: str | None
    is_diff: bool


@dataclass(frozen=True, slots=True)
class Changes:
    """``changes`` ready to show: one row per field, or ``raw`` JSON text for any other shape."""

    rows: tuple[ChangeRow, ...]
    raw: str | None

    @property
    def empty(self) -> bool:
        """True when there is nothing to show."""
        return not self.rows and self.raw is None


def show_value(value: Any) -> str | None:
    """A stored JSON value as text: strings as they are, ``None`` as ``None``, others as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)


def _pair(value: Any) -> tuple[Any, Any] | None:
    """``(old, new)`` for both stored shapes: ``{"old": …, "new": …}`` and ``[old, new]``."""
    if isinstance(value, Mapping) and value and set(value) <= {"old", "new"}:
        return value.get("old"), value.get("new")
    if isinstance(value, list | tuple) and len(value) == 2:
        return value[0], value[1]
    return None


def normalize_changes(changes: Any) -> Changes:
    """``changes`` as rows of field / old / new, whichever of the two stored shapes each uses.

    A field whose value is neither shape is shown as a value with no "before"; ``changes``
    that is not an object at all is shown as its JSON text. Never raises.
    """
    if changes is None:
        return Changes((), None)
    if not isinstance(changes, Mapping):
        return Changes((), show_value(changes))
    rows: list[ChangeRow] = []
    for name, value in changes.items():
        pair = _pair(value)
        if pair is None:
            rows.append(ChangeRow(str(name), None, show_value(value), is_diff=False))
        else:
            rows.append(ChangeRow(str(name), show_value(pair[0]), show_value(pair[1]), is_diff=True))
    return Changes(tuple(rows), None)


def pretty_json(value: Any) -> str:
    """``value`` as indented JSON text (for metadata on the detail page). Never raises."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)


def severity_class(severity: Any) -> str:
    """A CSS class for a stored severity; one of ours, whatever the stored text says."""
    return f"sev-{severity}" if severity in SEVERITIES else "sev-other"


def show_time(ts: datetime) -> str:
    """A UTC timestamp to the millisecond, as people read it: ``2026-03-10 12:00:00.123``."""
    return ts.isoformat(sep=" ", timespec="milliseconds")[:23]


# --- filters from a query string ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FilterForm:
    """The filter a listing was asked for: the values as typed (to refill the form and build
    links) and the ``ActivityFilter`` they mean."""

    values: tuple[tuple[str, str], ...]
    filters: ActivityFilter

    def get(self, name: str) -> str:
        """The first value of ``name`` as typed, ``""`` when absent."""
        return next((v for k, v in self.values if k == name), "")

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` as typed."""
        return [v for k, v in self.values if k == name]

    @property
    def active(self) -> bool:
        """True when any filter is set."""
        return bool(self.values)


def parse_filters(params: Iterable[tuple[str, str]], *, now: datetime | None = None) -> FilterForm:
    """The ``FilterForm`` for query parameters; unknown parameters are ignored.

    Empty values count as absent; ``activity_type`` and ``severity`` may repeat or hold a
    comma-separated list. Times are ISO 8601 (naive = UTC) or an age (``24h``, ``7d``).
    Raises ``ConfigurationError`` naming the parameter for a bad value.
    """
    values: list[tuple[str, str]] = []
    for key, raw in params:
        if key not in FILTER_PARAMS:
            continue
        value = raw.strip()
        if not value:
            continue
        if len(value) > MAX_PARAM_CHARS:
            raise ConfigurationError(f"{key} is longer than {MAX_PARAM_CHARS} characters")
        if key not in _MULTI_PARAMS and any(k == key for k, _ in values):
            continue  # the first of a repeated single-valued parameter wins
        values.append((key, value))
    single = {k: v for k, v in values if k not in _MULTI_PARAMS}
    multi = {name: [part.strip() for k, v in values if k == name for part in v.split(",")
                    if part.strip()] or None
             for name in _MULTI_PARAMS}

    def when(name: str) -> datetime | None:
        text = single.get(name)
        if text is None:
            return None
        try:
            return parse_when(text, now=now)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{name}: {exc}") from None

    filters = ActivityFilter.build(
        start=when("since"), end=when("until"),
        activity_type=multi["activity_type"], severity=multi["severity"],
        actor_type=single.get("actor_type"), actor_id=single.get("actor_id"),
        target_type=single.get("target_type"), target_id=single.get("target_id"),
        request_id=single.get("request_id"), text=single.get("text"),
    )
    return FilterForm(tuple(values), filters)


# --- links ------------------------------------------------------------------------------------


def query_string(pairs: Iterable[tuple[str, Any]]) -> str:
    """``?a=1&b=2`` from pairs (``None`` and ``""`` values left out); ``""`` when empty."""
    kept = [(k, str(v)) for k, v in pairs if v is not None and v != ""]
    return "?" + urlencode(kept) if kept else ""


def with_params(base: Sequence[tuple[str, str]], **changes: Any) -> list[tuple[str, Any]]:
    """``base`` pairs with each keyword replacing every value of that name (``None`` drops it)."""
    out: list[tuple[str, Any]] = [(k, v) for k, v in base if k not in changes]
    out.extend((k, v) for k, v in changes.items() if v is not None)
    return out


__all__ = [
    "FILTER_PARAMS",
    "MAX_PARAM_CHARS",
    "ChangeRow",
    "Changes",
    "FilterForm",
    "normalize_changes",
    "parse_filters",
    "pretty_json",
    "query_string",
    "severity_class",
    "show_time",
    "show_value",
    "with_params",
]
