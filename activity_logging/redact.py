"""Secrets out of the record: values under secret-looking keys become ``[REDACTED]``.

Runs in the handler's listener on each batch of snapshotted records (``redact_records``),
before they are batched, so Redis, the spool and the embedded store all get the same
bytes. A record is decided on its own bytes: one scan of the batch finds the records that
mention a key word (or a free-text marker) anywhere, and only those are decoded and walked;
so the result never depends on what else shares its batch.

**Which keys are secret.** A key is cut into word parts: split at every character that is
not a letter or digit (``-``, ``_``, space, ``.``, quotes...), between a lower-case and an
upper-case letter (``userPassword``), before the last capital of a capital run followed by
a lower-case letter (``APIKey`` -> ``API``, ``Key``) and between letters and digits
(``pwd2``); then each part is lower-cased. Each entry of the list (``redact_keys``) is cut
the same way, and a key is secret when its parts contain the entry's parts in a row, where

* the last part may carry a plural ``s`` (``tokens``, ``credentials``);
* a multi-part entry also matches its parts written as one (``api key`` matches ``apikey``,
  ``session id`` matches ``SESSIONID``);
* ``*`` in front lets the first part end a longer part (``*token`` matches ``accesstoken``,
  ``*password`` matches ``userpassword``), ``*`` behind lets the last part begin one;
* ``$`` behind anchors the entry to the end of the key (``session$`` matches ``session`` and
  ``user_session``, not ``session_count``; ``pin$`` matches ``pin``, not ``pin_enabled``).

So ``access_token``, ``X-Api-Key``, ``userPassword``, ``sessionId``, ``creditCard`` and
``privateKey`` are secret, while ``author``, ``tokenizer_name``, ``passenger``, ``pinned``
and ``session_count`` are not. A key holding a secret word as a plain part is secret
whatever follows (``password_hash``, ``token_type``, ``max_tokens``: cheap to lose, where a
missed secret is not).

**Where.** At any depth of ``extra``, and in three list shapes: a ``[name, value]`` pair
(headers as ``[["authorization", "Bearer x"]]``) has its value redacted when the name is a
secret key; a dict with a ``name``/``key``/``field``/``header``/``attribute``/``param``
string naming a secret has its ``value``/``values``/``old``/``new``/``before``/``after``/
``from``/``to`` redacted (``[{"name": "Authorization", "value": ...}]``,
``[{"field": "password", "old": ..., "new": ...}]``). A secret key whose value is a change
(``{"password": {"old": ..., "new": ...}}``) keeps its shape, each side redacted.

**Free text.** With ``free_text`` on (the default), the message (``msg``), the exception
text (``exc``) and every string under a key named in ``FREE_TEXT_KEYS`` (``description``,
``error_message``: what ``@log_activity`` stores...) are scrubbed of ``key=value`` and
``key: value`` with a secret key (the value: a quoted string, or an optional auth scheme
and a run of non-space characters), ``Bearer <token>``, ``Basic <base64 of user:pass>``
and JWTs (``eyJ...``). ``None`` values are no secret and are left as they are.

**Cost.** The scan looks, in the lower-cased bytes, for one part of each entry (plus
``bearer``, ``basic``, ``eyj`` for free text): every secret key holds the bytes of its
entry's part, so a record the scan passes over has nothing to redact. With the optional
``ahocorasick_rs`` package installed that is one pass over the batch for all the needles;
without it, one ``bytes.find`` pass per needle (the same result, slower: figures in
docs/performance.md). A record the scan hits (a secret, or a word like ``shipping`` that
holds ``pin``) is decoded, walked and, only if something was replaced, re-encoded.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any, Final

import orjson

#: The default entries (see the module docstring for the syntax).
DEFAULT_REDACT_WORDS: Final = (
    "*password", "*passwd", "*passphrase", "pwd", "pass$", "pin$", "pin code", "otp$",
    "otp code", "*secret", "client secret", "*token", "*api key", "access key", "private key",
    "signing key", "secret key", "session key", "auth$", "auth header", "auth code",
    "authorization", "bearer", "*credential", "cookie", "set cookie", "session$", "session id",
    "csrf", "xsrf", "ssn", "social security", "credit card", "card number", "cvv", "cvc",
    "iban", "signature", "jwt",
)
DEFAULT_REDACT_KEYS: Final = ",".join(DEFAULT_REDACT_WORDS)
REDACTED: Final = "[REDACTED]"
#: Keys whose string values are free text, scrubbed at any depth (besides ``msg``, ``exc``).
FREE_TEXT_KEYS: Final = frozenset({
    "description", "message", "msg", "error", "error_message", "exception", "exc", "detail",
    "reason",
})
#: In a dict of the list shapes, the entries naming the field, and those holding its value.
NAME_KEYS: Final = ("name", "key", "field", "header", "attribute", "param")
VALUE_KEYS: Final = frozenset({"value", "values", "old", "new", "before", "after", "from", "to"})
_CHANGE_KEYS: Final = frozenset({"old", "new"})
_CACHE_LIMIT: Final = 10_000
#: Longer strings (a name-like value, a free-text key) are checked each time, not cached.
_CACHED_CHARS: Final = 128
#: Needles the byte scan adds for free text: auth schemes and the start of a JWT.
_FREE_TEXT_NEEDLES: Final = (b"bearer", b"basic", b"eyj")
#: Non-ASCII letters that ``str.lower`` turns into ASCII ones (KELVIN SIGN to ``k``, DOTTED
#: CAPITAL I to ``i`` and a dot): ``bytes.lower`` leaves them, so a record holding one is
#: walked whatever else it holds.
_LOWER_TO_ASCII: Final = ("\u212a".encode(), "\u0130".encode())

_SCHEME: Final = r"(?:(?:bearer|basic|token|digest)\s+)?"
#: ``key=value`` / ``key: value``; the key starts a word (no quadratic rescans of long words),
#: a quoted value runs to its closing quote or the end of the text.
_KEY_VALUE: Final = re.compile(
    r"""(?P<key>["']?(?<![\w.\-])(?P<name>[^\W_][\w.\-]*)["']?)"""
    r"""(?P<sep>\s*[=:]\s*)"""
    r"""(?P<value>"[^"]*"?|'[^']*'?|""" + _SCHEME + r"""[^\s,;&"'<>(){}\[\]]+)""",
    re.IGNORECASE,
)
_AUTH_SCHEME: Final = re.compile(r"\b(?P<scheme>bearer|basic)\s+(?P<token>[A-Za-z0-9\-._~+/]{8,}=*)",
                                 re.IGNORECASE)
_JWT: Final = re.compile(r"\beyJ[A-Za-z0-9_\-]+\.eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")


def word_parts(key: str) -> tuple[str, ...]:
    """The lower-cased word parts of ``key`` (the splitting rule of the module docstring)."""
    parts: list[str] = []
    current: list[str] = []
    previous = ""  # the kind of the previous character: "u"pper, "l"ower, "d"igit
    for char in key:
        if char.isdigit():
            kind = "d"
        elif char.isalpha():
            kind = "u" if char.isupper() else "l"
        else:
            if current:
                parts.append("".join(current))
                current = []
            previous = ""
            continue
        if current:
            if (kind == "d") != (previous == "d") or (kind == "u" and previous == "l"):
                parts.append("".join(current))
                current = []
            elif kind == "l" and previous == "u" and len(current) > 1 and current[-2].isupper():
                parts.append("".join(current[:-1]))  # "APIKey": "API" then "Key"
                current = current[-1:]
        current.append(char)
        previous = kind
    if current:
        parts.append("".join(current))
    return tuple(p.lower() for p in parts)


class _Entry:
    """One entry of the list, parsed: its parts, and the ``*``/``$`` flags."""

    __slots__ = ("at_end", "joined", "open_end", "open_start", "parts")

    def __init__(self, text: str) -> None:
        text = text.strip()
        self.at_end = text.endswith("$")
        text = text.rstrip("$").strip()
        self.open_start = text.startswith("*")
        self.open_end = text.endswith("*")
        self.parts = word_parts(text.strip("*"))
        self.joined = "".join(self.parts)

    def _part_matches(self, part: str, word: str, first: bool, last: bool) -> bool:
        """Does key part ``part`` match entry word ``word`` (the entry's first and/or last)?"""
        head_open = first and self.open_start  # "*token": anything may come before
        tail_open = last and self.open_end  # "token*": anything may come after
        if head_open and tail_open:
            return word in part
        if tail_open:
            return part.startswith(word)
        if head_open:
            return part.endswith(word) or (last and part.endswith(word + "s"))
        return part == word or (last and part == word + "s")

    def matches(self, parts: tuple[str, ...]) -> bool:
        """True when the key of word parts ``parts`` holds this entry."""
        size = len(self.parts)
        count = len(parts)
        for start in range(count):
            if (start + size <= count and (not self.at_end or start + size == count)
                    and self._run_at(parts, start)):
                return True
            if (size > 1 and (not self.at_end or start == count - 1)
                    and self._part_matches(parts[start], self.joined, True, True)):
                return True
        return False

    def _run_at(self, parts: tuple[str, ...], start: int) -> bool:
        last = len(self.parts) - 1
        return all(self._part_matches(parts[start + i], word, i == 0, i == last)
                   for i, word in enumerate(self.parts))


def _needle_words(entries: Sequence[_Entry]) -> list[str]:
    """One part of each entry to search record bytes for: one that is itself a one-part
    entry, else the part most entries share, else the longest; then no needle holding
    another (``pass`` finds ``password`` too)."""
    singles = {e.parts[0] for e in entries if len(e.parts) == 1}
    shared: dict[str, int] = {}
    for entry in entries:
        for part in set(entry.parts):
            shared[part] = shared.get(part, 0) + 1
    chosen = {max(e.parts, key=lambda p: (p in singles, shared[p], len(p)))
              for e in entries if e.parts}
    return sorted(w for w in chosen if not any(o != w and o in w for o in chosen))


class _Scan:
    """Which bodies of a batch hold a needle: one multi-pattern pass when the optional
    ``ahocorasick_rs`` package is installed, else one ``bytes.find`` pass per needle."""

    def __init__(self, needles: Sequence[bytes], engine: str = "auto") -> None:
        self.needles = tuple(needles)
        self._automaton: Any = None
        if engine == "auto" and self.needles:
            try:
                module = importlib.import_module("ahocorasick_rs")
            except ImportError:
                module = None
            if module is not None:
                self._automaton = module.BytesAhoCorasick(list(self.needles))
        elif engine not in ("auto", "find"):
            raise ValueError(f"engine must be 'auto' or 'find', not {engine!r}")
        self.engine = "ahocorasick" if self._automaton is not None else "find"

    def hits(self, bodies: Sequence[bytes]) -> set[int]:
        """Positions of the bodies that hold a needle anywhere (ASCII lower-cased)."""
        low = b"\x00".join(bodies).lower()
        hit: set[int] = set()
        offsets: list[int] = []  # where each body starts in ``low``: made at the first hit
        if self._automaton is not None:
            # non-overlapping matches: one hidden by an overlap lies in the same body
            for _, start, _ in self._automaton.find_matches_as_indexes(low):
                offsets = offsets or _offsets(bodies)
                hit.add(bisect_right(offsets, start) - 1)
            return hit
        ascii_only = low.isascii()  # one fast pass spares the non-ASCII needles' passes
        for needle in self.needles:
            if ascii_only and not needle.isascii():
                continue
            i = low.find(needle)
            while i != -1:
                offsets = offsets or _offsets(bodies)
                index = bisect_right(offsets, i) - 1
                hit.add(index)
                i = low.find(needle, offsets[index + 1] if index + 1 < len(offsets) else len(low))
        return hit


def _offsets(bodies: Sequence[bytes]) -> list[int]:
    """Where each of ``bodies`` starts in their ``b"\\x00"``-join."""
    return [total + i for i, total in enumerate(accumulate(map(len, bodies), initial=0))][:len(bodies)]


class Redactor:
    """Finds and replaces secrets in decoded or not-yet-encoded extras and in record bodies.

    Args:
        keys: comma-separated entries, or an iterable of them (syntax in the module
            docstring); ``""`` turns redaction off.
        free_text: scrub messages, exception texts and ``FREE_TEXT_KEYS`` values too.
        engine: ``"auto"`` (a multi-pattern scan when ``ahocorasick_rs`` is installed) or
            ``"find"`` (stdlib only); the result is the same, only the speed differs.

    ``redacted`` counts the values replaced (a free-text match counts one). Thread-safe: its
    only other state is a bounded cache of key verdicts, where a race costs a recomputation.
    """

    def __init__(self, keys: str | Iterable[str] = DEFAULT_REDACT_KEYS, *,
                 free_text: bool = True, engine: str = "auto") -> None:
        texts = keys.split(",") if isinstance(keys, str) else list(keys)
        entries = [_Entry(t) for t in texts if t.strip().strip("*$").strip()]
        self.entries: tuple[_Entry, ...] = tuple(e for e in entries if e.parts)
        self.words: tuple[str, ...] = tuple(t.strip() for t in texts if t.strip())
        self.free_text = free_text and bool(self.entries)
        self._cache: dict[str, bool] = {}
        words = _needle_words(self.entries)
        self._words = tuple(words)
        # bytes.lower() folds ASCII only: with a word that is not ASCII every record is walked
        self._walk_all = not all(w.isascii() for w in words)
        needles = [w.encode() for w in words]
        if needles:
            needles += _LOWER_TO_ASCII
            if self.free_text:
                needles += [n for n in _FREE_TEXT_NEEDLES if not any(w in n for w in needles)]
        self._scan = _Scan(needles, engine)
        self.redacted = 0

    @property
    def engine(self) -> str:
        """``"ahocorasick"`` or ``"find"``: how the batch is scanned."""
        return self._scan.engine

    def secret_key(self, key: Any) -> bool:
        """True when ``key`` names a secret (the rule of the module docstring; cached)."""
        text = key if type(key) is str else str(key)
        found = self._cache.get(text)
        if found is None:
            low = text.lower()
            if self._walk_all or any(word in low for word in self._words):
                parts = word_parts(text)
                found = any(entry.matches(parts) for entry in self.entries)
            else:  # a secret key holds its entry's needle word: most keys stop here, in C
                found = False
            if len(text) <= _CACHED_CHARS and len(self._cache) < _CACHE_LIMIT:
                self._cache[text] = found
        return found

    def scrub(self, text: str) -> tuple[str, int]:
        """``text`` with free-text secrets replaced, and how many were replaced.

        Each pattern runs only on text holding the character or word it needs (``=`` or
        ``:``; ``bearer`` or ``basic``; ``eyJ``), checked in C first.
        """
        if not self.free_text:
            return text, 0
        count = 0
        if "=" in text or ":" in text:
            text, count = self._scrub_key_values(text)
        low = text.lower()
        if "bearer" in low or "basic" in low:
            pieces: list[str] = []
            done = 0
            for match in _AUTH_SCHEME.finditer(text):
                if _is_credential(match["scheme"], match["token"]):
                    pieces += (text[done:match.start("token")], REDACTED)
                    done = match.end()
                    count += 1
            if pieces:
                text = "".join(pieces) + text[done:]
        if "eyJ" in text:
            text, n = _JWT.subn(REDACTED, text)
            count += n
        return text, count

    def _scrub_key_values(self, text: str) -> tuple[str, int]:
        """``key=value`` and ``key: value`` with a secret key, value replaced. A match whose
        key is not secret consumes only its key, so ``https://h/?token=t`` is still seen."""
        pieces: list[str] = []
        count = done = pos = 0
        while (match := _KEY_VALUE.search(text, pos)) is not None:
            value = match["value"]
            if value.strip("\"'") != REDACTED and self.secret_key(match["name"]):
                quote = value[0] if value[0] in "\"'" else ""
                pieces += (text[done:match.start("value")], quote, REDACTED, quote)
                count += 1
                done = pos = match.end()
            else:
                pos = match.end("sep")
        if not count:
            return text, 0
        pieces.append(text[done:])
        return "".join(pieces), count

    def redact(self, obj: Any) -> tuple[Any, int]:
        """``obj`` with secret values replaced, and how many were replaced.

        Walks dicts and lists (tuples as lists); other values are returned as they are, and
        so is ``obj`` itself when nothing was replaced. Free text is scrubbed under
        ``FREE_TEXT_KEYS``.
        """
        if not self.entries:
            return obj, 0
        return self._walk(obj)

    def _walk(self, obj: Any) -> tuple[Any, int]:
        kind = type(obj)
        if kind is dict or isinstance(obj, dict):
            return self._walk_dict(obj)
        if kind is list or kind is tuple or isinstance(obj, list | tuple):
            return self._walk_list(obj)
        return obj, 0

    def _walk_dict(self, obj: dict[Any, Any]) -> tuple[Any, int]:
        out: dict[Any, Any] | None = None
        count = 0
        named = not obj.keys().isdisjoint(NAME_KEYS) and self._names_secret(obj)
        cache = self._cache
        for key, value in obj.items():
            if value is None:
                continue
            secret = cache.get(key)
            if secret is None:
                secret = self.secret_key(key)
            kind = type(value)
            if secret or (named and key in VALUE_KEYS):
                if kind is dict and value and value.keys() <= _CHANGE_KEYS:
                    sides = {k: _replace(v) for k, v in value.items()}  # the shape is kept
                    new: Any = {k: v for k, (v, _) in sides.items()}
                    n = sum(n for _, n in sides.values())
                else:
                    new, n = _replace(value)
            elif kind is str:
                if not self.free_text or key not in FREE_TEXT_KEYS:
                    continue
                new, n = self.scrub(value)
            elif kind is dict or kind is list or kind is tuple or isinstance(value, dict | list | tuple):
                new, n = self._walk(value)
            else:
                continue
            if n:
                count += n
                if out is None:
                    out = dict(obj)
                out[key] = new
        return (obj if out is None else out), count

    def _names_secret(self, obj: dict[Any, Any]) -> bool:
        """True when a dict of the list shapes names a secret field (``{"name": "token"}``)."""
        for name_key in NAME_KEYS:
            name = obj.get(name_key)
            if type(name) is str and self.secret_key(name):
                return True
        return False

    def _walk_list(self, obj: list[Any] | tuple[Any, ...]) -> tuple[Any, int]:
        if (len(obj) == 2 and type(obj[0]) is str and obj[1] is not None
                and self.secret_key(obj[0])):
            new, n = _replace(obj[1])
            return ([obj[0], new] if n else obj), n
        out: list[Any] | None = None
        count = 0
        for index, value in enumerate(obj):
            new, n = self._walk(value)
            if n:
                count += n
                if out is None:
                    out = list(obj)
                out[index] = new
        return (obj if out is None else out), count

    def mentions(self, raw: bytes) -> bool:
        """True when JSON bytes mention a key word or a free-text marker anywhere (false
        positives allowed, no false negatives: a key holding a word holds its bytes)."""
        return self._walk_all or bool(self._scan.hits([raw]))

    def redact_body(self, decoded: dict[str, Any]) -> int:
        """Redact one decoded record body in place (extras under ``x``, ``msg``, ``exc``);
        returns how many values were replaced."""
        count = 0
        extras = decoded.get("x")
        if isinstance(extras, dict | list):
            new, count = self.redact(extras)
            if count:
                decoded["x"] = new
        for field in ("msg", "exc"):
            text = decoded.get(field)
            if type(text) is str and self.free_text:
                scrubbed, n = self.scrub(text)
                if n:
                    decoded[field] = scrubbed
                    count += n
        return count

    def redact_records(self, bodies: Sequence[bytes]) -> dict[int, bytes]:
        """The record bodies (JSON objects, extras under ``x``) that held secrets, redacted,
        by position.

        The batch is scanned once for the needles (one part of each entry, plus ``bearer``,
        ``basic`` and ``eyj`` for free text); a record hit anywhere is decoded and walked
        (``redact_body``), and re-encoded only if something was replaced. Counts the values
        replaced in ``redacted``. Never raises: bytes that do not decode are left as they
        are (they were made by orjson, so this does not happen).
        """
        if not self.entries:
            return {}
        hit = set(range(len(bodies))) if self._walk_all else self._scan.hits(bodies)
        out: dict[int, bytes] = {}
        for index in hit:
            try:
                decoded = orjson.loads(bodies[index])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(decoded, dict):
                continue
            count = self.redact_body(decoded)
            if count:
                self.redacted += count
                out[index] = orjson.dumps(decoded)
        return out

    def redact_in_place(self, bodies: list[bytes]) -> None:
        """``redact_records``, with the redacted bodies put in place of the originals."""
        for index, body in self.redact_records(bodies).items():
            bodies[index] = body


def _is_credential(scheme: str, token: str) -> bool:
    """Is ``token`` after ``Bearer``/``Basic`` a credential? Basic: base64 of ``user:pass``;
    Bearer: anything but a short all-lower-case word (prose: "the bearer instrument")."""
    if scheme.lower() == "basic":
        try:
            return b":" in base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            return False
    return not (token.isalpha() and token.islower() and len(token) < 20)


def _replace(value: Any) -> tuple[Any, int]:
    """``REDACTED`` for a value, and 1; a value already redacted (a cut record) or None: 0."""
    if value is None or value == REDACTED:
        return value, 0
    return REDACTED, 1


__all__ = [
    "DEFAULT_REDACT_KEYS", "DEFAULT_REDACT_WORDS", "FREE_TEXT_KEYS", "REDACTED", "Redactor",
    "word_parts",
]
