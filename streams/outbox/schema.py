"""The outbox table and its migration.

Per-key order starts at the writer: the insert trigger takes a transaction-level
advisory lock on the row's key before it allocates the id, so two transactions
writing the same key queue up and the second gets its id only after the first
committed (or rolled back). Without it, id 10 could commit after id 11 of the same
key and a relay that already sent 11 would send 10 after it. The price: writers of
one key serialize (as they usually do anyway on the aggregate's row lock), and
two transactions that write two keys in opposite order can deadlock (PostgreSQL
aborts one of them with an error).

Columns (the seeds' names first): ``id`` (increasing bigint, allocated by a trigger
*after* the writing transaction has its xid, which the pointer relay relies on),
``message_id`` (unique), ``message_type``, ``payload`` (JSON), ``status``
(pending → done, or failed when parked), ``fail_count``, ``occurred_at``,
``processed_at``, ``failed_at``; routing: ``topic``, ``key``, ``headers``, ``kind``,
``meta`` (the envelope's source/correlation/causation/trace ids); relay
book-keeping: ``next_attempt_at``, ``last_error``, ``txid`` and ``lane`` (a hash of
the key: all rows of a key share a lane, and one relay at a time owns a lane), and
``topic_missing_since`` (v3: set while the row's topic does not exist in Kafka, see
:mod:`streams.outbox.topics`); ``traceparent`` / ``tracestate`` (v4: the W3C trace
context of the span that wrote the row, sent as the record's headers, see
:mod:`streams.tracing`).

``aggregatetype`` / ``aggregateid`` / ``type`` are generated copies of topic / key /
message_type, so Debezium's outbox event router can read the same table with its
default field names (set ``table.field.event.id=message_id``). ``envelope`` (v2) is
the whole envelope as JSON text, exactly what the relay publishes; it is filled only
while the table is published through the log (``streams cdc create --outbox``
installs the trigger that fills it, see :mod:`streams.cdc.outbox`), so a relay-only
outbox pays nothing for it.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

#: bumped whenever the DDL below changes; stored as the table's comment
SCHEMA_VERSION = 4
_VERSION_TEXT = "streams outbox schema v{}"

#: rows are spread over this many lanes (the most relays that can share the work)
LANES = 64

_DDL = """
CREATE SEQUENCE IF NOT EXISTS {seq} AS bigint;

CREATE TABLE IF NOT EXISTS {table} (
    id              bigint PRIMARY KEY,
    message_id      text NOT NULL,
    message_type    text NOT NULL,
    kind            text NOT NULL DEFAULT 'event',
    topic           text NOT NULL,
    key             text,
    payload         jsonb NOT NULL,
    headers         jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    meta            jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    status          text NOT NULL DEFAULT 'pending',
    fail_count      integer NOT NULL DEFAULT 0,
    occurred_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    processed_at    timestamptz,
    failed_at       timestamptz,
    next_attempt_at timestamptz NOT NULL DEFAULT '-infinity',
    last_error      text,
    txid            xid8 NOT NULL,
    lane            smallint GENERATED ALWAYS AS
                        (((hashtext(coalesce(key, message_id)) & 2147483647) % {lanes})::smallint) STORED,
    aggregatetype   text GENERATED ALWAYS AS (topic) STORED,
    aggregateid     text GENERATED ALWAYS AS (key) STORED,
    type            text GENERATED ALWAYS AS (message_type) STORED,
    envelope        text,
    topic_missing_since timestamptz,
    traceparent     text,
    tracestate      text,
    CONSTRAINT {uniq} UNIQUE (message_id),
    CONSTRAINT {status_check} CHECK (status IN ('pending', 'done', 'failed'))
);

-- v1 → v2: the envelope column (nullable, no default: no table rewrite)
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS envelope text;
-- v2 → v3: when the relay found the row's topic missing (nullable, no default: no table rewrite)
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS topic_missing_since timestamptz;
-- v3 → v4: the trace context of the writer (nullable, no default: no table rewrite)
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS traceparent text;
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS tracestate text;

