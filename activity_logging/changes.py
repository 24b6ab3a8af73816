"""The one shape of ``changes``: ``{"field": {"old": ..., "new": ...}}``, built and read.

``changes_between(before, after)`` builds it from two versions of the same thing (dicts,
dataclasses, pydantic models, plain objects): only the fields whose value changed, each
value made JSON-safe. ``change_items(changes)`` reads a stored ``changes`` value back as
``(field, old, new)`` triples for display (``query --show-changes``, the viewer).

What a producer passes as ``changes`` is normalised on the way in, in
``rows.build_activity`` (so every producer and both stores agree):

* a mapping whose value under a field is a list (or tuple) of exactly two items, the
  seed's ``{"status": [None, "ringing"]}``, becomes ``{"status": {"old": None, "new":
  "ringing"}}``; every other value under a field is stored as given;
* an empty mapping, list or string is no value (SQL NULL);
* a scalar (``"ringing"``, ``3``) is stored as ``{"value": ...}``;
* anything else (a list at the top level, a mapping of other shapes) is stored as given.

Pure: no I/O, no logging. Everything here is cheap enough to call per request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

from ._internal import reporter
from .encoding import default as _default
from .encoding import sanitize

__all__ = ["change_items", "changes_between", "format_change_value", "format_changes"]

_SORTED: Final = orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS


def _json_default(obj: Any) -> Any:
    """orjson fallback: pydantic-like models by their dump, the rest as the pipeline does."""
    dump = getattr(obj, "model_dump", None)
    if callable(dump) and not isinstance(obj, type):
        return dump()
    return _default(obj)


def _encode(value: Any) -> bytes:
    """``value`` as canonical JSON bytes (sorted keys), whatever it holds. Never raises."""
    try:
        return orjson.dumps(value, default=_json_default, option=_SORTED)
    except Exception:  # cycles, huge ints, lone surrogates: the pipeline's slow path
        return orjson.dumps(sanitize(value), default=_default, option=_SORTED)


def _fields_of(obj: Any) -> dict[str, Any]:
    """The fields of one version: ``{}`` for None; raises for what has no fields."""
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return {str(k): v for k, v in obj.items()}
    if not isinstance(obj, type):
        if dataclasses.is_dataclass(obj):
            # shallow, unlike dataclasses.asdict (which deep-copies): values are encoded below
            return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        for method in ("model_dump", "dict"):  # pydantic 2, then pydantic 1 (and look-alikes)
            dump = getattr(obj, method, None)
            if callable(dump):
                dumped = dump()
                if isinstance(dumped, Mapping):
                    return {str(k): v for k, v in dumped.items()}
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            # "_" names are the object's machinery (SQLAlchemy's _sa_instance_state), not data
            return {k: v for k, v in attrs.items() if not k.startswith("_")}
        slots = [name for cls in type(obj).__mro__ for name in getattr(cls, "__slots__", ())
                 if isinstance(name, str) and not name.startswith("_")]
        if slots:
            return {name: getattr(obj, name) for name in slots if hasattr(obj, name)}
    raise TypeError(f"{type(obj).__name__} has no fields")


def changes_between(
    before: Any, after: Any, fields: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """``{"field": {"old": ..., "new": ...}}`` for every field whose value differs.

    Args:
        before: the old version: a mapping, a dataclass instance, a pydantic-like model
            (``model_dump()`` or ``dict()``), a plain object (its public ``__dict__`` or
            ``__slots__`` attributes), or ``None`` (nothing before: a creation).
        after: the new version, the same kinds (``None``: a deletion).
        fields: only these fields, in this order; by default every field of either
            version, ``before``'s first.

    A field missing on one side counts as ``None`` there. Values are compared and returned
    as JSON (datetimes, UUIDs, enums, decimals, nested models and dataclasses converted
    the way the pipeline stores them), so ``{"old": x, "new": y}`` is what the row will
    hold and two values that store the same are not a change (but ``1`` and ``True`` are
    different). A version that has no fields (a number, a string) is compared as a whole,
    under ``"value"``. Returns ``{}`` when nothing changed, which is stored as no value.
    Never raises: on an error it reports once on stderr (rate-limited) and returns what it
    could compare, possibly ``{}``.
    """
    try:
        try:
            old_fields, new_fields = _fields_of(before), _fields_of(after)
        except TypeError:
            old_fields, new_fields = {"value": before}, {"value": after}
        names: Iterable[str]
        if fields is None:
            names = dict.fromkeys([*old_fields, *new_fields])
        else:
            names = dict.fromkeys(fields if not isinstance(fields, str) else [fields])
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            old = _encode(old_fields.get(name))
            new = _encode(new_fields.get(name))
            if old != new:
                out[name] = {"old": orjson.loads(old), "new": orjson.loads(new)}
        return out
    except Exception as exc:  # a property or a model_dump that raises is not the caller's problem
        reporter.report("changes.between", "could not compare two versions", exc)
        return {}


def change_items(changes: Any) -> list[tuple[str, Any, Any]] | None:
    """A stored ``changes`` value as ``(field, old, new)`` triples, in stored order.

    Reads the one shape (``{"old": ..., "new": ...}`` under each field, a missing side as
    ``None``) and, for rows stored before normalisation, the seed's ``[old, new]`` pairs.
    Returns ``None`` when ``changes`` is in neither shape (show it as JSON then); an empty
    list for no value.
    """
    if changes is None:
        return []
    if not isinstance(changes, Mapping):
        return None
    items: list[tuple[str, Any, Any]] = []
    for name, value in changes.items():
        if isinstance(value, Mapping) and value and set(value) <= {"old", "new"}:
            items.append((str(name), value.get("old"), value.get("new")))
        elif isinstance(value, list | tuple) and len(value) == 2:
            items.append((str(name), value[0], value[1]))
        else:
            return None
    return items


def format_change_value(value: Any) -> str:
    """One value as compact JSON text (``null``, ``"ringing"``, ``3``): unambiguous in a cell."""
    return _encode(value).decode()


def format_changes(changes: Any) -> str:
    """``changes`` as one line, ``status: null → "ringing"; converted: false → true``.

    A value in another shape is shown as its JSON; no value as ``-``.
    """
    items = change_items(changes)
    if items is None:
        return format_change_value(changes)
    if not items:
        return "-"
    return "; ".join(f"{name}: {format_change_value(old)} → {format_change_value(new)}"
                     for name, old, new in items)

