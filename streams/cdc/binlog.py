"""The MySQL / MariaDB side of a CDC connector: the binary log, its positions, the checks before create.

**The position** (the source notes' question 7). A binlog connector's place in the
log has two names, and Connect stores both (its offsets for the connector):

* the **binlog file and byte position** (``mysql-bin.000003:1472``) — where the
  transaction it resumes from starts on *this* server (plus ``event`` and ``row``: how
  many events and rows of that transaction were already sent);
* the **GTID set** (MariaDB ``0-1-42``, MySQL ``3E11FA47-…:1-42``) — the transactions
  it has completed, a name that every server of a replication topology shares.

When the server has GTIDs (the project's own MariaDB does, strict mode), Debezium
resumes from the GTID set and the file/position only names it; without GTIDs, from the
file and position. ``streams cdc status`` shows the stored position beside the server's
current one (``SHOW MASTER STATUS`` / ``SHOW BINARY LOG STATUS`` and
``@@gtid_binlog_pos`` / ``@@gtid_executed``), and whether the stored file still exists:
a file purged by ``binlog_expire_logs_seconds`` before the connector read it is a gap
the connector cannot cross (it fails and says so).

**Ids of changes** (file + position + row, with the GTID in front). Debezium's source
block names each row change by its event's ``file`` and ``pos`` and the ``row`` within
that event, and carries the transaction's ``gtid``. A change's message id is
``<table>:<gtid>:<file>:<pos>:<row>:<op>:<key>``:

* **file + pos + row is what makes it unique and repeatable.** ``row`` counts rows
  within one binlog *event*, and a transaction has many events (one per statement and
  table), so "GTID + row" would give the first row of every statement of a transaction
  the same id; the event's index within its transaction is in Connect's offset, not in
  the change event. The same change read twice (a Connect crash, a rewind with ``offsets
  reset``) comes from the same event of the same file: the same id.
* **The GTID is in front** so that ids stay distinct across servers (file names and
  positions start over on every server; GTIDs do not) and so that an id says which
  transaction it came from.
* The price: a copy re-read from *another* server after a failover (same GTID, other
  file/position) gets another id, so the processed-ID table catches copies from one
  server's log, not across a switch of primaries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: privileges Debezium's binlog connector needs (MariaDB shows REPLICATION CLIENT as BINLOG MONITOR)
REQUIRED_PRIVILEGES = ("SELECT", "RELOAD", "SHOW DATABASES", "REPLICATION SLAVE", "REPLICATION CLIENT")
_ALIASES = {"BINLOG MONITOR": "REPLICATION CLIENT", "REPLICATION SLAVE ADMIN": None, "SLAVE MONITOR": None}


@dataclass(frozen=True)
class BinlogPosition:
    """A place in a server's binary log: file, byte position, GTID set."""

    file: str | None
    pos: int | None
    gtids: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "pos": self.pos, "gtids": self.gtids}

    def __str__(self) -> str:
        where = f"{self.file}:{self.pos}" if self.file else "?"
        return f"{where} (GTID set {self.gtids})" if self.gtids else where


def _fetch(conn: Any, query: str) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(query)
        return list(cur.fetchall())


def is_mariadb(conn: Any) -> bool:
    """Whether a PyMySQL connection's server is MariaDB (else MySQL)."""
    return "mariadb" in _fetch(conn, "SELECT VERSION()")[0][0].lower()


def server_position(conn: Any) -> BinlogPosition:
    """The server's current end of the binary log (a PyMySQL connection)."""
    rows: list[tuple] = []
    for statement in ("SHOW BINARY LOG STATUS", "SHOW MASTER STATUS"):  # MySQL 8.4+, then MariaDB / MySQL 8.0
        try:
            rows = _fetch(conn, statement)
            break
        except Exception:  # noqa: BLE001 - a syntax error on the other flavour
            continue
    gtid_query = "SELECT @@gtid_binlog_pos" if is_mariadb(conn) else "SELECT @@gtid_executed"
    gtids = _fetch(conn, gtid_query)[0][0] or None
    if not rows:
        return BinlogPosition(None, None, gtids)
    return BinlogPosition(rows[0][0], int(rows[0][1]), gtids)


def binary_logs(conn: Any) -> list[str]:
    """The binlog files the server still has (``SHOW BINARY LOGS``)."""
    return [r[0] for r in _fetch(conn, "SHOW BINARY LOGS")]


def parse_mariadb_gtids(gtids: str) -> dict[int, int]:
    """A MariaDB GTID set (``0-1-42,1-2-7``: domain-server-sequence, one per domain) → {domain: sequence}."""
    out: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in gtids.split(","))):
        pieces = part.split("-")
        if len(pieces) != 3 or not all(p.isdigit() for p in pieces):
            raise ValueError(f"{part!r} is not a MariaDB GTID (domain-server-sequence, e.g. 0-1-42)")
        out[int(pieces[0])] = int(pieces[2])
    return out


