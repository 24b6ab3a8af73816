"""Authenticated entries and the keyed, per-producer chain (docs/security.md, "Evidence").

With a signing key, a producer's trail is evidence. Three pieces, all HMAC-SHA256 under a
key that only producers, workers and auditors hold:

* **The entry tag.** Each stream entry carries ``k`` (the key's id), ``pm`` (the tag of the
  producer's previous entry, empty for its first) and ``t``: one HMAC over the entry's
  header (version, count, producer, host, pid), ``pm`` and the exact payload bytes. A
  worker with the key refuses an entry whose tag does not check, or that has none: whoever
  can write to Redis or to the spool can neither forge an entry nor edit a real one.
  One HMAC per entry, not per record, because the caller pays for the listener's work
  (docs/performance.md).
* **The chain.** Every record gets a link (``mac``) and its predecessor's link
  (``prev_mac``), derived from the tags (``EntryAuth.link``): the last record of an entry
  links as the entry's tag, the others as ``SHA-256(tag || position)``, so the first record
  of the next entry names the last of this one. Links are in ``seq`` order per producer.
* **The row seal.** ``row_mac`` is an HMAC over the canonical encoding of the stored row
  (every column, the links and the key id included; ``canonical_row``). Computed where
  the row is built (the worker, or the handler's direct mode) and recomputed by
  ``verify`` from what the table holds: an UPDATE, an INSERT or a DELETE done behind the
  library's back shows as a seal that does not match, a row without one, a link that does
  not follow, or a ``seq`` gap.

Keys: a key is a secret string of at least ``MIN_KEY_CHARS`` characters, optionally
written ``id:secret``; without an id it is named by ``key_id_of``. A key ring is one or
more keys separated by whitespace or commas (a key file: one per line, ``#`` comments);
the first signs and seals, all are accepted when checking, which is how keys rotate.
Pure except for ``KeyRing.from_file``/``resolve_keyring`` (read a file, the environment).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import operator
import os
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import orjson

from .entry_limits import field
from .exceptions import ActivityLoggingError, ConfigurationError

#: The environment variable holding the key ring (the first key signs).
KEY_ENV: Final = "ACTIVITY_LOG_SIGNING_KEY"
#: The environment variable naming a key file (one key per line), as ``--signing-key-file``.
KEY_FILE_ENV: Final = "ACTIVITY_LOG_SIGNING_KEY_FILE"
MIN_KEY_CHARS: Final = 16
#: The columns the chain adds to ``activity_logs`` (``schema.make_table``).
SIGNING_COLUMNS: Final = ("key_id", "prev_mac", "mac", "row_mac")
#: ``activity_type`` of a producer's checkpoint record.
CHECKPOINT_TYPE: Final = "activity_log.checkpoint"

_KEY_ID_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_DOMAIN_ENTRY: Final = b"activity_logging/entry/1\x00"
_DOMAIN_ROW: Final = b"activity_logging/row/1\x00"
_DOMAIN_CUT: Final = b"activity_logging/cut/1\x00"
#: 19 digits or more: an integer orjson may not read exactly (beyond 64 bits).
_LONG_INT: Final = re.compile(rb"[0-9]{19}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: In orjson's output a float always has a '.' or an exponent right after a digit; a JSON
#: value without this pattern holds no float (strings may match too: then the walk runs).
_MAYBE_FLOAT: Final = re.compile(rb"[0-9][.eE]")


class SignatureError(ActivityLoggingError):
    """An entry whose tag does not check, that has none when a key is required, or that
    names a key this ring does not hold."""


class SigningKey:
    """One key: its id (stored in every row it seals) and its secret (never printed).

    ``mac`` is HMAC-SHA256 (RFC 2104) computed from the key's two padded SHA-256 states,
    made once: a third of what ``hmac.digest`` costs per call, which the worker pays per row.
    """

    __slots__ = ("_inner", "_outer", "key_id", "secret")

    def __init__(self, key_id: str, secret: bytes) -> None:
        self.key_id = key_id
        self.secret = secret
        block = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
        block = block.ljust(64, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SigningKey) and other.key_id == self.key_id
                and hmac.compare_digest(other.secret, self.secret))

    def __hash__(self) -> int:
        return hash(self.key_id)

    def mac(self, *parts: bytes) -> bytes:
        """HMAC-SHA256 of the concatenated ``parts``."""
        inner = self._inner.copy()
        for part in parts:
            inner.update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def key_id_of(secret: str) -> str:
    """The id of a key written without one: 12 hex digits of an HMAC of a fixed label,
    so the id names the key without telling anything about it."""
    return hmac.new(secret.encode(), b"activity_logging key id", hashlib.sha256).hexdigest()[:12]


def parse_key(text: str) -> SigningKey:
    """``secret`` or ``id:secret`` as a ``SigningKey``; ``ConfigurationError`` (never showing
    the secret) for a short secret or a bad id."""
    key_id, sep, secret = text.partition(":")
    if not sep:
        key_id, secret = "", text
    if len(secret) < MIN_KEY_CHARS:
        raise ConfigurationError(
            f"signing key{f' {key_id!r}' if key_id else ''} is too short: at least "
            f"{MIN_KEY_CHARS} characters (`activity-logging keygen` makes one)")
    if not key_id:
        key_id = key_id_of(secret)
    elif not _KEY_ID_RE.fullmatch(key_id):
        raise ConfigurationError(
            "signing key id must be 1-32 characters of letters, digits, '_', '.', '-'")
    return SigningKey(key_id, secret.encode())


def generate_key(key_id: str | None = None) -> str:
    """A new random key (256 bits, URL-safe), ``id:secret`` when ``key_id`` is given."""
    secret = secrets.token_urlsafe(32)
    return f"{key_id}:{secret}" if key_id else secret


class KeyRing:
    """Keys by id; ``current`` (the first) signs and seals, every key checks."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise ConfigurationError("a signing key ring needs at least one key")
        self.current = keys[0]
        self._keys: dict[str, SigningKey] = {}
        for key in keys:
            existing = self._keys.setdefault(key.key_id, key)
            if existing.secret != key.secret:
                raise ConfigurationError(f"two different signing keys have the id {key.key_id!r}")

    def __repr__(self) -> str:
        return f"KeyRing({', '.join(self._keys)})"

    def get(self, key_id: str) -> SigningKey | None:
        """The key named ``key_id``, or None."""
        return self._keys.get(key_id)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key's id, the signing key's first."""
        return tuple(self._keys)

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """Keys separated by whitespace or commas; lines starting with ``#`` are comments."""
        lines = (line for line in text.splitlines() if not line.lstrip().startswith("#"))
        words = [w for line in lines for w in re.split(r"[\s,]+", line) if w]
        if not words:
            raise ConfigurationError("no signing key given (an empty key or key file)")
        return cls([parse_key(w) for w in words])

    @classmethod
    def from_file(cls, path: str) -> KeyRing:
        """The key ring in ``path``; ``ConfigurationError`` naming the file when unreadable."""
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the signing key file {path!r}: {exc.strerror}") from None
        return cls.parse(text)


