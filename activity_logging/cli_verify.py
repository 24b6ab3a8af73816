"""``activity-logging verify``: is the stored trail what the producers wrote? And ``keygen``.

Per producer: gaps in the stored ``seq`` (lost or deleted records) and duplicates, as
always; on a chained trail (rows carrying ``mac``) also the chain (``chain.ChainVerifier``):
with the signing key, every row's seal, the links between rows, the head against the
retention cut markers and the tail against the closing checkpoint. Exit 0 when the trail is
whole, 1 when anything is wrong (each problem named with its producer and ``seq``), 3 when
the database cannot be reached (one line).

It reads the primary (``--database-url``): ``ACTIVITY_LOG_READ_DATABASE_URL`` does not move
it, only an explicit ``--read-database-url`` does (a physical streaming replica, to spare the
primary the full scan), and the output then names the database it read.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any, Final

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    database,
    database_options,
    positive_int,
    print_json,
    read_database_option,
    require_store,
    verb,
)
from .cli_render import printable, render_sequence_report
from .urls import redact_url
from .when import parse_when

#: Seconds after which a signed trail that has not ended with its closing checkpoint is
#: reported (``--open-grace``): well past the producers' checkpoint interval (60 s).
DEFAULT_OPEN_GRACE: Final = 900.0
#: The report that holds rows without a producer or a ``seq`` (none of ours has either missing).
UNCHAINED: Final = "(no producer)"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def register(sub: Any) -> None:
    """Add ``verify`` and ``keygen`` to the ``activity-logging`` parser."""
    p = sub.add_parser(
        "verify", help="check the stored trail: lost, deleted, inserted or altered rows",
        description="Per producer_id: gaps and duplicates in seq, and on a signed trail every "
        "row's seal, the links between rows, the head (against retention's cut markers) and the "
        "tail (against the closing checkpoint). Exit 1 when anything is wrong. The key comes "
        "from --signing-key-file, ACTIVITY_LOG_SIGNING_KEY or ACTIVITY_LOG_SIGNING_KEY_FILE; "
        "without one only the links and seq are checked (anyone could forge those).")
    database_options(p)
    read_database_option(p, help_text=(
        "verify this database instead, e.g. a physical streaming replica, to spare the primary "
        "the full scan. Unlike query and export, verify ignores ACTIVITY_LOG_READ_DATABASE_URL "
        "and checks --database-url, the trail of record: a replica holds only what it has "
        "replayed (newer rows go unchecked; when it lags, a trail can look open past "
        "--open-grace), and one that lacks tables (logical replication) reports cuts and "
        "chains as broken"))
    p.add_argument("--producer", help="only this producer_id")
    p.add_argument("--since", help="only rows from this time (ISO 8601 or an age: 30d); the "
                   "chain is checked from the first row in the window")
    p.add_argument("--signing-key-file", metavar="PATH",
                   help="key ring file (one key per line, the first the current one)")
    p.add_argument("--open-grace", type=_seconds, default=DEFAULT_OPEN_GRACE, metavar="SECONDS",
                   help="report a signed trail that has not closed and whose newest row is "
                   f"older than this (default {DEFAULT_OPEN_GRACE:g})")
    p.add_argument("--max-gaps", type=positive_int, default=20,
                   help="gaps (and chain problems) listed per producer")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)

    k = sub.add_parser("keygen", help="print a new signing key",
                       description="Print a new random signing key (256 bits), for "
                       "ACTIVITY_LOG_SIGNING_KEY or a key file. With --id, as id:secret.")
    k.add_argument("--id", dest="key_id", help="the key's id (letters, digits, _ . -)")
    k.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    """Print a new key."""
    from .signing import generate_key, parse_key

    key = generate_key(args.key_id)
    parse_key(key)  # the same checks a handler applies (an id of the wrong shape)
    print(key)
    return EXIT_OK


@verb
async def cmd_verify(args: argparse.Namespace) -> int:
    """Check sequences and chains; exit 1 when any record is missing or any row is wrong."""
    from .chain import ChainReport, ChainVerifier, Problem
    from .chain_store import load_cuts, stream_rows, unchained_rows
    from .crud import activity_log_crud  # lazy: SQLAlchemy
    from .db import read_connection
    from .signing import describe, resolve_keyring

    primary, schema = database(args)
    # Not read_database: ACTIVITY_LOG_READ_DATABASE_URL never moves the evidence check (help)
    url = args.read_database_url or primary
    since = parse_when(args.since) if args.since else None
    keyring = resolve_keyring(key_file=args.signing_key_file)
    require_store(url, option="--read-database-url" if url != primary else
                  "--database-url or DATABASE_URL")
    started = time.monotonic()
    async with read_connection(url, schema=schema) as conn:
        reports = await activity_log_crud.get_sequence_report(
            conn, producer_id=args.producer, since=since)
        cuts = await load_cuts(conn)
        reports = _beyond_cuts(reports, cuts, keyring)
        verifier = ChainVerifier(keyring=keyring, cuts=cuts, now=datetime.now(UTC),
                                 open_grace=args.open_grace, windowed=since is not None,
                                 whole_table=since is None and args.producer is None,
                                 max_problems=args.max_gaps)
        async for row in stream_rows(conn, producer_id=args.producer, since=since):
            verifier.feed(row)
        chains = [c for c in verifier.finish() if c.sealed or c.problem_count or c.checkpoints
                  or keyring is not None]
        if keyring is not None:  # a row no producer wrote: outside every chain
            # the whole table, whatever --since says: the timestamp is the forger's to choose
            count, first = await unchained_rows(conn, limit=args.max_gaps)
            if count and args.producer is None:
                loose = ChainReport(UNCHAINED, rows=count, problem_count=count)
                loose.problems = [Problem("unsigned", UNCHAINED, None, rid,
                                          f"a row without producer_id or seq, dated {ts}")
                                  for rid, ts in first]
                chains.append(loose)
    seconds = time.monotonic() - started
    missing = sum(r.missing for r in reports)
    problems = sum(c.problem_count for c in chains)
    rows = sum(r.rows for r in reports)
    ok = missing == 0 and problems == 0
    if args.json:
        print_json({"ok": ok, "database": redact_url(url), "replica": url != primary,
                    "producers": len(reports), "rows": rows, "missing": missing,
                    "duplicates": sum(r.duplicates for r in reports),
                    "authentication": describe(keyring), "problems": problems,
                    "seconds": round(seconds, 3),
                    "report": [r.to_dict() for r in reports],
                    "chains": [c.to_dict() for c in chains]})
    else:
        print(render_sequence_report(reports, max_gaps=args.max_gaps))
        print(_render_chains(chains, keyring is not None, args.max_gaps))
        print(f"trail: {describe(keyring)}; {rows} rows checked in {seconds:.1f} s")
        if url != primary:
            print(f"read from {redact_url(url)} (--read-database-url): rows it has not yet "
                  "replayed from the primary were not checked")
    return EXIT_OK if ok else EXIT_FAILED


def _beyond_cuts(reports: list[Any], cuts: dict[str, dict[str, Any]], keyring: Any) -> list[Any]:
    """The sequence reports with the gaps a retention cut explains left out: rows at or
    below a producer's cut were deleted by retention (or kept, being newer than the cutoff:
    a clock that went back). A marker whose MAC does not match explains nothing (the chain
    check reports it)."""
    from dataclasses import replace

    from .signing import cut_matches

    out = []
    for report in reports:
        cut = cuts.get(report.producer_id)
        if cut is None or not report.gaps or (keyring is not None and not cut_matches(cut, keyring)):
            out.append(report)
            continue
        through = int(cut["seq"])
        gaps = [(max(start, through + 1), end) for start, end in report.gaps if end > through]
        out.append(replace(report, gaps=gaps, missing=sum(end - start + 1 for start, end in gaps)))
    return out


def _render_chains(chains: list[Any], keyed: bool, max_listed: int) -> str:
    if not chains:
        return ("chain: no signed rows" + ("" if keyed else
                "; pass the signing key to check seals (--signing-key-file)"))
    lines = [f"{'PRODUCER':<40} {'SEALED':>10} {'CHECKPTS':>9} {'END':>7} {'PROBLEMS':>9}"]
    for c in chains:
        lines.append(f"{printable(c.producer_id)[:40]:<40} {c.sealed:>10} {c.checkpoints:>9} "
                     f"{'closed' if c.closed else 'open':>7} {c.problem_count:>9}")
        for p in c.problems[:max_listed]:
            at = f"seq {p.seq}" if p.seq is not None else "-"
            rid = f" id {printable(p.row_id)}" if p.row_id else ""
            lines.append(f"    {p.kind}: {at}{rid}: {printable(p.detail)}")
        if c.problem_count > max_listed:
            lines.append(f"    ... {c.problem_count - max_listed} more")
    bad = [c for c in chains if not c.ok]
    if bad:
        lines.append(f"TAMPERED OR INCOMPLETE: {sum(c.problem_count for c in bad)} problems in "
                     f"{len(bad)} producers' chains")
    else:
        lines.append(f"OK: {len(chains)} chains intact"
                     + ("" if keyed else " (links only: no key given, seals not checked)"))
    return "\n".join(lines)
