"""Least-privilege roles for PostgreSQL: ``activity-logging init-db --roles``.

Three NOLOGIN group roles, named from a prefix (``DEFAULT_ROLE_PREFIX``): the *writer*
(the worker: INSERT and SELECT, TEMPORARY for the COPY stage; no UPDATE, DELETE or
TRUNCATE), the *reader* (SELECT) and the *maintenance* role (the owner of the tables and
their partitions: PostgreSQL lets only the owner create, detach and drop partitions and
VACUUM). People and services log in as their own roles, members of one of these.

The statements are two SQL files shipped with the package (``activity_logging/sql``), which
users can read and run with ``psql`` (``sql_file``); this module runs the same text, the
part of each file below its ``STATEMENTS_MARKER`` line, with the settings bound from
arguments instead of psql variables, so the file and the CLI cannot drift apart:

* ``roles.sql`` creates the roles (an existing one is left as it is) and grants what
  ``docs/roles.md`` lists on the tables of ``ROLE_TABLES`` that exist (the others are
  skipped: run it again once they do); idempotent and convergent.
* ``append_only.sql`` adds triggers refusing UPDATE and TRUNCATE of ``activity_logs``
  (``--reject-updates``, on by default with ``--roles``); retention's DELETE and partition
  drops are untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Final

from .config import DEFAULT_TABLE
from .db import as_permission_error, connect_pg, is_permission_error, quote_identifier
from .dead_letters import DEAD_LETTER_TABLE
from .exceptions import ConfigurationError, PermissionDeniedError
from .rollup import rollup_table_name
from .schema import cuts_table_name

if TYPE_CHECKING:
    import asyncpg

DEFAULT_ROLE_PREFIX: Final = "activity_log_"
#: The retention cut markers' table.
CUTS_TABLE: Final = cuts_table_name(DEFAULT_TABLE)
#: The summaries' daily rollup (written by its SECURITY DEFINER triggers, not by the writer).
ROLLUP_TABLE: Final = rollup_table_name(DEFAULT_TABLE)
#: Every table the roles are granted on, in the order ``roles.sql`` lists them.
ROLE_TABLES: Final = (DEFAULT_TABLE, DEAD_LETTER_TABLE, CUTS_TABLE, ROLLUP_TABLE)
#: The line of each SQL file after which its statements start (above it: psql settings).
STATEMENTS_MARKER: Final = "-- activity_logging: statements --"
ROLES_SQL: Final = "roles.sql"
APPEND_ONLY_SQL: Final = "append_only.sql"
#: The triggers ``append_only.sql`` creates on ``activity_logs``.
REJECT_TRIGGERS: Final = ("activity_logs_reject_update", "activity_logs_reject_truncate")
#: Table privileges PostgreSQL knows, for ``table_privileges``.
TABLE_PRIVILEGES: Final = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES",
                           "TRIGGER")
#: The longest prefix: PostgreSQL names are at most 63 bytes, and "maintenance" is 11.
MAX_PREFIX_LENGTH: Final = 52
_PREFIX: Final = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True, slots=True)
class RoleNames:
    """The three group roles' names for one prefix."""

    writer: str
    reader: str
    maintenance: str

    def all(self) -> tuple[str, str, str]:
        """``(writer, reader, maintenance)``."""
        return self.writer, self.reader, self.maintenance


def role_names(prefix: str = DEFAULT_ROLE_PREFIX) -> RoleNames:
    """The role names for ``prefix`` (``activity_log_writer``, ...).

    Raises ``ConfigurationError`` unless ``prefix`` is lower-case letters, digits and ``_``
    (not starting with a digit), at most ``MAX_PREFIX_LENGTH`` characters: the names are
    used unquoted in the docs' recipes, so they must need no quoting.
    """
    if not _PREFIX.fullmatch(prefix) or len(prefix) > MAX_PREFIX_LENGTH:
        raise ConfigurationError(
            f"--role-prefix must be lower-case letters, digits and _ (not starting with a "
            f"digit, at most {MAX_PREFIX_LENGTH} characters), got {prefix!r}")
    return RoleNames(f"{prefix}writer", f"{prefix}reader", f"{prefix}maintenance")


def sql_file(name: str) -> str:
    """The full text of the shipped SQL file ``name`` (``ROLES_SQL``, ``APPEND_ONLY_SQL``),
    as a user runs it with ``psql -f``."""
    return resources.files("activity_logging").joinpath("sql", name).read_text("utf-8")


def statements(name: str) -> str:
    """The statements of SQL file ``name``: its text below ``STATEMENTS_MARKER`` (no psql
    meta-commands), which reads its settings with ``current_setting``."""
    text = sql_file(name)
    _, marker, body = text.partition(STATEMENTS_MARKER + "\n")
    if not marker:  # a packaging mistake, not the user's
        raise RuntimeError(f"{name} has no {STATEMENTS_MARKER!r} line")
    return body


async def _run(conn: asyncpg.Connection, name: str, settings: dict[str, str]) -> None:
    """Run SQL file ``name``'s statements with ``settings`` (``activity_logging.<key>``),
    in one transaction; the settings are local to it."""
    async with conn.transaction():
        for key, value in settings.items():
            await conn.execute("SELECT set_config($1, $2, true)", f"activity_logging.{key}",
                               value)
        await conn.execute(statements(name))


