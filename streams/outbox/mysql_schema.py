"""The outbox table on MySQL 8 / MariaDB 10.6+: the same columns as PostgreSQL's, in MySQL's types.

What differs from :mod:`streams.outbox.schema`, and why:

* ``id`` is an ``AUTO_INCREMENT``; InnoDB hands it out when the row is written,
  *after* the ``BEFORE INSERT`` trigger has run.
* **Per-key order at the writer.** The trigger first upserts the row's key into
  ``<outbox>_keys`` (``INSERT … ON DUPLICATE KEY UPDATE``): that takes InnoDB's
  exclusive lock on the key's row, held until the writing transaction ends. A
  second transaction writing the same key waits there, before it has an id, so
  the ids of one key are in commit order (PostgreSQL's trigger takes an advisory
  transaction lock for the same reason; MySQL's ``GET_LOCK`` belongs to the
  session, not the transaction, so it would outlive the commit). Two
  transactions writing two keys in opposite order can deadlock: InnoDB rolls one
  back with error 1213 (retry it). ``<outbox>_keys`` keeps one small row per key
  ever written. Write one row per ``INSERT`` (the writer functions do):
  a multi-row ``INSERT … VALUES`` may get its ids before the trigger of its later
  rows has waited.
* ``payload``, ``headers``, ``meta`` are text holding JSON (``LONGTEXT``, not
  ``JSON``): MySQL's JSON type rewrites documents (key order), and the relay
  publishes the bytes the writer stored.
* Times are ``DATETIME(6)`` in UTC (every statement uses ``UTC_TIMESTAMP(6)``),
  ``next_attempt_at`` starts at ``1970-01-01``.
* No partial indexes: the relay's indexes lead with ``status``.
* ``lane`` is a stored generated column, ``CRC32(key or message_id) % LANES``;
  the relays share the lanes with ``GET_LOCK`` (:mod:`streams.outbox.mysql_relay`).
* ``<outbox>_cursor`` holds the pointer mode's last sent id, as on PostgreSQL.
* ``traceparent`` / ``tracestate`` (v4, as on PostgreSQL): the writer's W3C trace context, filled
  only while a span is current, sent by the relay as the record's headers.
* The schema version is the table's comment.

Creating a trigger while the binary log is on needs the ``SUPER`` privilege or
``log_bin_trust_function_creators=1`` (MySQL's rule for triggers).
"""

from __future__ import annotations

import hashlib
from typing import Any

from streams.outbox.schema import _VERSION_TEXT, LANES

#: the MySQL/MariaDB table's own DDL version, stored as its comment like PostgreSQL's; it follows
#: PostgreSQL's numbers where the change exists on both (v4: the trace columns), and stays put for
#: changes that are PostgreSQL's only (v5: the claim's partial indexes; MySQL has none)
SCHEMA_VERSION = 4

_TABLE = """
CREATE TABLE IF NOT EXISTS `{t}` (
    id                  BIGINT NOT NULL AUTO_INCREMENT,
    message_id          VARCHAR(255) NOT NULL,
    message_type        VARCHAR(255) NOT NULL,
    kind                VARCHAR(32) NOT NULL DEFAULT 'event',
    topic               VARCHAR(249) NOT NULL,
    `key`               VARCHAR(512) NULL,
    payload             LONGTEXT NOT NULL,
    headers             TEXT NULL,
    meta                TEXT NULL,
    status              VARCHAR(8) NOT NULL DEFAULT 'pending',
    fail_count          INT NOT NULL DEFAULT 0,
    occurred_at         DATETIME(6) NOT NULL,
    processed_at        DATETIME(6) NULL,
    failed_at           DATETIME(6) NULL,
    next_attempt_at     DATETIME(6) NOT NULL DEFAULT '1970-01-01 00:00:00',
    last_error          TEXT NULL,
    lane                SMALLINT GENERATED ALWAYS AS (CRC32(COALESCE(`key`, message_id)) % {lanes}) STORED,
    envelope            LONGTEXT NULL,
    topic_missing_since DATETIME(6) NULL,
    traceparent         VARCHAR(55) NULL,
    tracestate          TEXT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY `{t}_message_id_key` (message_id),
    KEY `{t}_pending_lane_id` (status, lane, id),
    KEY `{t}_pending_key_id` (status, `key`, id),
    KEY `{t}_status_processed_at` (status, processed_at),
    CONSTRAINT `{t}_status_check` CHECK (status IN ('pending', 'done', 'failed'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin COMMENT='{version}'
"""

_KEYS = """
CREATE TABLE IF NOT EXISTS `{t}_keys` (
    `key` VARCHAR(512) NOT NULL PRIMARY KEY
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
"""

