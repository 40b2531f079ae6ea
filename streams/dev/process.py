"""Small helpers to run a local service as a background process we own.

A service is started in its own session, its pid is written to a pid file, and
it is stopped by that pid only (never by name), after checking that the pid
still belongs to the command we started.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ServiceError(RuntimeError):
    """A local service could not be prepared, started or stopped."""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block:
    two processes preparing the same cache (parallel test processes) take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


#: ports handed out by :func:`free_port` and not yet given back: ``<port>`` files holding the pid
#: of the process that reserved it (machine-wide, so parallel test runs see each other's)
PORT_RESERVATIONS = Path(tempfile.gettempdir()) / "streams-ports"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now and reserved for this process (for tests and throwaway
    instances): no other process using this function gets it while this one lives.

    Picked below Linux's ephemeral range (32768+), so that the client connections
    opened between this call and the server's bind cannot take it. Probing alone is
    not enough when processes start servers side by side (two test processes, two
    test runs): each can find the same port free before either binds it — seen as a
    three-node cluster whose nodes answered another cluster's votes. The pick and the
    reservation happen under one machine-wide lock; reservations of processes that
    are gone are taken back.
    """
    import random

    with file_lock(PORT_RESERVATIONS / ".lock"):
        for _ in range(500):
            port = random.randint(20000, 32000)
            mark = PORT_RESERVATIONS / str(port)
            owner = read_pid(mark)
            if owner is not None and pid_alive(owner):
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            mark.write_text(str(os.getpid()))
            return port
    raise ServiceError("no free TCP port found in 20000-32000")


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """True when ``pid`` is a live process (and its command line contains ``marker``)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if ") Z " in stat:  # zombie: exited, not yet reaped
            return False
    except OSError:
        pass
    if marker is None:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True  # no /proc: trust the pid file
    return marker in cmdline


def spawn(cmd: list[str], log_file: Path, pid_file: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None, user: str | None = None) -> int:
    """Start ``cmd`` detached (own session), output appended to ``log_file``; returns pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
            user=user,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def terminate(pid: int, marker: str, timeout: float = 30.0) -> bool:
    """SIGTERM ``pid`` (only if it still runs ``marker``), wait, SIGKILL if needed.

    Returns True if a process was stopped.
    """
    if not pid_alive(pid, marker):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        data = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(data[-lines:])
