"""The table layouts of ``init-db --layout`` checked in code (ddl_variants): every unique key
holds what Citus or TimescaleDB require of it, the worker's conflict clause matches a unique
key of every layout, the extension calls name columns that exist, and ``--print-sql``
prints them without connecting. On a real server (stubbed extensions): the integration test
of the same name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table, UniqueConstraint

from activity_logging import cli_worker, ddl_variants
from activity_logging.ddl_variants import (
    CITUS,
    CITUS_DISTRIBUTION_COLUMN,
    CITUS_PARTITIONED,
    LAYOUTS,
    MONTHLY,
    PARTITIONED,
    PLAIN,
    TIMESCALEDB,
    extension_steps,
    layout_table,
    print_sql,
    table_statements,
)
from activity_logging.exceptions import ConfigurationError
from activity_logging.schema import cuts_table_name, make_cuts_table
from activity_logging.store_pg import PostgresStore
from tests.cli_run import run

UNREACHABLE = "postgresql://x@127.0.0.1:1/none"


def _unique_keys(table: Table) -> list[tuple[str, ...]]:
    """The column lists of the primary key and of every unique constraint and index."""
    keys = [tuple(c.name for c in table.primary_key.columns)]
    keys += [tuple(c.name for c in con.columns) for con in table.constraints
             if isinstance(con, UniqueConstraint)]
    keys += [tuple(c.name for c in ix.columns) for ix in table.indexes if ix.unique]
    return keys


def _model(layout: str) -> Table:
    return layout_table(MetaData(), layout)


def test_the_cli_copy_of_the_layouts_agrees() -> None:
    assert cli_worker._LAYOUTS == LAYOUTS
    assert set(cli_worker._LAYOUT_NOTES) == set(LAYOUTS) - {PLAIN}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_primary_key_of_each_layout(layout: str) -> None:
    expected = ("id",) if layout in (PLAIN, CITUS) else ("id", "timestamp")
    assert _unique_keys(_model(layout))[0] == expected


@pytest.mark.parametrize("layout", [CITUS, CITUS_PARTITIONED])
def test_citus_every_unique_key_holds_the_distribution_column(layout: str) -> None:
    model = _model(layout)
    assert CITUS_DISTRIBUTION_COLUMN in model.c
    assert not model.c[CITUS_DISTRIBUTION_COLUMN].nullable  # Citus refuses NULL there
    for key in _unique_keys(model):
        assert CITUS_DISTRIBUTION_COLUMN in key, key
    # the cut markers become a reference table: no distribution column needed, one key
    assert _unique_keys(make_cuts_table(MetaData())) == [("producer_id",)]


@pytest.mark.parametrize("layout", [PARTITIONED, CITUS_PARTITIONED, TIMESCALEDB])
def test_every_unique_key_holds_the_time_column(layout: str) -> None:
    for key in _unique_keys(_model(layout)):
        assert "timestamp" in key, key


def test_monthly_layouts_are_range_partitioned_and_others_not() -> None:
    for layout in LAYOUTS:
        by = _model(layout).dialect_options["postgresql"]["partition_by"]
        assert (by == 'RANGE ("timestamp")') == (layout in MONTHLY), layout


def test_the_writers_conflict_clause_matches_a_unique_key_of_every_layout() -> None:
    """The worker's stage insert ends in ON CONFLICT [(cols)] DO NOTHING: without a target it
    absorbs a duplicate of any unique key; with one, the target must be a unique key of the
    layout (an ON CONFLICT (id) on a (id, timestamp) key is an error on the server)."""
    sql = PostgresStore("postgresql://app@db/app")._insert_sql
    match = re.search(r"ON CONFLICT(?: \(([^)]*)\))? DO NOTHING$", sql)
    assert match is not None, sql
    for layout in LAYOUTS:
        keys = _unique_keys(_model(layout))
        if match.group(1) is not None:
            target = tuple(c.strip().strip('"') for c in match.group(1).split(","))
            assert target in keys, (layout, target)
        # the idempotency key is in every unique key: a duplicate id is what conflicts
        assert all("id" in key for key in keys)


def _call(sql: str, function: str) -> list[str]:
    match = re.fullmatch(rf'SELECT "[^"]+"\.{function}\((.*)\)', sql)
    assert match is not None, sql
    return [part.strip() for part in re.split(r",(?![^(]*\))", match.group(1))]


@pytest.mark.parametrize("layout", [CITUS, CITUS_PARTITIONED])
def test_citus_calls_name_the_table_and_an_existing_key_column(layout: str) -> None:
    steps = extension_steps(layout, "my_logs", ext_schema="pg_catalog")
    assert len(steps) == 2
    relation, column = _call(steps[0].sql, "create_distributed_table")
    assert relation == """'"my_logs"'::regclass"""
    assert column == f"'{CITUS_DISTRIBUTION_COLUMN}'"
    assert column.strip("'") in layout_table(MetaData(), layout, "my_logs").c
    assert _call(steps[1].sql, "create_reference_table") == [
        f"""'"{cuts_table_name("my_logs")}"'::regclass"""]
    for step in steps:  # each guarded: init-db runs them once
        assert step.done is not None and '"pg_catalog".pg_dist_partition' in step.done


def test_timescaledb_calls_name_a_not_null_time_column_and_existing_columns() -> None:
    steps = extension_steps(TIMESCALEDB, ext_schema="public")
    create, compress, policy = (step.sql for step in steps)
    relation, dimension, *options = _call(create, "create_hypertable")
    assert relation == """'"activity_logs"'::regclass"""
    by_range = re.fullmatch(r""""public"\.by_range\('(\w+)', INTERVAL '([^']+)'\)""", dimension)
    assert by_range is not None, dimension
    model = _model(TIMESCALEDB)
    column = model.c[by_range.group(1)]
    assert column.name == "timestamp" and not column.nullable
    assert by_range.group(2) == ddl_variants.TIMESCALE_CHUNK_INTERVAL
    # our own indexes, no default one; re-runs are no-ops
    assert options == ["create_default_indexes => FALSE", "if_not_exists => TRUE"]
    settings = dict(re.findall(r"timescaledb\.(\w+) = '([^']*)'", compress))
    assert compress.startswith('ALTER TABLE "activity_logs" SET (timescaledb.compress, ')
    segmentby = [c.strip() for c in settings["compress_segmentby"].split(",")]
    orderby = [c.split()[0].strip('"') for c in settings["compress_orderby"].split(",")]
    assert all(c in model.c for c in segmentby + orderby), (segmentby, orderby)
    assert orderby[0] == "timestamp"
    # TimescaleDB: each column of a unique key in segment-by or order-by (else it warns)
    for key in _unique_keys(model):
        assert set(key) <= set(segmentby + orderby), key
    assert steps[1].done is not None and "compression_enabled" in steps[1].done
    assert _call(policy, "add_compression_policy")[1:] == [
        f"compress_after => INTERVAL '{ddl_variants.TIMESCALE_COMPRESS_AFTER}'",
        "if_not_exists => TRUE"]
    # retention stays with cleanup, which writes the signed cut markers first
    assert not any("retention_policy" in step.sql for step in steps)


