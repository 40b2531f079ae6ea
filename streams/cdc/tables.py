"""The captured tables' keys, from PostgreSQL's catalog, checked before a connector is created.

Debezium keys a table's change events by its primary key. A table without one gets
events with no record key, which Kafka spreads over the partitions: a copy of a change
(Connect re-sends after a crash) can land on another partition than the first, where the
per-partition processed-ID table has not seen it. So a keyless table needs declared key
columns (``CdcSpec.key_columns``, Debezium's ``message.key.columns``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from streams.cdc.config import CdcSpec


@dataclass
class TableKeys:
    """What the catalog says about one table's keys."""

    table: str
    columns: list[str]
    primary_key: list[str]
    #: key columns of its unique indexes (the primary key's included; not partial or expression ones)
    unique: list[list[str]] = field(default_factory=list)
    #: ``relreplident``: d(efault: the primary key), n(othing), f(ull), i(ndex)
    replica_identity: str = "d"


def table_keys(conn: psycopg.Connection, table: str) -> TableKeys | None:
    """The keys of ``schema.table``, or None when there is no such table."""
    row = conn.execute("SELECT c.oid, c.relreplident FROM pg_class c WHERE c.oid = to_regclass(%s)",
                       (table,)).fetchone()
    if row is None:
        return None
    oid, identity = row
    columns = [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (oid,))]
    primary: list[str] = []
    unique: list[list[str]] = []
    for is_primary, names in conn.execute(
            "SELECT i.indisprimary, array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL "
            "AND k.ord <= i.indnkeyatts GROUP BY i.indexrelid, i.indisprimary",  # key columns, not INCLUDE
            (oid,)):
        unique.append(list(names))
        if is_primary:
            primary = list(names)
    return TableKeys(table, columns, primary, unique, identity)


def check_keys(spec: CdcSpec, found: dict[str, TableKeys | None]) -> tuple[list[str], list[str]]:
    """(refusals, warnings) for the spec's tables as the catalog describes them."""
    refusals: list[str] = []
    warnings: list[str] = []
    for table in spec.tables:
        keys = found.get(table)
        if keys is None:
            continue  # not created yet: Connect reports it
        declared = spec.key_columns.get(table)
        if declared:
            missing = [c for c in declared if c not in keys.columns]
            if missing:
                refusals.append(f"key_columns of {table}: no column {', '.join(missing)} "
                                f"(it has {', '.join(keys.columns)})")
            elif not any(set(index) <= set(declared) for index in keys.unique):
                warnings.append(f"{table}: no unique index covers the key columns {', '.join(declared)}: the rows "
                                "one COPY writes share a log position, and two of them with equal values in "
                                "these columns would count as one change")
        elif not keys.primary_key:
            refusals.append(
                f"table {table} has no primary key: its change events would have no record key, so copies of "
                f"one change could land on different partitions and be handled twice. Declare the columns that "
                f"identify a row: --key-columns {table}:<column>[,<column>...] (key_columns in a spec file)")
        if not keys.primary_key and spec.before_rows == "key" and keys.replica_identity in ("d", "n"):
            refusals.append(f"table {table} has no primary key and before_rows is key: with no replica identity, "
                            "PostgreSQL refuses its updates and deletes once it is published (use before_rows: full)")
    return refusals, warnings