_GTID_EVENT = re.compile(r"(?:BEGIN )?GTID (\d+)-(\d+)-(\d+)")


def mariadb_gtid_start(conn: Any, gtids: str) -> BinlogPosition:
    """Where the first transaction *after* the MariaDB GTID set ``gtids`` begins in the server's
    binary log (its GTID event, from ``SHOW BINLOG EVENTS``); the current end of the log when
    every transaction there is in the set. Raises ValueError when the log no longer holds the
    set's next transaction (purged)."""
    done = parse_mariadb_gtids(gtids)
    files = binary_logs(conn)
    first_seen: dict[int, int] = {}
    for file in files:
        for _log, pos, kind, _server, _end, info in _fetch(conn, f"SHOW BINLOG EVENTS IN '{file}'"):
            if kind != "Gtid":
                continue
            match = _GTID_EVENT.match(info or "")
            if not match:
                continue
            domain, seq = int(match.group(1)), int(match.group(3))
            first_seen.setdefault(domain, seq)
            if seq > done.get(domain, 0):
                if first_seen[domain] > done.get(domain, 0) + 1 and file == files[0]:
                    raise ValueError(f"the binary log starts at GTID {domain}-?-{first_seen[domain]}: the "
                                     f"transactions after {gtids} in domain {domain} were purged")
                return BinlogPosition(file, int(pos), gtids)
    end = server_position(conn)
    return BinlogPosition(end.file, end.pos, gtids)


def mariadb_gtids_at(conn: Any, file: str, pos: int) -> str:
    """The GTID set of a MariaDB server's log at ``file:pos`` (``BINLOG_GTID_POS``: the
    transactions before that place); ValueError when the server cannot say (no such file, or
    not the start of an event)."""
    value = _fetch(conn, f"SELECT BINLOG_GTID_POS('{file.replace(chr(39), '')}', {int(pos)})")[0][0]
    if value is None:
        raise ValueError(f"MariaDB has no GTID position for {file}:{pos} (not the start of a transaction's "
                         "event, or past the end of the file)")
    return value


def check_binlog(conn: Any) -> list[str]:
    """What keeps the server from being captured (empty: nothing)."""
    values = {name.lower(): str(value) for name, value in _fetch(
        conn, "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', 'binlog_row_image')")}
    problems = []
    if values.get("log_bin", "OFF").upper() != "ON":
        problems.append("the binary log is off (start the server with --log-bin)")
    if values.get("binlog_format", "").upper() != "ROW":
        problems.append(f"binlog_format is {values.get('binlog_format')!r}: Debezium needs ROW")
    if values.get("binlog_row_image", "").upper() != "FULL":
        problems.append(f"binlog_row_image is {values.get('binlog_row_image')!r}: FULL gives whole before rows")
    return problems


def missing_privileges(conn: Any) -> list[str]:
    """The privileges of :data:`REQUIRED_PRIVILEGES` the connection's user lacks (``SHOW GRANTS``)."""
    held: set[str] = set()
    for (grant,) in _fetch(conn, "SHOW GRANTS"):
        match = re.match(r"GRANT (.+?) ON (\S+) TO", grant)
        if not match or match.group(2).replace("`", "") != "*.*":
            continue  # Debezium's privileges are global ones
        for privilege in (p.strip().upper() for p in match.group(1).split(",")):
            if privilege == "ALL PRIVILEGES":
                return []
            held.add(_ALIASES.get(privilege, privilege) or privilege)
    return [p for p in REQUIRED_PRIVILEGES if p not in held]


def stored_position(offsets: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The binlog position Connect stored for a connector (None: none, or only inside its snapshot)."""
    for item in offsets:
        offset = item.get("offset") or {}
        if offset.get("snapshot") not in (None, False, "false") and not offset.get("snapshot_completed"):
            continue  # inside the snapshot: a restart takes it again
        if offset.get("file"):
            return {k: offset.get(k) for k in ("file", "pos", "gtids", "event", "row", "server_id", "ts_sec")}
    return None


def table_primary_keys(conn: Any, tables: list[str]) -> dict[str, list[str] | None]:
    """``database.table`` → its primary key columns ([] without one, None: no such table)."""
    out: dict[str, list[str] | None] = {}
    for table in tables:
        schema, _, name = table.partition(".")
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                        (schema, name))
            if cur.fetchone() is None:
                out[table] = None
                continue
            cur.execute("SELECT column_name FROM information_schema.key_column_usage WHERE table_schema = %s "
                        "AND table_name = %s AND constraint_name = 'PRIMARY' ORDER BY ordinal_position",
                        (schema, name))
            out[table] = [r[0] for r in cur.fetchall()]
    return out
