"""Run a ``streams worker`` as a separate OS process (demo, tests, benchmarks).

The process gets its own environment (settings travel as ``STREAMS_*``
variables), writes its log to a file, and is stopped by its own pid: SIGTERM for
a graceful stop, SIGKILL for a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streams.dev.process import ServiceError, tail

READY_MARKER = "[^Worker]: Ready"


class WorkerProcess:
    """One worker process: ``start``, ``wait_ready``, ``stop`` / ``kill``."""

    def __init__(self, env: dict[str, str], log_file: Path, *, args: list[str] | None = None,
                 cwd: Path | None = None, command: list[str] | None = None,
                 ready_marker: str = READY_MARKER) -> None:
        self.env = {**os.environ, **env}
        self.log_file = log_file
        self.args = args or ["--without-web"]
        self.cwd = cwd
        #: what to run; default ``python -m streams.cli worker <args>``
        self.command = command
        self.ready_marker = ready_marker
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def started_pid(self) -> int:
        """The process id of a started worker."""
        if self.proc is None:
            raise ServiceError("worker not started")
        return self.proc.pid

    def start(self) -> "WorkerProcess":
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the process, closed below
        try:
            self.proc = subprocess.Popen(
                self.command or [sys.executable, "-m", "streams.cli", "worker", *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True,
            )
        finally:
            log.close()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.2) -> float:
        """Wait until the worker reports it is ready (partitions assigned, tables recovered);
        its log is read every ``interval`` seconds."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.ready_marker in self.log_text():
                return time.monotonic() - started
            if self.proc is None:
                raise ServiceError("worker not started")
            if not self.running():
                raise ServiceError(f"worker exited with code {self.proc.returncode}:\n{tail(self.log_file, 40)}")
            time.sleep(interval)
        raise ServiceError(f"worker not ready after {timeout:.0f}s:\n{tail(self.log_file, 40)}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """Graceful stop (SIGTERM: Faust commits what was processed); SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None or not self.running():
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return proc.returncode

    def dump_state(self) -> None:
        """Ask a running worker to log its task stacks and consumer state (SIGUSR1)."""
        if self.proc is not None and self.running():
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)

    def kill(self) -> None:
        """Crash it (SIGKILL): no commit, no clean-up."""
        if self.proc is not None and self.running():
            self.proc.kill()
            self.proc.wait(30)