def resolve_keyring(signing_key: str | None = None, key_file: str | None = None,
                    environ: Mapping[str, str] | None = None) -> KeyRing | None:
    """The key ring from an argument (a key ring string, or a file), else from
    ``ACTIVITY_LOG_SIGNING_KEY`` / ``ACTIVITY_LOG_SIGNING_KEY_FILE``; None when none is set
    (the trail is then unauthenticated). ``signing_key=""`` turns signing off explicitly."""
    env = os.environ if environ is None else environ
    if signing_key is not None:
        return KeyRing.parse(signing_key) if signing_key else None
    if key_file:
        return KeyRing.from_file(key_file)
    if env.get(KEY_ENV):
        return KeyRing.parse(env[KEY_ENV])
    if env.get(KEY_FILE_ENV):
        return KeyRing.from_file(env[KEY_FILE_ENV])
    return None


def encode_mac(raw: bytes) -> str:
    """A MAC as stored: 64 lower-case hex digits (``""`` for none, a producer's first link)."""
    return raw.hex()


def decode_mac(text: str | bytes) -> bytes:
    """The bytes of a stored MAC (``b""`` for ``""``); ``ValueError`` when it is not one."""
    raw = text.decode("ascii") if isinstance(text, bytes) else text
    if raw == "":
        return b""
    if len(raw) != 64:
        raise ValueError("not a 32-byte MAC")
    return bytes.fromhex(raw)