-- the relay claims pending rows in id order, per lane
CREATE INDEX IF NOT EXISTS {ix_pending} ON {table} (lane, id) WHERE status = 'pending';
-- "is an earlier row of this key waiting for a retry?"
CREATE INDEX IF NOT EXISTS {ix_key} ON {table} (key, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS {ix_done} ON {table} (processed_at) WHERE status = 'done';
CREATE INDEX IF NOT EXISTS {ix_failed} ON {table} (failed_at) WHERE status = 'failed';

-- pointer mode: the last id each named relay has published
CREATE TABLE IF NOT EXISTS {cursor} (
    name       text PRIMARY KEY,
    last_id    bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- 1. writers of one key queue up (lock held until commit), so a key's ids are in commit order;
-- 2. xid first, id second: an id is never taken by a transaction without an xid (pointer mode)
CREATE OR REPLACE FUNCTION {fn_assign}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext({key_lock}), hashtext(NEW.key));
    END IF;
    NEW.txid := pg_current_xact_id();
    NEW.id := nextval({seq_literal});
    RETURN NEW;
END $$;

-- CDC mode (streams.cdc.outbox): the row carries the envelope the relay would have sent, and
-- is handed to the log at commit: it is never pending, so no relay publishes it as well
CREATE OR REPLACE FUNCTION {fn_envelope}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.envelope := (jsonb_build_object(
        'message_id', NEW.message_id, 'message_type', NEW.message_type, 'kind', NEW.kind,
        'occurred_at', to_char(NEW.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'key', NEW.key, 'payload', NEW.payload, 'headers', NEW.headers) || NEW.meta)::text;
    NEW.status := 'done';
    NEW.processed_at := clock_timestamp();
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION {fn_notify}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({channel}, '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS {trg_assign} ON {table};
CREATE TRIGGER {trg_assign} BEFORE INSERT ON {table}
    FOR EACH ROW EXECUTE FUNCTION {fn_assign}();
DROP TRIGGER IF EXISTS {trg_notify} ON {table};
CREATE TRIGGER {trg_notify} AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {fn_notify}();

COMMENT ON TABLE {table} IS {version};
"""


def names(table: str) -> dict[str, sql.Composable]:
    """SQL identifiers derived from the outbox table name."""
    ident = sql.Identifier
    return {
        "table": ident(table),
        "seq": ident(f"{table}_id_seq"),
        "seq_literal": sql.Literal(f"{table}_id_seq"),
        "cursor": ident(f"{table}_cursor"),
        "uniq": ident(f"{table}_message_id_key"),
        "status_check": ident(f"{table}_status_check"),
        "ix_pending": ident(f"{table}_pending_lane_id"),
        "ix_key": ident(f"{table}_pending_key_id"),
        "ix_done": ident(f"{table}_done_processed_at"),
        "ix_failed": ident(f"{table}_failed_failed_at"),
        "fn_assign": ident(f"{table}_assign_id"),
        "fn_notify": ident(f"{table}_notify"),
        "fn_envelope": ident(f"{table}_envelope"),
        "trg_assign": ident(f"{table}_assign_id"),
        "trg_notify": ident(f"{table}_notify"),
        "channel": sql.Literal(channel(table)),
        "lanes": sql.Literal(LANES),
        "key_lock": sql.Literal(f"streams-outbox-key:{table}"),
        "version": sql.Literal(_VERSION_TEXT.format(SCHEMA_VERSION)),
    }


def channel(table: str) -> str:
    """The LISTEN/NOTIFY channel that announces new rows."""
    return table


def schema_version(conn: psycopg.Connection, table: str = "streams_outbox") -> int | None:
    """The outbox schema version in the database (None: no table)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL, obj_description(to_regclass(%s), 'pg_class')",
                       (table, table)).fetchone()
    if row is None or not row[0]:
        return None
    prefix = _VERSION_TEXT.format("")
    return int(row[1][len(prefix):]) if row[1] and row[1].startswith(prefix) else 0


def migrate(conn: psycopg.Connection, table: str = "streams_outbox") -> bool:
    """Create (or bring up to date) the outbox table, its indexes and triggers.

    Does nothing when the table is already at :data:`SCHEMA_VERSION` or newer (re-creating
    the triggers takes a lock that would queue behind, and block, live writers); waits
    at most 10 s for that lock (``LockNotAvailable`` otherwise).
    Returns whether it changed anything."""
    version = schema_version(conn, table)
    if version is not None and version >= SCHEMA_VERSION:  # a newer release migrated it: never downgrade
        return False
    statement = sql.SQL(_DDL).format(**names(table))
    with conn.transaction():
        # one migration at a time (several relays may start together)
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('streams-outbox-migrate'))")
        version = schema_version(conn, table)
        if version is not None and version >= SCHEMA_VERSION:
            return False
        # the triggers' re-creation queues behind live writers and blocks new ones: give up
        # (and say so) rather than stall them behind a long transaction
        conn.execute("SET LOCAL lock_timeout = '10s'")
        conn.execute(statement)
    return True


def exists(conn: psycopg.Connection, table: str = "streams_outbox") -> bool:
    """Whether the outbox table has been created."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])
