-- What CDC needs from the source database, run once by an administrator. Idempotent.
-- Filled by replicator/postgres.py with psycopg's SQL composition (braced names below): tables is
-- the list of replicated tables; role and database are identifiers, role_name a literal and
-- password an SQL expression. `replicator postgres sql` prints the filled script;
-- `replicator postgres prepare` (and the local stack) runs it.
-- (REPLICA IDENTITY FULL on each replicated table is set just before this script.)

-- Heartbeats: Debezium upserts here so the slot advances while the tables are idle.
CREATE TABLE IF NOT EXISTS dbo.debezium_heartbeat (id int PRIMARY KEY, beat timestamptz NOT NULL);
-- Signals: incremental snapshots on demand.
CREATE TABLE IF NOT EXISTS dbo.debezium_signal (
  id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2048) NULL);

-- The replication role: REPLICATION + reads of what Debezium captures, nothing more.
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {role_name}) THEN
    EXECUTE format('CREATE ROLE %I LOGIN REPLICATION PASSWORD %L', {role_name}, {password});
  ELSE
    EXECUTE format('ALTER ROLE %I LOGIN REPLICATION PASSWORD %L', {role_name}, {password});
  END IF;
END $$;
GRANT CONNECT ON DATABASE {database} TO {role};
GRANT USAGE ON SCHEMA dbo TO {role};
GRANT SELECT ON {tables} TO {role};
GRANT SELECT, INSERT, UPDATE ON dbo.debezium_heartbeat TO {role};
GRANT SELECT, INSERT, DELETE ON dbo.debezium_signal TO {role};

-- Phase 5 (`replicator purge`) tags its deletes with a replication origin, whose functions are
-- superuser-only unless granted (PostgreSQL 14+). The purge runs as the tables' owner: granted
-- to it here when this script runs as a superuser and the owner is not one (else a no-op).
DO $$ BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
     AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = {owner_name}) THEN
    EXECUTE format('GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), '
                   'pg_replication_origin_oid(text), pg_replication_origin_session_setup(text), '
                   'pg_replication_origin_session_reset() TO %I', {owner_name});
  END IF;
END $$;

-- A publication of exactly the replicated tables, plus the heartbeat and signal tables that
-- Debezium must see; made here so the connector needs no table ownership (autocreate disabled).
-- The statement creates the publication FOR TABLE ..., or SETs its TABLEs when it exists.
{publication_statement};
