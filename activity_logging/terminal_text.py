"""Text from outside made safe to show on a terminal: ``printable`` for a line of text,
``json_printable`` for JSON.

Stored rows, Redis names, heartbeats and server replies are written by whoever can write to
the stores; shown raw, an ESC or C1 sequence can recolour, retitle or clear the terminal,
move the cursor to overwrite what came before, or (OSC 52) set the clipboard, and a bidi
override can make ``txet`` read as ``text``. Pure and dependency-free: the CLI verbs, the
status report and the shared CLI helpers all import it.
"""

from __future__ import annotations

import re
from typing import Final

#: What a terminal may act on or hide and a JSON encoder (orjson, ``json`` with
#: ``ensure_ascii=False``) leaves raw in a string: DEL, C1 (CSI, OSC, NEL...), the
#: bidirectional embeddings, overrides, isolates and marks (U+061C, U+200E/F,
#: U+202A-U+202E, U+2066-U+2069), the line and paragraph separators (U+2028/9) and the
#: invisible format characters with no part in writing a language (U+200B, U+2060-U+2064,
#: U+FEFF, U+FFF9-U+FFFB). ZWNJ/ZWJ (U+200C/D) stay: Persian, Indic scripts and emoji
#: sequences need them; so do the tag characters of flag emoji.
_RAW_IN_JSON: Final = (
    "\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb"
)
#: ``printable`` escapes those, C0 (TAB, LF and CR included) and lone surrogates (which
#: would make ``print`` raise).
_UNSAFE: Final = re.compile(f"[\x00-\x1f{_RAW_IN_JSON}\ud800-\udfff]")
#: ``json_printable`` only those: JSON escapes C0 itself (and the newlines of indented
#: output are structure), and refuses lone surrogates.
_UNSAFE_IN_JSON: Final = re.compile(f"[{_RAW_IN_JSON}]")

_SHORT: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` safe to print on one terminal line: every character ``_UNSAFE`` names is
    shown as a visible escape (ESC as ``\\x1b``, LF as ``\\n``, RLO as ``\\u202e``); all
    else, non-ASCII letters and emoji included, is left as it is.

    For showing stored or remote values (rows, Redis names, heartbeats) to a person: a
    value cannot move the cursor, recolour or retitle the terminal, ring the bell, hide
    itself or reverse the text around it. A backslash is not doubled, so a literal
    ``\\x1b`` in a value reads like an escaped one; the exact value is in ``--json``.
    Pure, never raises; a clean ASCII string is returned as is after one C-speed check.
    """
    if text.isascii() and text.isprintable():
        return text
    return _UNSAFE.sub(_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def json_printable(text: str) -> str:
    """JSON text (from orjson) with the characters it leaves raw that a terminal acts on or
    hides (DEL, C1, bidi controls, separators, invisible formats: ``_UNSAFE_IN_JSON``)
    written as ``\\uXXXX`` escapes. The same JSON value, parsed: those characters can only
    stand inside strings, where a ``\\u`` escape means the character itself. Pure, never
    raises; ASCII text without DEL (the one ASCII character JSON leaves raw that a terminal
    acts on) is returned as is."""
    if text.isascii() and "\x7f" not in text:
        return text
    return _UNSAFE_IN_JSON.sub(_json_escape, text)


__all__ = ["json_printable", "printable"]
