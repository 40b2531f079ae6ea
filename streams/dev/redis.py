"""The project's own Redis: Debian's ``redis-server`` in the foreground with a private folder.

``streams dev redis up`` runs ``redis-server`` on 127.0.0.1:``STREAMS_LOCAL_REDIS_PORT``
with its data under ``<home>/redis`` and the append-only file on, flushed every second
(``appendfsync everysec``: a crash of Redis itself loses at most the last second of
writes; a crash of a client loses nothing Redis acknowledged). No RDB snapshots. The
package's own service is never used.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from streams.dev.process import ServiceError, pid_alive, port_open, read_pid, spawn, tail, terminate

READY_MARKER = b"Ready to accept connections"


def redis_server() -> str | None:
    return os.environ.get("STREAMS_REDIS_SERVER") or shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)


class LocalRedis:
    """One private Redis server: ``up``, ``down``, ``status``, ``kill`` (crash simulation)."""

    def __init__(self, root: Path, port: int, *, appendfsync: str = "everysec", start_timeout: float = 20.0) -> None:
        self.root = root.resolve()
        self.port = port
        self.appendfsync = appendfsync
        self.start_timeout = start_timeout
        self.log_file = self.root / "redis.log"
        self.pid_file = self.root / "redis.pid"

    @classmethod
    def from_settings(cls, settings) -> "LocalRedis":
        return cls(settings.home_path / "redis", settings.local_redis_port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def _marker(self) -> str:
        return f"127.0.0.1:{self.port}"  # redis-server shows its address in its process title

    def running(self) -> bool:
        return pid_alive(read_pid(self.pid_file), self._marker)

    def status(self) -> dict:
        return {"running": self.running(), "answering": port_open("127.0.0.1", self.port), "url": self.url,
                "pid": read_pid(self.pid_file), "appendfsync": self.appendfsync, "data_dir": str(self.root / "data"),
                "log_file": str(self.log_file)}

    def up(self) -> float:
        """Start Redis (no-op if it runs); returns the seconds it took (0 if it was running)."""
        if self.running():
            return 0.0
        binary = redis_server()
        if binary is None:
            raise ServiceError("redis-server not found: install Debian's redis-server "
                               "(make test installs it with scripts/ensure-deb.sh when run as root)")
        if port_open("127.0.0.1", self.port):
            raise ServiceError(f"port {self.port} is taken by another process (STREAMS_LOCAL_REDIS_PORT)")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        started = time.monotonic()
        pid = spawn([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data),
                     "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
                     "--daemonize", "no", "--logfile", ""], self.log_file, self.pid_file)
        while time.monotonic() - started < self.start_timeout:
            with open(self.log_file, "rb") as fh:
                fh.seek(offset)
                if READY_MARKER in fh.read() and port_open("127.0.0.1", self.port):
                    return time.monotonic() - started
            if not pid_alive(pid):
                raise ServiceError(f"redis-server exited:\n{tail(self.log_file)}")
            time.sleep(0.05)
        self.down()
        raise ServiceError(f"Redis not ready after {self.start_timeout:.0f}s:\n{tail(self.log_file)}")

    def down(self, timeout: float = 20.0) -> bool:
        """SIGTERM (Redis flushes its append-only file and exits), SIGKILL after ``timeout``."""
        pid = read_pid(self.pid_file)
        stopped = pid is not None and terminate(pid, self._marker, timeout=timeout)
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def kill(self) -> None:
        """SIGKILL the server (crash simulation)."""
        pid = read_pid(self.pid_file)
        if pid is not None and pid_alive(pid, self._marker):
            os.kill(pid, 9)
            terminate(pid, self._marker, timeout=5)
        self.pid_file.unlink(missing_ok=True)