_CURSOR = """
CREATE TABLE IF NOT EXISTS `{t}_cursor` (
    name       VARCHAR(191) NOT NULL PRIMARY KEY,
    last_id    BIGINT NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
"""

_TRIGGER = """
CREATE TRIGGER `{t}_key_order` BEFORE INSERT ON `{t}` FOR EACH ROW
BEGIN
    IF NEW.`key` IS NOT NULL THEN
        INSERT INTO `{t}_keys` (`key`) VALUES (NEW.`key`) ON DUPLICATE KEY UPDATE `key` = VALUES(`key`);
    END IF;
END
"""

#: the columns a writer fills (the rest have defaults)
INSERT_COLUMNS = ("message_id", "message_type", "kind", "topic", "key", "payload", "headers", "meta", "occurred_at")
#: v4: the writer's W3C trace context, written only when one is current (as on PostgreSQL)
TRACE_COLUMNS = ("traceparent", "tracestate")


def insert_sql(table: str, values: dict[str, Any] | None = None) -> str:
    """One outbox row, ``%(name)s`` parameters (the id is ``LAST_INSERT_ID()`` after it); with the
    trace columns when ``values`` (:func:`streams.outbox.writer.row_values`) carries them."""
    columns = (*INSERT_COLUMNS, *TRACE_COLUMNS) if values and "traceparent" in values else INSERT_COLUMNS
    cols = ", ".join(f"`{c}`" for c in columns)
    return f"INSERT INTO `{table}` ({cols}) VALUES ({', '.join(f'%({c})s' for c in columns)})"


def _add_missing_columns(cur: Any, table: str) -> None:
    """v3 → v4: the trace columns on a table created by an older release (MySQL 8 has no
    ``ADD COLUMN IF NOT EXISTS``, so information_schema says which are missing)."""
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                "AND table_name = %s", (table,))
    present = {r[0].lower() for r in cur.fetchall()}
    added = [f"ADD COLUMN {c}" for name, c in (("traceparent", "traceparent VARCHAR(55) NULL"),
                                               ("tracestate", "tracestate TEXT NULL")) if name not in present]
    if added:
        cur.execute(f"ALTER TABLE `{table}` {', '.join(added)}")


def lock_name(url_database: str, table: str, what: str) -> str:
    """A ``GET_LOCK`` name for ``what`` of the outbox ``table`` in one database (names are
    server-wide and at most 64 characters, so the database and table are hashed)."""
    digest = hashlib.sha1(f"{url_database}.{table}".encode()).hexdigest()[:16]
    return f"streams-outbox:{digest}:{what}"


def schema_version(cur: Any, table: str) -> int | None:
    """The version of ``table`` in the connection's database (None: no table), on a PyMySQL cursor."""
    cur.execute("SELECT table_comment FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND table_name = %s", (table,))
    row = cur.fetchone()
    if row is None:
        return None
    prefix = _VERSION_TEXT.format("")
    return int(row[0][len(prefix):]) if row[0] and row[0].startswith(prefix) else 0


def migrate(conn: Any, table: str = "streams_outbox") -> bool:
    """Create the outbox table, its key-lock table, cursor table and trigger (a PyMySQL connection).

    Nothing happens when the table is at :data:`SCHEMA_VERSION` already; migrations of
    several processes take turns on a named lock. Returns whether it changed anything."""
    if not table.replace("_", "").isalnum():
        raise ValueError(f"invalid outbox table name {table!r}")
    with conn.cursor() as cur:
        version = schema_version(cur, table)
        if version is not None and version >= SCHEMA_VERSION:
            return False
        cur.execute("SELECT DATABASE()")
        name = lock_name(cur.fetchone()[0], table, "migrate")
        cur.execute("SELECT GET_LOCK(%s, 30)", (name,))
        if cur.fetchone()[0] != 1:
            raise TimeoutError("another process has been migrating the outbox for 30 s")
        try:
            version = schema_version(cur, table)
            if version is not None and version >= SCHEMA_VERSION:
                return False
            fmt = {"t": table, "lanes": LANES, "version": _VERSION_TEXT.format(SCHEMA_VERSION)}
            cur.execute(_TABLE.format(**fmt))
            _add_missing_columns(cur, table)
            cur.execute(_KEYS.format(**fmt))
            cur.execute(_CURSOR.format(**fmt))
            cur.execute(f"DROP TRIGGER IF EXISTS `{table}_key_order`")
            cur.execute(_TRIGGER.format(**fmt))
            cur.execute(f"ALTER TABLE `{table}` COMMENT = %s", (_VERSION_TEXT.format(SCHEMA_VERSION),))
            return True
        finally:
            cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
            cur.fetchall()
