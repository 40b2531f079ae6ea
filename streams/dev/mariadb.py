"""The project's own MariaDB server (Debian's ``mariadb-server`` 10.11), for MySQL-flavoured work.

``streams dev mariadb up`` initialises a data folder under ``<home>/mariadb`` once
(``mariadb-install-db``) and runs ``mariadbd`` in the foreground, detached (pid in
``<home>/mariadb/mariadbd.pid``), with no option file read (``--no-defaults``: the
machine's ``/etc/mysql`` settings stay out), TCP on 127.0.0.1 only, its socket in
the folder, and the binary log CDC needs: ``binlog_format=ROW``,
``binlog_row_image=FULL``, GTIDs in strict mode and a server id. The database
``streams`` is created, and ``root`` may log in without a password from
127.0.0.1 (a local development server: nothing listens beyond the loopback).

The URL to give the framework is ``status()["url"]``
(``mysql://root@127.0.0.1:<port>/streams``): ``STREAMS_DATABASE_URL`` set to it
puts the outbox, the relay and the effects table on this server.
Any MySQL 8 or MariaDB 10.6+ server works the same through its own ``mysql://`` URL.

The binaries come from Debian's package; ``make test`` installs it when missing
(``scripts/ensure-deb.sh``), as it does sshd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from streams.dev.process import ServiceError, pid_alive, port_open, read_pid, spawn, tail, terminate

MARIADBD = os.environ.get("STREAMS_MARIADBD", "/usr/sbin/mariadbd")
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
_MARKER = "mariadbd"


class LocalMariaDB:
    """One local MariaDB server: ``up``, ``down``, ``kill``, ``status``."""

    def __init__(self, root: Path, port: int, *, database: str = "streams", server_id: int = 1) -> None:
        self.root = root.resolve()
        self.port = port
        self.database = database
        self.server_id = server_id
        self.host = "127.0.0.1"

    @classmethod
    def from_settings(cls, settings) -> "LocalMariaDB":
        return cls(settings.home_path / "mariadb", settings.local_mariadb_port,
                   database=settings.local_mariadb_database)

    # --- paths and identity ---------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket(self) -> Path:
        return self.root / "mysqld.sock"

    @property
    def log_file(self) -> Path:
        return self.root / "mariadbd.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "mariadbd.pid"

    @property
    def url(self) -> str:
        """The ``mysql://`` URL of the server's database (root, no password, 127.0.0.1 only)."""
        return f"mysql://root@{self.host}:{self.port}/{self.database}"

    def command(self) -> list[str]:
        """The server's command line (``--no-defaults`` first: no option file is read)."""
        return [MARIADBD, "--no-defaults", "--user=root", f"--datadir={self.data_dir}", f"--socket={self.socket}",
                f"--port={self.port}", f"--bind-address={self.host}", f"--pid-file={self.root / 'server.pid'}",
                f"--log-error={self.log_file}", "--skip-name-resolve",
                # the binary log Debezium reads: whole rows, GTIDs
                "--log-bin=mysql-bin", "--binlog-format=ROW", "--binlog-row-image=FULL",
                f"--server-id={self.server_id}", "--log-slave-updates", "--gtid-strict-mode=ON",
                "--binlog-expire-logs-seconds=604800",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
                "--max-connections=500", "--innodb-buffer-pool-size=128M", "--innodb-log-file-size=64M",
                "--default-time-zone=+00:00"]

    # --- state ------------------------------------------------------------------
    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid_alive(pid, _MARKER) else None

    def running(self) -> bool:
        return self.pid() is not None

    def status(self) -> dict:
        pid = self.pid()
        return {"url": self.url, "pid": pid, "running": pid is not None,
                "answering": pid is not None and port_open(self.host, self.port),
                "socket": str(self.socket), "data_dir": str(self.data_dir), "log_file": str(self.log_file),
                "version": server_version() if Path(MARIADBD).exists() else None}

    # --- lifecycle ----------------------------------------------------------------
    def up(self, timeout: float = 60.0) -> float:
        """Initialise (once), start, create the database; returns seconds taken (0: it was running)."""
        if self.running():
            self._ensure_database()
            return 0.0
        if not Path(MARIADBD).exists():
            raise ServiceError(f"{MARIADBD} not found: install Debian's mariadb-server "
                               "(make test installs it with scripts/ensure-deb.sh when run as root), "
                               "or set STREAMS_DATABASE_URL to an existing mysql:// server")
        if port_open(self.host, self.port):
            raise ServiceError(f"port {self.host}:{self.port} is taken by another process "
                               "(set STREAMS_LOCAL_MARIADB_PORT to a free port)")
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "mysql").is_dir():
            self._init()
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        pid = spawn(self.command(), self.root / "mariadbd.out", self.pid_file, cwd=self.root, env=_clean_env())
        last_error = "the socket and the port were not both open yet"
        while time.monotonic() - started < timeout:
            if _exited(pid):
                raise ServiceError(f"mariadbd exited while starting:\n{_tail_from(self.log_file, offset)}\n"
                                   f"{tail(self.root / 'mariadbd.out')}")
            if self.socket.exists() and port_open(self.host, self.port):
                try:
                    self._ensure_database()
                    return time.monotonic() - started
                except Exception as exc:  # noqa: BLE001 - still starting up: try again
                    last_error = f"setting up the database failed: {type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise ServiceError(f"MariaDB did not answer on {self.host}:{self.port} within {timeout:.0f}s ({last_error}):\n"
                           f"{_tail_from(self.log_file, offset)}")

    def down(self, timeout: float = 60.0) -> bool:
        """SIGTERM the server (by its own pid): a clean shutdown."""
        pid = self.pid()
        stopped = pid is not None and terminate(pid, _MARKER, timeout=timeout)
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def kill(self) -> None:
        """SIGKILL the server (crash simulation); the next ``up`` runs InnoDB's crash recovery."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, 9)
            for _ in range(100):
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                # a killed multi-threaded server shows as a zombie while its threads still exit
                # and hold its sockets: gone means the port is closed too
                if not pid_alive(pid) and not port_open(self.host, self.port, timeout=0.2):
                    break
                time.sleep(0.05)

    # --- internals ------------------------------------------------------------------
    def _init(self) -> None:
        result = subprocess.run(
            [INSTALL_DB, "--no-defaults", f"--datadir={self.data_dir}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, cwd=self.root, env=_clean_env(), stdin=subprocess.DEVNULL, check=False)
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise ServiceError(f"mariadb-install-db failed (exit {result.returncode}):\n"
                               f"{(result.stdout + result.stderr)[-2000:]}")

    def _ensure_database(self) -> None:
        """The database, and root@127.0.0.1 (TCP clients; the installer makes root@localhost only);
        kept out of the binary log: a restart adds no transactions for CDC to read."""
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True, connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION sql_log_bin = 0")
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}` CHARACTER SET utf8mb4")
                cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
        finally:
            conn.close()


def _exited(pid: int) -> bool:
    """Whether our child ``pid`` has ended (its exit status is the answer: no guessing from /proc)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (or reaped already): ask /proc
        return not pid_alive(pid)
    return done == pid


def server_version() -> str:
    out = subprocess.run([MARIADBD, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL", "MARIADB"))}
    env.setdefault("LANG", "C.UTF-8")
    return env


def _tail_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-30:]) or tail(path)
