"""Least privilege without a server: role names, the shipped SQL, error classification, the
one-line messages, and the CLI flags (the PostgreSQL behaviour is tests/integration/test_roles_pg.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from activity_logging import cli_worker, roles
from activity_logging.cli_common import EXIT_PERMISSION_DENIED, EXIT_USAGE
from activity_logging.db import as_permission_error, is_permission_error, permission_cause
from activity_logging.exceptions import (
    ActivityLoggingError,
    ConfigurationError,
    PartitionMissingError,
    PermissionDeniedError,
)
from activity_logging.store_pg import PostgresStore, is_data_error
from tests.cli_run import run


class _ServerError(Exception):
    """What asyncpg raises: an exception with a SQLSTATE and a message."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


def test_role_names_come_from_the_prefix() -> None:
    assert roles.role_names().all() == (
        "activity_log_writer", "activity_log_reader", "activity_log_maintenance")
    assert roles.role_names("audit_").writer == "audit_writer"


@pytest.mark.parametrize("prefix", ["", "Audit_", "1x_", "a-b_", 'x"; DROP ROLE y; --',
                                    "a" * (roles.MAX_PREFIX_LENGTH + 1)])
def test_a_prefix_that_would_need_quoting_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="role-prefix"):
        roles.role_names(prefix)


@pytest.mark.parametrize("name", [roles.ROLES_SQL, roles.APPEND_ONLY_SQL])
def test_the_statements_are_the_file_below_its_marker_without_psql_commands(name: str) -> None:
    text = roles.sql_file(name)
    body = roles.statements(name)
    assert text.endswith(body) and roles.STATEMENTS_MARKER in text
    assert not [line for line in body.splitlines() if line.lstrip().startswith("\\")]
    assert ":'" not in body  # no psql variables: the CLI binds settings instead


def test_roles_sql_grants_on_every_role_table_and_agrees_with_the_constants() -> None:
    body = roles.statements(roles.ROLES_SQL)
    listed = re.search(r"FOREACH tbl IN ARRAY ARRAY\[(.*?)\]", body, re.S)
    assert listed is not None
    assert tuple(re.findall(r"'(\w+)'", listed.group(1))) == roles.ROLE_TABLES
    assert f"'{roles.DEFAULT_ROLE_PREFIX}'" in body
    for grant in ("UPDATE", "DELETE", "TRUNCATE"):  # never granted to writer or reader
        assert not re.search(rf"GRANT [A-Z, ]*{grant}", body)
    append_only = roles.statements(roles.APPEND_ONLY_SQL)
    assert all(trigger in append_only for trigger in roles.REJECT_TRIGGERS)


def test_cli_copy_of_the_default_prefix_agrees() -> None:
    assert cli_worker._ROLE_PREFIX == roles.DEFAULT_ROLE_PREFIX


@pytest.mark.parametrize("sqlstate", ["42501", "28000", "28P01"])
def test_refusals_of_the_role_are_permission_errors_never_data_errors(sqlstate: str) -> None:
    exc = _ServerError(sqlstate, "permission denied for table activity_logs")
    assert is_permission_error(exc)
    assert not is_data_error(exc)
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = exc
    assert permission_cause(wrapped) is exc


@pytest.mark.parametrize("sqlstate", ["42P01", "22001", "23502", "57P01", "42703"])
def test_other_errors_are_not_permission_errors(sqlstate: str) -> None:
    assert not is_permission_error(_ServerError(sqlstate, "x"))


def test_the_library_errors_are_not_the_rows_fault() -> None:
    assert issubclass(PermissionDeniedError, ActivityLoggingError)
    assert issubclass(PartitionMissingError, ActivityLoggingError)
    assert not is_data_error(PermissionDeniedError("x"))
    assert not is_data_error(PartitionMissingError("x", months=[(2026, 1)],
                                                   partitions=["activity_logs_p202601"]))


def test_a_permission_error_is_one_line_with_the_server_message_and_the_fix() -> None:
    exc = _ServerError("42501", "permission denied for table activity_logs\nDETAIL: more")
    error = as_permission_error(exc, role="app", doing="insert into activity_logs",
                                fix="GRANT activity_log_writer TO app")
    assert str(error) == ("role 'app' may not insert into activity_logs: permission denied "
                          "for table activity_logs; GRANT activity_log_writer TO app")


@pytest.mark.parametrize(("held", "named"), [
    ({"can_insert": False}, ["INSERT on activity_logs"]),
    ({"can_select": False}, ["SELECT on activity_logs"]),
    ({"can_temp": False}, ["TEMPORARY on database app"]),
    ({"can_insert": False, "can_temp": False}, ["INSERT on", "TEMPORARY on"]),
])
def test_the_store_names_every_missing_privilege(held: dict[str, bool], named: list[str]) -> None:
    store = PostgresStore("postgresql://app@db/app")
    store.role = "app"
    found: dict[str, Any] = {"database": "app", "can_insert": True, "can_select": True,
                             "can_temp": True, **held}
    with pytest.raises(PermissionDeniedError) as caught:
        store._require_privileges(found)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("role 'app' lacks ")
    assert all(part in message for part in named)
    assert "GRANT activity_log_writer" in message
    missing = [k for k, v in found.items() if k.startswith("can_") and not v]
    assert message.count(" on ") == len(missing)


def test_all_privileges_held_passes() -> None:
    store = PostgresStore("postgresql://app@db/app")
    store._require_privileges({"database": "app", "can_insert": True, "can_select": True,
                               "can_temp": True})


def test_print_sql_prints_the_shipped_files_without_connecting(
        capsys: pytest.CaptureFixture[str]) -> None:
    # A URL nothing listens on: --print-sql must not connect.
    code, out, err = run(["init-db", "--database-url", "postgresql://x@127.0.0.1:1/none",
                          "--roles", "--print-sql"], capsys)
    assert code == 0, err
    assert out == roles.sql_file(roles.ROLES_SQL) + roles.sql_file(roles.APPEND_ONLY_SQL)
    code, out, _ = run(["init-db", "--database-url", "postgresql://x@127.0.0.1:1/none",
                        "--roles", "--no-reject-updates", "--print-sql"], capsys)
    assert code == 0 and out == roles.sql_file(roles.ROLES_SQL)


@pytest.mark.parametrize("argv", [
    ["init-db", "--database-url", "sqlite:///x.db", "--roles"],
    ["init-db", "--database-url", "sqlite:///x.db", "--reject-updates"],
    ["init-db", "--database-url", "postgresql://x@127.0.0.1:1/none", "--roles",
     "--role-prefix", "Bad-"],
    ["init-db", "--database-url", "postgresql://x@127.0.0.1:1/none", "--print-sql"],
    ["partitions", "--database-url", "sqlite:///x.db"],
])
def test_role_flags_misused_are_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str],
                                       tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == EXIT_USAGE, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x.db").exists()


def test_partitions_month_flag_takes_year_month(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["partitions", "--database-url", "postgresql://x@127.0.0.1:1/none",
             "--month", "2026-13"], capsys)
    assert "YYYY-MM" in capsys.readouterr().err


def test_exit_code_for_permission_errors_is_distinct() -> None:
    from activity_logging import cli_common

    codes = [cli_common.EXIT_OK, cli_common.EXIT_FAILED, cli_common.EXIT_USAGE,
             cli_common.EXIT_UNAVAILABLE]
    assert EXIT_PERMISSION_DENIED not in codes
