"""The relay's claim reads pending rows only, and no more of them than it claims, however many
done rows the outbox keeps and however long the backlog (EXPLAIN ANALYZE on the real PostgreSQL:
the rows its scans of the outbox read); and it claims the first pending rows in id order, none
of a key whose earlier row waits for a retry."""

from __future__ import annotations

import psycopg

from streams.outbox.relay import Relay
from streams.outbox.schema import LANES, migrate

ROWS = 40_000
KEYS = 500
BATCH = 500


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_the_claim_reads_no_done_row_and_skips_keys_behind_a_retry(isolated) -> None:
    table = isolated.settings.outbox_table
    with psycopg.connect(isolated.settings.dsn, autocommit=True) as conn:
        migrate(conn, table)
        conn.execute(f"INSERT INTO {table} (message_id, message_type, topic, key, payload) "
                     "SELECT gen_random_uuid()::text, 'Ping', 'claim.test', 'key-' || (g %% %s), "
                     "jsonb_build_object('n', g) FROM generate_series(1, %s) g", (KEYS, ROWS))
        # the first half published (the relay keeps done rows for its retention), a backlog behind
        conn.execute(f"UPDATE {table} SET status = 'done', processed_at = now() "
                     f"WHERE id <= (SELECT min(id) + %s FROM {table})", (ROWS // 2 - 1,))
        # key-7's first pending row failed an attempt and waits for its retry: its key waits behind it
        conn.execute(f"UPDATE {table} SET fail_count = 1, next_attempt_at = now() + interval '1 hour' "
                     f"WHERE id = (SELECT min(id) FROM {table} WHERE status = 'pending' AND key = 'key-7')")
        conn.execute(f"VACUUM ANALYZE {table}")
        relay = Relay(isolated.settings)
        params = {"lanes": list(range(LANES)), "held": [], "skipped": [], "n": BATCH}
        claim = relay._claim_sql(False).as_string(conn)
        cur = psycopg.ClientCursor(conn)
        [[plan]] = cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + claim, params).fetchall()
        claimed = [row[0] for row in cur.execute(claim, params).fetchall()]
        expected = [row[0] for row in cur.execute(
            f"SELECT id FROM {table} WHERE status = 'pending' AND key <> 'key-7' ORDER BY id LIMIT %s",
            (BATCH,)).fetchall()]
    scans = [n for n in _nodes(plan[0]["Plan"]) if n.get("Relation Name") == table]
    read = sum((n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"] for n in scans)
    assert read <= 3 * BATCH, [(n["Node Type"], n.get("Index Name"), n["Actual Rows"], n["Actual Loops"],
                               n.get("Rows Removed by Filter")) for n in scans]
    assert claimed == expected
