"""The outbox published through the database's log instead of the polling relay.

While an outbox connector runs, a trigger on the outbox table writes each row's whole
envelope (the bytes the relay would have sent) into its ``envelope`` column and
marks the row ``done``: Debezium's outbox event router sends that column as the
record value to the row's ``topic`` with its ``key`` and ``message_id``, ``message_type``
and ``kind`` headers — the same records the relay sends, so consumers do not change
and their processed-ID tables deduplicate across both paths.

Switching, with no row lost and none sent twice:

* relay → CDC: ``streams cdc create --outbox`` creates the slot (every commit after
  it is captured), waits until the connector reads it, then installs the trigger.
  Rows committed before the trigger have no envelope and stay ``pending``: the
  connector drops them (a filter on the router's empty records) and the relay sends
  them. Stop the relay once ``streams outbox stats`` shows none pending.
* CDC → relay: ``streams cdc delete`` writes a marker row and drops the trigger in one
  transaction (later rows are ``pending``, for the relay), waits until the connector's
  stored position is past the marker, then deletes the connector, its slot and
  publication. Should the connector not get there, the rows handed to the log in the
  last minutes are made pending again: the relay resends them and consumers drop the
  copies (same ``message_id``).

Order per key holds within each path; across a switch a key's older row sent by the
relay can arrive after a newer one sent through the log (stop the writers of the
table, or accept it, for the seconds of the switch).

Rows marked ``done`` this way are removed like the relay's: by ``streams outbox purge``
(status mode; run it on a schedule while no relay runs) or a running relay's periodic
purge, after ``STREAMS_RELAY_RETENTION``. The requeue fallback of a switch back needs a
status-mode relay (a pointer-mode relay's cursor is already past those rows).
"""

from __future__ import annotations

import psycopg
from psycopg import sql


def _trigger(table: str) -> sql.Identifier:
    return sql.Identifier(f"{table}_envelope")


def enable(conn: psycopg.Connection, table: str = "streams_outbox") -> None:
    """Install the envelope trigger (idempotent; waits at most 30 s for the table's lock)."""
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '30s'")
        # BEFORE triggers fire in name order: <table>_assign_id (id, xid, key lock) runs first
        conn.execute(sql.SQL("CREATE OR REPLACE TRIGGER {trg} BEFORE INSERT ON {table} FOR EACH ROW "
                             "EXECUTE FUNCTION {fn}()")
                     .format(trg=_trigger(table), table=sql.Identifier(table), fn=sql.Identifier(f"{table}_envelope")))


def disable(conn: psycopg.Connection, table: str = "streams_outbox") -> None:
    """Remove the envelope trigger: new rows are pending again, for the relay."""
    conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {trg} ON {table}").format(
        trg=_trigger(table), table=sql.Identifier(table)))


def enabled(conn: psycopg.Connection, table: str = "streams_outbox") -> bool:
    """Whether rows of ``table`` are currently handed to the log."""
    row = conn.execute("SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = to_regclass(%s)",
                       (f"{table}_envelope", table)).fetchone()
    return row is not None