def _framed(*fields: bytes) -> bytes:
    """Length-prefixed fields: no two different field lists frame to the same bytes."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def _entry_header(version: bytes, n: bytes, producer: bytes, host: bytes, pid: bytes,
                  key_id: bytes, prev: bytes) -> bytes:
    return _DOMAIN_ENTRY + _framed(version, n, producer, host, pid, key_id, prev)


class EntrySigner:
    """The producer's side: tags each entry in the order they are made, chaining each to
    the one before. One listener thread uses it; not thread-safe."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.prev = b""  # no entry before the first

    def sign(self, header: Mapping[str, str], payload: bytes) -> dict[str, bytes | str]:
        """The fields ``k``, ``pm``, ``t`` for an entry with ``header`` (``v``, ``n``, ``p``,
        ``h``, ``pid``) and ``payload`` (its ``d``); the next entry chains to this one."""
        kid = self.key.key_id.encode()
        prev = self.prev
        head = _entry_header(header["v"].encode(), header["n"].encode(), header["p"].encode(),
                             header["h"].encode(), header["pid"].encode(), kid, prev)
        tag = self.key.mac(head, payload)
        self.prev = tag
        return {"k": self.key.key_id, "pm": encode_mac(prev), "t": encode_mac(tag)}


class EntryAuth:
    """An entry's place in its producer's chain: the id of the key that signed it, its tag,
    its predecessor's tag, its record count, and whether the tag was checked (a worker
    without a key ring keeps the links unchecked)."""

    __slots__ = ("_links", "checked", "key_id", "n", "prev", "tag")

    def __init__(self, key_id: str, tag: bytes, prev: bytes, n: int, checked: bool) -> None:
        self.key_id = key_id
        self.tag = tag
        self.prev = prev
        self.n = n
        self.checked = checked
        self._links: list[str] | None = None

    def link(self, position: int) -> bytes:
        """The link of the record at ``position``: the tag for the last, a hash of the tag
        and the position for the others."""
        if position == self.n - 1:
            return self.tag
        return hashlib.sha256(self.tag + position.to_bytes(4, "big")).digest()

    def prev_link(self, position: int) -> bytes:
        """The link of the record before the one at ``position``."""
        return self.prev if position == 0 else self.link(position - 1)

    def links(self) -> list[str]:
        """Every record's stored link, ``[prev, link(0), ..., link(n-1)]``, made once: the
        stored ``prev_mac`` of record ``i`` is item ``i`` and its ``mac`` item ``i + 1``."""
        if self._links is None:
            self._links = [encode_mac(self.prev)] + [encode_mac(self.link(i)) for i in range(self.n)]
        return self._links


def _field(fields: Mapping[Any, Any], key: str) -> bytes | None:
    """An entry field as bytes (``entry_limits.field``: str or bytes keys)."""
    value = field(fields, key)
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else bytes(value)