async def apply_roles(conn: asyncpg.Connection, *, schema: str | None = None,
                      prefix: str = DEFAULT_ROLE_PREFIX) -> RoleNames:
    """Create the group roles and grant them their privileges (``roles.sql``); idempotent.

    ``schema`` holds the tables (default: the connection's ``current_schema()``). Needs a
    superuser, or the owner of the tables, the schema and the database with CREATEROLE
    (made a member of the maintenance role). Raises ``ConfigurationError`` for a bad
    prefix, asyncpg's ``PostgresError`` for what the server refused.
    """
    names = role_names(prefix)
    await _run(conn, ROLES_SQL, {"schema": schema or "", "role_prefix": prefix})
    return names


async def reject_updates(conn: asyncpg.Connection, *, schema: str | None = None) -> None:
    """Install the triggers refusing UPDATE and TRUNCATE of ``activity_logs``
    (``append_only.sql``); idempotent. The table must exist."""
    await _run(conn, APPEND_ONLY_SQL, {"schema": schema or ""})


#: What to do when the server refuses to set the roles up.
SETUP_FIX: Final = ("run `init-db --roles` as a superuser, or as the owner of the tables, the "
                    "schema and the database who has CREATEROLE (docs/roles.md)")


@dataclass(frozen=True, slots=True)
class RolesSetup:
    """What ``setup`` did: the role names (None without ``roles``), the tables found and
    granted on (in ``ROLE_TABLES`` order), and whether the append-only triggers are on."""

    names: RoleNames | None
    tables: tuple[str, ...]
    append_only: bool


async def setup(url: str, *, schema: str | None = None, prefix: str = DEFAULT_ROLE_PREFIX,
                roles: bool = True, append_only: bool = True) -> RolesSetup:
    """Connect to ``url`` and run ``apply_roles`` (``roles``) then ``reject_updates``
    (``append_only``), each idempotent; what ``init-db --roles`` does after the tables.

    Raises ``ConfigurationError`` (bad prefix or URL), ``StoreUnavailableError``
    (unreachable), ``PermissionDeniedError`` when the server refuses this role the work
    (naming it and ``SETUP_FIX``), asyncpg's ``PostgresError`` for anything else refused
    (a missing schema).
    """
    names = role_names(prefix) if roles else None
    conn = await connect_pg(url, schema=schema)
    try:
        role = str(await conn.fetchval("SELECT current_user"))
        try:
            if roles:
                await apply_roles(conn, schema=schema, prefix=prefix)
            if append_only:
                await reject_updates(conn, schema=schema)
        except Exception as exc:
            if is_permission_error(exc):
                raise as_permission_error(exc, role=role, doing="set up the roles",
                                          fix=SETUP_FIX) from exc
            raise
        found = tuple([table for table in ROLE_TABLES if await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", quote_identifier(table))])
    finally:
        await conn.close()
    return RolesSetup(names=names, tables=found, append_only=append_only)


#: What to do when maintenance work is refused.
MAINTENANCE_FIX: Final = ("run it as a member of the maintenance role, the tables' owner "
                          "(GRANT activity_log_maintenance TO <role>; docs/roles.md)")


async def require_owner(conn: asyncpg.Connection, table: str, *, doing: str) -> None:
    """Raise ``PermissionDeniedError`` unless this role owns ``table`` (directly or as a
    member of its owner) or is a superuser.

    For ``VACUUM``, which PostgreSQL does not refuse but *skips* with a warning for a table
    the role does not own: without this check a vacuum by the wrong role reports success
    and does nothing. A missing table passes (the statement itself then says so).
    """
    found = await conn.fetchrow(
        "SELECT current_user AS role, c.relowner::regrole::text AS owner, "
        "pg_has_role(current_user, c.relowner, 'USAGE') "
        "OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS owns "
        "FROM pg_class c WHERE c.oid = to_regclass($1)", quote_identifier(table))
    if found is not None and not found["owns"]:
        raise PermissionDeniedError(
            f"role {found['role']!r} may not {doing}: {table} belongs to {found['owner']} "
            f"and PostgreSQL skips a table its owner did not ask for; {MAINTENANCE_FIX}")


async def table_privileges(conn: asyncpg.Connection, role: str, table: str) -> dict[str, bool]:
    """``{privilege: held}`` for ``role`` on ``table`` (resolved through ``search_path``),
    for every privilege of ``TABLE_PRIVILEGES``, as ``has_table_privilege`` says (inherited
    membership counts, ownership counts)."""
    held: dict[str, bool] = {}
    for privilege in TABLE_PRIVILEGES:
        held[privilege] = bool(await conn.fetchval(
            "SELECT has_table_privilege($1, to_regclass($2), $3)", role, quote_identifier(table),
            privilege))
    return held


__all__ = [
    "APPEND_ONLY_SQL",
    "CUTS_TABLE",
    "DEAD_LETTER_TABLE",
    "DEFAULT_ROLE_PREFIX",
    "MAINTENANCE_FIX",
    "MAX_PREFIX_LENGTH",
    "REJECT_TRIGGERS",
    "ROLES_SQL",
    "ROLE_TABLES",
    "ROLLUP_TABLE",
    "SETUP_FIX",
    "STATEMENTS_MARKER",
    "TABLE_PRIVILEGES",
    "RoleNames",
    "RolesSetup",
    "apply_roles",
    "reject_updates",
    "require_owner",
    "role_names",
    "setup",
    "sql_file",
    "statements",
    "table_privileges",
]
