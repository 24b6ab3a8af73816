-- activity_logging: make activity_logs append-only (docs/roles.md, "Rejecting updates").
--
-- A row trigger refuses every UPDATE of activity_logs (on a partitioned table it is
-- cloned to every partition, existing and future, so updating a partition directly is
-- refused too), and a statement trigger refuses TRUNCATE of the table. Rows leave only
-- through retention: DELETE of expired rows and dropped (or detached) partitions, which
-- these triggers leave alone, so `activity-logging cleanup` works as before.
--
-- This is a guard against mistakes and against roles that were granted too much, not
-- against the table's owner or a superuser: they can disable triggers. With a signing key,
-- `activity-logging verify` is what finds a change made behind the library's back.
--
--   psql "$DATABASE_URL" -v schema=public -f append_only.sql
--
-- `activity-logging init-db --roles` runs it too (unless --no-reject-updates), and
-- `init-db --reject-updates` alone. Idempotent.

\set ON_ERROR_STOP on
\if :{?schema}
\else
  \set schema ''
\endif
SELECT set_config('activity_logging.schema', :'schema', false);

-- activity_logging: statements --
DO $activity_logging_append_only$
DECLARE
    target text := coalesce(nullif(current_setting('activity_logging.schema', true), ''),
                            current_schema());
    rel regclass;
BEGIN
    rel := to_regclass(format('%I.%I', target, 'activity_logs'));
    IF rel IS NULL THEN
        RAISE EXCEPTION 'table %.activity_logs does not exist: run activity-logging init-db first',
            quote_ident(coalesce(target, '(none)')) USING ERRCODE = 'undefined_table';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('activity_logging:roles'));
    EXECUTE 'CREATE OR REPLACE FUNCTION ' || quote_ident(target)
        || '.activity_logs_reject_change() RETURNS trigger LANGUAGE plpgsql AS '
        || quote_literal($body$
        BEGIN
            RAISE EXCEPTION '% of %.% refused: activity_logs is append-only', TG_OP,
                TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING HINT = 'rows leave only through retention (activity-logging cleanup); '
                             'see docs/roles.md';
        END
        $body$);
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = rel AND tgname = 'activity_logs_reject_update') THEN
        EXECUTE format('CREATE TRIGGER activity_logs_reject_update BEFORE UPDATE ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION %I.activity_logs_reject_change()',
                       rel, target);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = rel AND tgname = 'activity_logs_reject_truncate') THEN
        EXECUTE format('CREATE TRIGGER activity_logs_reject_truncate BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION %I.activity_logs_reject_change()',
                       rel, target);
    END IF;
END
$activity_logging_append_only$;