def check_entry(fields: Mapping[Any, Any], keyring: KeyRing | None) -> EntryAuth | None:
    """The chain position of a decoded-to-be entry, its tag checked against ``keyring``.

    Returns None for an unsigned entry when there is no key ring (stored unauthenticated).
    With a key ring, raises ``SignatureError`` for an entry without a tag, with a key id
    the ring does not hold, or whose tag does not match its bytes. Without one, a signed
    entry's links are kept (``checked`` False) so a later ``verify`` can still follow them.
    """
    tag_text = _field(fields, "t")
    if tag_text is None:
        if keyring is not None:
            raise SignatureError("entry is not signed, and this worker requires signed entries")
        return None
    try:
        tag = decode_mac(tag_text)
        prev = decode_mac(_field(fields, "pm") or b"")
        kid = (_field(fields, "k") or b"").decode()
        n = int(_field(fields, "n") or b"0")
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(f"entry has a malformed signature field: {exc}") from None
    if len(tag) != 32:
        raise SignatureError("entry has an empty tag")
    if keyring is None:
        return EntryAuth(kid, tag, prev, n, checked=False)
    key = keyring.get(kid)
    if key is None:
        raise SignatureError(f"entry is signed with key {kid[:32]!r}, which this key ring does not hold")
    head = _entry_header(_field(fields, "v") or b"", _field(fields, "n") or b"",
                         _field(fields, "p") or b"", _field(fields, "h") or b"",
                         _field(fields, "pid") or b"", kid.encode(), prev)
    expected = key.mac(head, _field(fields, "d") or b"")
    if not hmac.compare_digest(expected, tag):
        raise SignatureError("entry tag does not match its content (forged or altered)")
    return EntryAuth(kid, tag, prev, n, checked=True)


# --- the row seal ------------------------------------------------------------------------


def _number_text(value: Decimal) -> str:
    """A number's one text: an integer's digits, else the normalised decimal (``1.5E-7``)."""
    if value == value.to_integral_value():
        return str(int(value))
    return str(value.normalize())


def _exact(value: Any) -> Any:
    """``value`` with every number replaced by its exact text (``_number_text``), as an
    ``orjson.Fragment``: a float by the decimal its shortest form names (what the writer
    printed and jsonb stored), a ``Decimal`` (what ``verify`` parses jsonb numbers into)
    as it is, an integer of any size by its digits."""
    kind = type(value)
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)  # never JSON: the snapshot sanitised it; kept distinct anyway
        return orjson.Fragment(_number_text(Decimal(repr(value))).encode())
    if kind is Decimal:
        return orjson.Fragment(_number_text(value).encode())
    if kind is int:
        return orjson.Fragment(str(value).encode())
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """``value`` (decoded JSON) in the one form both the writer and ``verify`` compute:
    keys sorted, every number by its exact value (``1e16``, ``1.0E16`` and the
    ``10000000000000000`` jsonb writes back are one number; ``0.1`` and
    ``0.1000000000000000000001`` are two). Integers are already exact in orjson's output:
    only a value holding a float, a ``Decimal`` or an integer beyond 64 bits is walked."""
    if value is None:
        return b"null"
    try:
        encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a Decimal, or an integer beyond 64 bits
        return orjson.dumps(_exact(value), option=orjson.OPT_SORT_KEYS)
    if _MAYBE_FLOAT.search(encoded) is None:
        return encoded
    return orjson.dumps(_exact(value), option=orjson.OPT_SORT_KEYS)


def loads_exact(text: str | bytes) -> Any:
    """Decode stored JSON (jsonb's text, SQLite's) keeping every number exact: floats as
    ``Decimal``, long integers whole (orjson would round both). The fast path, orjson,
    when no number can need it."""
    raw = text.encode() if isinstance(text, str) else text
    if _MAYBE_FLOAT.search(raw) is None and _LONG_INT.search(raw) is None:
        return orjson.loads(raw)
    return json.loads(raw, parse_float=Decimal)


