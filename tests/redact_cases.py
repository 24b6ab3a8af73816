"""Hypothesis strategies for the redaction tests: a secret under a listed key, written in any
casing and separator style, placed anywhere a secret can hide in ``extra``.

A ``Placed`` case is the ``extra`` to log and the secret values it holds; every secret is a
fresh marker string (``SECRET_PREFIX`` and random hex) that nothing else in a record holds,
so "the secret reached X" is "X's bytes hold the marker".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from activity_logging.redact import DEFAULT_REDACT_WORDS, word_parts

SECRET_PREFIX = "Sx9q"

_STYLES = ("snake", "kebab", "space", "dot", "camel", "pascal", "upper", "title")
_AFFIXES = ("user", "new", "x", "my", "db", "2", "old")


def render(parts: list[str], style: str) -> str:
    """``parts`` written as one key in ``style`` (``title`` is ``X-Api-Key``)."""
    if style == "snake":
        return "_".join(parts)
    if style == "kebab":
        return "-".join(parts)
    if style == "space":
        return " ".join(parts)
    if style == "dot":
        return ".".join(parts)
    if style == "upper":
        return "_".join(parts).upper()
    if style == "title":
        return "-".join(p.capitalize() for p in parts)
    head, *rest = parts
    first = head.capitalize() if style == "pascal" else head
    return first + "".join(p.capitalize() for p in rest)


@st.composite
def secret_keys(draw: st.DrawFn) -> str:
    """A key that the default list makes secret: an entry's parts, maybe a plural ``s``, a
    word before, a word after (not for ``$`` entries), in one of the styles; or, for a
    multi-part entry, its parts written as one word in any case."""
    entry = draw(st.sampled_from(DEFAULT_REDACT_WORDS))
    anchored = entry.endswith("$")
    parts = list(word_parts(entry.strip("*$")))
    if len(parts) > 1 and draw(st.booleans()):
        flat = "".join(parts)
        return draw(st.sampled_from([flat, flat.upper(), flat.capitalize()]))
    if draw(st.booleans()):
        parts[-1] += "s"
    if draw(st.booleans()):
        parts.insert(0, draw(st.sampled_from(_AFFIXES)))
    if not anchored and draw(st.booleans()):
        parts.append(draw(st.sampled_from(_AFFIXES)))
    style = draw(st.sampled_from(_STYLES))
    if style in ("camel", "pascal") and any(p.isdigit() for p in parts):
        style = "snake"  # "x2Token" is still split, but keep the case readable
    return render(parts, style)


@dataclass
class Placed:
    """The ``extra`` of one record and the secret markers hidden in it."""

    extra: dict[str, Any]
    secrets: list[str] = field(default_factory=list)


def _marker() -> str:
    return f"{SECRET_PREFIX}{uuid.uuid4().hex}"


_PLAIN_KEYS = st.sampled_from(["actor_id", "note", "headers", "items", "changes", "data", "meta"])
_PLAIN_VALUES = st.none() | st.integers(-5, 5) | st.sampled_from(["a", "password reset", ""])


@st.composite
def placed_secrets(draw: st.DrawFn) -> Placed:
    """An ``extra`` with one or two secrets under secret keys, nested in dicts and lists, in
    header pairs, name/value dicts, field/old/new change lists or a change dict."""
    secrets: list[str] = []

    def holder() -> Any:
        key = draw(secret_keys())
        shape = draw(st.sampled_from(["dict", "pair", "name_value", "change_list", "change_dict"]))
        one = _marker()
        secrets.append(one)
        if shape == "dict":
            return {key: one}
        if shape == "pair":
            return [[key, one], ["accept", "application/json"]]
        if shape == "name_value":
            name_key = draw(st.sampled_from(["name", "key", "header"]))
            return [{name_key: key, "value": one}]
        two = _marker()
        secrets.append(two)
        if shape == "change_list":
            return [{"field": key, "old": one, "new": two}]
        return {key: {"old": one, "new": two}}

    def nest(value: Any) -> Any:
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                value = {draw(_PLAIN_KEYS): value, "n": draw(_PLAIN_VALUES)}
            else:
                value = [draw(_PLAIN_VALUES), value]
        return value

    extra: dict[str, Any] = {"activity_type": "probe", "actor_id": "u1"}
    for _ in range(draw(st.integers(1, 2))):
        extra[draw(_PLAIN_KEYS) + str(len(extra))] = nest(holder())
    return Placed(extra, secrets)
