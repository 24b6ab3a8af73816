"""JSON-safe values: what orjson cannot encode made encodable, bounded. Pure, never raises.

The fast path is orjson itself; ``default`` is its fallback for unknown types and
``sanitize`` the slow path for values orjson refuses outright (cycles, huge ints, lone
surrogates, non-string keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

#: Longest string (characters) kept from one value, and bytes from one bytes value.
MAX_VALUE_CHARS: Final = 16_384
MAX_VALUE_BYTES: Final = 16_384
#: Longest text an unencodable object is turned into (its ``str()``).
MAX_REPR_CHARS: Final = 1_024
OPTS: Final = orjson.OPT_NON_STR_KEYS


def default(obj: Any) -> Any:
    """orjson fallback: turn anything JSON cannot encode into something it can, bounded."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj[:MAX_VALUE_BYTES]).decode("utf-8", "replace")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    try:
        text = str(obj)
    except Exception:
        text = f"<unprintable {type(obj).__name__}>"
    return text[:MAX_REPR_CHARS]


def safe_str(text: str) -> str:
    """``text`` with lone surrogates replaced: orjson (and PostgreSQL) refuse them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def sanitize(obj: Any, _depth: int = 0, _seen: set[int] | None = None) -> Any:
    """Return a JSON-safe deep copy of ``obj``: cycles, huge ints, odd keys and types made safe.

    The slow path, used only when orjson refuses a value. Never raises.
    """
    if _depth > 32:
        return "<max depth>"
    t = type(obj)
    if t is str:
        return safe_str(obj)
    if t is float or t is bool or obj is None:
        return obj
    if t is int:
        return obj if -(2**63) <= obj < 2**64 else str(obj)
    seen = set() if _seen is None else _seen
    if isinstance(obj, Mapping | list | tuple | set | frozenset):
        if id(obj) in seen:
            return "<cycle>"
        seen.add(id(obj))
        try:
            if isinstance(obj, Mapping):
                return {safe_str(str(k))[:MAX_REPR_CHARS]: sanitize(v, _depth + 1, seen)
                        for k, v in list(obj.items())}
            return [sanitize(v, _depth + 1, seen) for v in list(obj)]
        finally:
            seen.discard(id(obj))
    try:
        return orjson.loads(orjson.dumps(obj, option=OPTS))
    except Exception:
        return sanitize(default(obj), _depth + 1, seen)


def dumps(value: Any) -> bytes:
    """orjson-encode ``value``; whatever it holds, fall back to a sanitised copy. Never raises."""
    try:
        return orjson.dumps(value, default=default)
    except Exception:
        return orjson.dumps(sanitize(value), default=default, option=OPTS)
