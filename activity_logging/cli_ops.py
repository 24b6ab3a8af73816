"""Deprecated alias: the operations verbs now live in ``cli_status``, ``cli_query``,
``cli_maintenance`` and ``cli_verify``, and what they share in ``cli_common``.

The two names other modules imported from here stay importable until those modules import
them from ``cli_common``; nothing in the CLI imports this module.
"""

from __future__ import annotations

from .cli_common import database_error_line, parse_when

__all__ = ["database_error_line", "parse_when"]
