"""Secrets out of the record: values under secret-looking keys become ``[REDACTED]``.

Runs in the handler's listener on each batch of snapshotted records (``redact_records``),
before they are batched, so the Redis path and the embedded one store the same. A record
is decided on its own bytes: a cheap scan finds the records whose extras mention a secret
word anywhere, and only those are decoded and walked key by key; so the result never
depends on what else shares its batch. Keys are matched, at any depth, as case-insensitive
substrings (``"token"`` matches ``"access_token"``). What this does not cover (free text
in messages) is listed in docs/security.md.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson

_SECRET_WORDS: Final = (
    "password", "passwd", "secret", "token", "api_key", "apikey", "api-key", "authorization",
    "cookie", "private_key", "credit_card", "card_number", "cvv",
)
DEFAULT_REDACT_KEYS: Final = ",".join(_SECRET_WORDS)
REDACTED: Final = "[REDACTED]"
#: Deeper structures are not walked key by key: ``find`` answers "cannot tell" (None), and a
#: record it cannot tell about is redacted by the walk of ``redact``, which has no limit.
MAX_DEPTH: Final = 32
_CACHE_LIMIT: Final = 10_000
#: Values that orjson encodes as scalars: no keys can hide in them.
_SCALARS: Final = frozenset({
    str, int, float, bool, type(None), bytes, datetime.datetime, datetime.date, datetime.time,
    uuid.UUID, decimal.Decimal,
})


def search_terms(words: Sequence[str], shortest: int = 3) -> list[str]:
    """Few substrings such that every word contains one: what the byte scan looks for.

    Each search is a pass over the batch, so fewer is faster: greedily the substring (at
    least ``shortest`` characters, else the whole word) shared by the most words not yet
    covered, the longest on a tie. The defaults' 13 words need 8 (``key`` covers
    ``api_key``, ``apikey``, ``api-key`` and ``private_key``). A shorter term finds more
    records that merely mention it; those are decoded and walked, never redacted wrongly.
    """
    left = list(dict.fromkeys(words))
    terms: list[str] = []
    while left:
        candidates = {w[i:j] for w in left for i in range(len(w))
                      for j in range(i + min(shortest, len(w)), len(w) + 1)}
        best = max(sorted(candidates), key=lambda c: (sum(c in w for w in left), len(c)))
        terms.append(best)
        left = [w for w in left if best not in w]
    return terms


class Redactor:
    """Finds and replaces the values of secret keys in decoded or not-yet-encoded extras.

    ``keys``: comma-separated words, or an iterable of them. Thread-safe (its only state is
    a cache of key verdicts, where a race costs a recomputation).
    """

    def __init__(self, keys: str | Iterable[str] = DEFAULT_REDACT_KEYS) -> None:
        words = [k.strip().lower() for k in (keys.split(",") if isinstance(keys, str) else keys)]
        self.words: tuple[str, ...] = tuple(w for w in words if w)
        self._cache: dict[Any, bool] = {}
        # keys known not to be secret: a record whose keys are all in it is checked in C
        self._clean: set[Any] = set()
        self._needles: tuple[bytes, ...] = tuple(n.encode() for n in search_terms(self.words))
        # bytes.lower() folds ASCII only: a word with other letters cannot be searched for
        # in bytes, so every record is walked; and two non-ASCII characters lower-case to
        # ASCII letters (KELVIN SIGN to "k", DOTTED CAPITAL I to "i"): a record holding one
        # is walked too, so "TO\u212aEN" cannot hide a token.
        self._walk_all = not all(w.isascii() for w in self.words)
        if self._needles:
            self._needles += ("\u212a".encode(), "\u0130".encode())
        self.redacted = 0

    def secret_key(self, key: Any) -> bool:
        """True when ``key`` names a secret (cached per key)."""
        found = self._cache.get(key)
        if found is None:
            lowered = str(key).lower()
            found = any(w in lowered for w in self.words)
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[key] = found
                if not found:
                    self._clean.add(key)
        return found

    def find(self, obj: dict[Any, Any], depth: int = 0) -> bool | None:
        """Does ``obj`` hold a secret key with a value? True, False, or None: cannot tell.

        None when it holds an object whose encoding may contain keys (a dataclass, a
        Mapping that is not a dict, anything orjson or its fallback turns into a mapping),
        or is nested past ``MAX_DEPTH``: the caller then checks the decoded JSON instead.
        """
        if not self.words:
            return False
        if depth > MAX_DEPTH:
            return None
        if not obj.keys() <= self._clean:
            for key, value in obj.items():
                if value is not None and key not in self._clean and self.secret_key(key):
                    return True
        return self._find_among(obj.values(), depth)

    def _find_among(self, values: Iterable[Any], depth: int) -> bool | None:
        """``find`` over the values of a dict or the items of a list."""
        unsure = False
        for value in values:
            kind = type(value)
            if kind in _SCALARS:
                continue
            if kind is dict:
                found = self.find(value, depth + 1)
            elif kind is list or kind is tuple:
                found = self._find_among(value, depth + 1) if depth < MAX_DEPTH else None
            else:
                found = None
            if found:
                return True
            unsure = unsure or found is None
        return None if unsure else False

    def redact(self, obj: Any) -> tuple[Any, int]:
        """A copy of ``obj`` with secret values replaced, and how many were replaced.

        Walks dicts and lists (and tuples, as lists); other values are returned as they are.
        """
        if isinstance(obj, dict):
            out: dict[Any, Any] = {}
            count = 0
            for key, value in obj.items():
                if value is not None and self.secret_key(key):
                    out[key] = REDACTED
                    count += value != REDACTED  # already redacted (a cut record): not again
                else:
                    out[key], n = self.redact(value)
                    count += n
            return out, count
        if isinstance(obj, list | tuple):
            items = [self.redact(v) for v in obj]
            return [v for v, _ in items], sum(n for _, n in items)
        return obj, 0

    def mentions(self, raw: bytes) -> bool:
        """True when JSON bytes mention a secret word anywhere (false positives allowed;
        no false negatives for keys: a key holding the word holds its bytes)."""
        low = raw.lower()
        return any(word in low for word in self._needles)

    def redact_records(self, bodies: Sequence[bytes]) -> dict[int, bytes]:
        """The record bodies (JSON objects, extras under ``x``) that held secrets, redacted,
        by position.

        One lower-cased copy of the batch is searched once per search term
        (``search_terms``); a record hit anywhere is decoded and its extras checked key by
        key, and it is re-encoded only if they had a secret key with a value. Counts the
        values replaced in ``redacted``. Never raises: bytes that do not decode are left as
        they are (they were made by orjson, so this does not happen).
        """
        if not self._needles:
            return {}
        hit = set(range(len(bodies))) if self._walk_all else self._mentions(bodies)
        out: dict[int, bytes] = {}
        for index in hit:
            try:
                decoded = orjson.loads(bodies[index])
            except orjson.JSONDecodeError:
                continue
            extras = decoded.get("x") if isinstance(decoded, dict) else None
            if isinstance(extras, dict) and self.find(extras) is not False:
                decoded["x"], count = self.redact(extras)
                if count:
                    self.redacted += count
                    out[index] = orjson.dumps(decoded)
        return out

    def redact_in_place(self, bodies: list[bytes]) -> None:
        """``redact_records``, with the redacted bodies put in place of the originals."""
        for index, body in self.redact_records(bodies).items():
            bodies[index] = body

    def _mentions(self, bodies: Sequence[bytes]) -> set[int]:
        """Positions of the bodies that hold a search term anywhere (lower-cased)."""
        offsets: list[int] = []
        pos = 0
        for body in bodies:
            offsets.append(pos)
            pos += len(body) + 1
        low = b"\x00".join(bodies).lower()
        hit: set[int] = set()
        for word in self._needles:
            i = low.find(word)
            while i != -1:
                index = bisect_right(offsets, i) - 1
                hit.add(index)
                i = low.find(word, offsets[index + 1] if index + 1 < len(offsets) else len(low))
        return hit