def _ts_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@functools.lru_cache(maxsize=4096)
def _ip_text(text: str) -> str:
    """One form of an address or a network: ``10.0.0.1`` and ``10.0.0.1/32`` alike, but
    ``10.0.0.1/8`` (an inet with a prefix) is not the address."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        return text
    if iface.network.prefixlen == iface.max_prefixlen:
        return str(iface.ip)
    return str(iface)


def _ip(value: Any) -> str | None:
    """An address in one form (PostgreSQL's inet and Python's text differ for some)."""
    if value is None or value == "":
        return None
    return _ip_text(str(value))


#: The columns the seal covers, in order (every column but the seal itself).
SEALED_COLUMNS: Final = (
    "id", "timestamp", "activity_type", "description", "severity", "level", "actor_type",
    "actor_id", "target_type", "target_id", "changes", "metadata", "ip_address", "user_agent",
    "request_id", "http_method", "path", "logger", "hostname", "process_id", "producer_id",
    "seq", "key_id", "prev_mac", "mac",
)
_HEAD: Final = operator.itemgetter(*SEALED_COLUMNS[2:10])
_TAIL: Final = operator.itemgetter(*SEALED_COLUMNS[13:])


def canonical_row(row: Mapping[str, Any]) -> bytes:
    """The bytes the row seal covers: every sealed column, as the writer built it or as a
    store reads it back (uuid or text id, aware datetime, jsonb as decoded JSON, inet as an
    address object or text) encode alike. One orjson call over a tuple: the worker pays
    this per row."""
    rid = row["id"]
    if type(rid) is not uuid.UUID:
        rid = uuid.UUID(str(rid))
    ts = row["timestamp"]
    ts_us = _ts_us(ts) if isinstance(ts, datetime) else int(ts)
    return orjson.dumps((
        rid, ts_us, *_HEAD(row),
        orjson.Fragment(canonical_json(row["changes"])),
        orjson.Fragment(canonical_json(row["metadata"])),
        _ip(row["ip_address"]), *_TAIL(row),
    ))


def seal(row: dict[str, Any], key: SigningKey | None, auth: EntryAuth, position: int) -> None:
    """Put the chain columns on ``row`` (the record at ``position`` of the entry ``auth``
    describes) and, with ``key``, its seal; without a key the seal stays empty."""
    links = auth.links()
    row["key_id"] = auth.key_id if key is None else key.key_id
    row["prev_mac"] = links[position]
    row["mac"] = links[position + 1]
    row["row_mac"] = None if key is None else key.mac(_DOMAIN_ROW, canonical_row(row)).hex()


def row_seal_matches(row: Mapping[str, Any], keyring: KeyRing) -> bool | None:
    """Whether a stored row's seal is right; None when its key is not in ``keyring``."""
    key = keyring.get(row.get("key_id") or "")
    if key is None:
        return None
    stored = row.get("row_mac")
    if not stored:
        return False
    expected = key.mac(_DOMAIN_ROW, canonical_row(row)).hex()
    return hmac.compare_digest(expected, str(stored))


# --- retention cut markers ---------------------------------------------------------------

#: The fields of a cut marker, in the order its MAC covers them.
CUT_FIELDS: Final = ("producer_id", "seq", "link", "closed", "cutoff", "cut_at", "key_id")


def cut_mac(key: SigningKey, marker: Mapping[str, Any]) -> str:
    """The MAC of a retention cut marker: rows of ``producer_id`` up to ``seq`` (whose link
    was ``link``; ``closed`` when that row was the producer's closing checkpoint) were deleted
    by retention at ``cut_at`` for ``cutoff``."""
    values = [marker["producer_id"], int(marker["seq"]), marker["link"],
              bool(marker.get("closed")), _ts_us(marker["cutoff"]), _ts_us(marker["cut_at"]),
              marker["key_id"]]
    return encode_mac(key.mac(_DOMAIN_CUT, orjson.dumps(values)))


def cut_matches(marker: Mapping[str, Any], keyring: KeyRing) -> bool | None:
    """Whether a stored cut marker's MAC is right; None when its key is not in ``keyring``."""
    key = keyring.get(marker.get("key_id") or "")
    if key is None:
        return None
    return hmac.compare_digest(cut_mac(key, marker), str(marker.get("mac") or ""))


def describe(keyring: KeyRing | None) -> str:
    """One line for status and logs: which keys, never their secrets."""
    if keyring is None:
        return "unauthenticated (no signing key)"
    return f"signed with key {keyring.current.key_id!r} ({len(keyring.key_ids)} accepted)"