def test_plain_and_partitioned_have_no_extension_steps() -> None:
    assert extension_steps(PLAIN) == [] and extension_steps(PARTITIONED) == []


@pytest.mark.parametrize("layout", LAYOUTS)
def test_table_statements_render_the_key_of_the_layout(layout: str) -> None:
    statements = table_statements(layout)
    key = "PRIMARY KEY (id)" if layout in (PLAIN, CITUS) else "PRIMARY KEY (id, timestamp)"
    assert key in statements[0]
    assert ("PARTITION BY RANGE" in statements[0]) == (layout in MONTHLY)
    assert any(s.startswith("CREATE TABLE IF NOT EXISTS activity_log_cuts") for s in statements)
    assert sum(s.startswith("CREATE INDEX") for s in statements) == 5


def test_unknown_layout_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="layout must be one of"):
        extension_steps("mongodb")


@pytest.mark.parametrize("layout", [CITUS, CITUS_PARTITIONED, TIMESCALEDB, PARTITIONED])
def test_print_sql_prints_the_layout_without_connecting(
        layout: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["init-db", "--database-url", UNREACHABLE, "--layout", layout,
                          "--print-sql"], capsys)
    assert code == 0, err
    assert out == print_sql(layout)
    for step in extension_steps(layout):
        assert step.sql + ";" in out.splitlines()
    assert ("create_distributed_table" in out) == (layout in (CITUS, CITUS_PARTITIONED))
    assert ("create_hypertable" in out) == (layout == TIMESCALEDB)


def test_partitioned_print_sql_prints_the_partitioned_table(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["init-db", "--database-url", UNREACHABLE, "--partitioned",
                        "--print-sql"], capsys)
    assert code == 0 and out == print_sql(PARTITIONED)


@pytest.mark.parametrize("argv", [
    ["init-db", "--database-url", UNREACHABLE, "--partitioned", "--layout", "timescaledb"],
    ["init-db", "--database-url", UNREACHABLE, "--partitioned", "--layout", "citus",
     "--print-sql"],
    ["init-db", "--database-url", "sqlite:///x.db", "--layout", "citus"],
    ["init-db", "--database-url", "sqlite:///x.db", "--layout", "timescaledb"],
])
def test_layout_misused_is_exit_2_and_creates_nothing(
        argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x.db").exists()


def test_citus_print_sql_with_roles_leaves_the_append_only_triggers_out(
        capsys: pytest.CaptureFixture[str]) -> None:
    from activity_logging import roles

    code, out, err = run(["init-db", "--database-url", UNREACHABLE, "--layout", "citus",
                          "--roles", "--print-sql"], capsys)
    assert code == 0, err
    assert out == print_sql(CITUS) + roles.sql_file(roles.ROLES_SQL)
    code, out, err = run(["init-db", "--database-url", UNREACHABLE, "--layout", "citus",
                          "--reject-updates", "--print-sql"], capsys)
    assert code == 2 and out == "" and "refuses triggers" in err
    code, out, _ = run(["init-db", "--database-url", UNREACHABLE, "--layout", "timescaledb",
                        "--roles", "--print-sql"], capsys)
    assert code == 0 and out == (print_sql(TIMESCALEDB) + roles.sql_file(roles.ROLES_SQL)
                                 + roles.sql_file(roles.APPEND_ONLY_SQL))


def test_unknown_layout_on_the_command_line_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(["init-db", "--database-url", UNREACHABLE, "--layout", "mongodb"], capsys)
    assert exited.value.code == 2
