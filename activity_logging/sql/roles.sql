-- activity_logging: least-privilege roles for the audit trail (docs/roles.md).
--
-- Creates three NOLOGIN group roles, named from a prefix (default activity_log_):
--
--   <prefix>writer       the worker (and the handler's direct mode): INSERT and SELECT on
--                        activity_logs and activity_log_dead_letters, SELECT on
--                        activity_log_cuts, TEMPORARY on the database (the COPY stage),
--                        USAGE on the schema and on the tables' own sequences.
--                        No UPDATE, no DELETE, no TRUNCATE.
--   <prefix>reader       query, export, verify, status, the viewer: SELECT on the four tables.
--   <prefix>maintenance  init-db, partitions, cleanup, vacuum, the scheduler: OWNER of the
--                        four tables (with activity_log_daily, the summaries' rollup,
--                        which its SECURITY DEFINER triggers keep) and of every partition (PostgreSQL lets only the owner
--                        create, detach or drop partitions and VACUUM a table), CREATE on
--                        the schema.
--
-- People and services log in as their own LOGIN roles, members of a group role:
--
--   CREATE ROLE app_worker LOGIN PASSWORD '...' IN ROLE activity_log_writer;
--   CREATE ROLE auditor    LOGIN PASSWORD '...' IN ROLE activity_log_reader;
--   CREATE ROLE ops        LOGIN PASSWORD '...' IN ROLE activity_log_maintenance;
--
-- Run it as a superuser, or as the role that owns the tables and the schema and has
-- CREATEROLE (that role is then made a member of <prefix>maintenance, so it still manages
-- the tables it hands over). Only the database's owner can grant CONNECT and TEMPORARY on
-- it; for another role those grants are skipped while PUBLIC holds them (the default):
--
--   psql "$DATABASE_URL" -v schema=public -v role_prefix=activity_log_ -f roles.sql
--
-- `activity-logging init-db --roles [--schema S] [--role-prefix P]` runs the same
-- statement (everything below the "statements" line), with the settings from its flags.
-- Idempotent: run it again after a table is added (init-db creates activity_logs,
-- activity_log_dead_letters, activity_log_cuts and activity_log_daily) and it grants what is there now; tables
-- that do not exist yet are skipped, never an error. Each run converges: the writer and
-- the reader end up with exactly the privileges above on each table (anything else
-- granted to them directly on these tables is revoked).

\set ON_ERROR_STOP on
\if :{?schema}
\else
  \set schema ''
\endif
\if :{?role_prefix}
\else
  \set role_prefix activity_log_
\endif
SELECT set_config('activity_logging.schema', :'schema', false),
       set_config('activity_logging.role_prefix', :'role_prefix', false);

-- activity_logging: statements --
DO $activity_logging_roles$
DECLARE
    prefix text := coalesce(nullif(current_setting('activity_logging.role_prefix', true), ''),
                            'activity_log_');
    target text := coalesce(nullif(current_setting('activity_logging.schema', true), ''),
                            current_schema());
    writer text := prefix || 'writer';
    reader text := prefix || 'reader';
    maint text := prefix || 'maintenance';
    role_name text;
    tbl text;
    rel regclass;
    child regclass;
    seq regclass;
    fn regprocedure;
BEGIN
    IF prefix !~ '^[a-z_][a-z0-9_]*$' OR length(prefix) > 52 THEN
        RAISE EXCEPTION 'role prefix % must be lower-case letters, digits and _ (at most 52)',
            quote_literal(prefix) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF target IS NULL OR NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = target) THEN
        RAISE EXCEPTION 'schema % does not exist', coalesce(quote_ident(target), '(none)')
            USING ERRCODE = 'invalid_schema_name';
    END IF;
    -- Two runs at once (two deploys) wait for each other instead of racing.
    PERFORM pg_advisory_xact_lock(hashtext('activity_logging:roles'));

    -- 1. The group roles. An existing role is left as it is.
    FOREACH role_name IN ARRAY ARRAY[writer, reader, maint] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object THEN
                NULL;  -- created meanwhile by a run in another database
            END;
        END IF;
    END LOOP;
    -- Handing a table to the maintenance role takes membership in it (unless superuser);
    -- it also lets the role running this keep managing the tables.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
            AND NOT pg_has_role(current_user, maint, 'MEMBER') THEN
        EXECUTE format('GRANT %I TO %I', maint, current_user);
    END IF;

    -- 2. The database and the schema. Only the database's owner may grant on it: for
    -- another role these grants are skipped when the roles hold the privilege already
    -- (PostgreSQL gives CONNECT and TEMPORARY to PUBLIC by default), else it is an error.
    BEGIN
        EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I, %I',
                       current_database(), writer, maint);
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), reader);
    EXCEPTION WHEN insufficient_privilege THEN
        -- (one privilege per call: a list would mean "any of them")
        IF NOT (has_database_privilege(writer, current_database(), 'CONNECT')
                AND has_database_privilege(writer, current_database(), 'TEMPORARY')
                AND has_database_privilege(maint, current_database(), 'CONNECT')
                AND has_database_privilege(maint, current_database(), 'TEMPORARY')
                AND has_database_privilege(reader, current_database(), 'CONNECT')) THEN
            RAISE;
        END IF;
        RAISE NOTICE 'not the owner of database %: CONNECT and TEMPORARY come from PUBLIC',
            current_database();
    END;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I, %I, %I', target, writer, reader, maint);
    EXECUTE format('GRANT CREATE ON SCHEMA %I TO %I', target, maint);
    -- Tables the maintenance role creates itself (under SET ROLE) are readable by the reader.
    -- (A partition created by a member login is owned by that login at first:
    -- partitions.create_partitions gives it the parent's owner and grants at once.)
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES TO %I',
                   maint, target, reader);

    -- 3. The tables that exist now; the others are skipped (run this again once they do).
    FOREACH tbl IN ARRAY ARRAY['activity_logs', 'activity_log_dead_letters',
                               'activity_log_cuts', 'activity_log_daily'] LOOP
        rel := to_regclass(format('%I.%I', target, tbl));
        CONTINUE WHEN rel IS NULL;
        -- The owner: the maintenance role, for the table, its partitions (every level), its
        -- indexes and its own sequences (ALTER TABLE ... OWNER carries those along).
        FOR child IN SELECT relid FROM pg_partition_tree(rel) UNION SELECT rel LOOP
            IF (SELECT relowner FROM pg_class WHERE oid = child)
                    <> (SELECT oid FROM pg_roles WHERE rolname = maint) THEN
                EXECUTE format('ALTER TABLE %s OWNER TO %I', child, maint);
            END IF;
            EXECUTE format('REVOKE ALL ON TABLE %s FROM %I, %I', child, writer, reader);
            EXECUTE format('GRANT SELECT ON TABLE %s TO %I', child, reader);
            IF tbl = 'activity_log_cuts' THEN
                EXECUTE format('GRANT SELECT ON TABLE %s TO %I', child, writer);
            ELSIF tbl <> 'activity_log_daily' THEN  -- the rollup's triggers write it for them
                EXECUTE format('GRANT SELECT, INSERT ON TABLE %s TO %I', child, writer);
            END IF;
        END LOOP;
        -- Sequences behind serial or identity columns: the writer draws from those of the
        -- tables it inserts into.
        FOR seq IN SELECT d.objid::regclass FROM pg_depend d
                   JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                   WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                     AND d.refobjid = rel AND d.deptype IN ('a', 'i') LOOP
            EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM %I, %I', seq, writer, reader);
            IF tbl IN ('activity_logs', 'activity_log_dead_letters') THEN
                EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I', seq, writer);
            END IF;
        END LOOP;
    END LOOP;

    -- 4. The daily rollup's trigger function (rollup.py) is SECURITY DEFINER: it runs as
    -- its owner, who writes the rollup. The maintenance role owns it like the rollup, so
    -- it may put it on new partitions and replace it on upgrade (EXECUTE stays revoked
    -- from PUBLIC: no one else can feed the rollup from a table of their own).
    fn := to_regprocedure(format('%I.%I()', target, 'activity_log_daily_apply'));
    IF fn IS NOT NULL AND (SELECT proowner FROM pg_proc WHERE oid = fn)
            <> (SELECT oid FROM pg_roles WHERE rolname = maint) THEN
        EXECUTE format('ALTER FUNCTION %s OWNER TO %I', fn, maint);
    END IF;
END
$activity_logging_roles$;
