"""The project's own RabbitMQ: Debian's ``rabbitmq-server`` as a private node in the foreground.

``streams dev rabbitmq up`` runs ``/usr/lib/rabbitmq/bin/rabbitmq-server`` (not the
``/usr/sbin`` wrapper, which switches to the ``rabbitmq`` user and resets ``HOME``) with
everything under ``<home>/rabbitmq``: the node name ``streams-<port>@localhost``, the
Erlang cookie (``HOME`` is that folder), the data (mnesia), logs, the enabled plugins
(none) and a ``rabbitmq.conf`` that listens on 127.0.0.1 only.
The node's Erlang port mapper (epmd) is ours too: started on its own port before the
node, stopped after it (the node would otherwise leave one behind).

Ports: AMQP ``STREAMS_LOCAL_RABBITMQ_PORT``; the node's distribution port
``STREAMS_LOCAL_RABBITMQ_DIST_PORT``; epmd ``STREAMS_LOCAL_RABBITMQ_EPMD_PORT``;
``rabbitmqctl`` takes ports just above the distribution port (:meth:`LocalRabbitMQ.cli_env`
is the environment to run it with). The package's own service is never used.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from streams.dev.process import ServiceError, pid_alive, port_open, read_pid, spawn, tail, terminate

log = logging.getLogger(__name__)

RABBITMQ_BIN = Path(os.environ.get("STREAMS_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
READY_MARKER = b"Server startup complete"
#: plugins enabled on the node (none is needed: lanes are computed by the publisher, streams/rabbitmq/topology.py)
PLUGINS: tuple[str, ...] = ()


def _epmd() -> str | None:
    """Erlang's port mapper: on PATH, or inside the Erlang runtime Debian installs."""
    found = shutil.which("epmd")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd")):
        return str(candidate)
    return None


class LocalRabbitMQ:
    """One private RabbitMQ node: ``up``, ``down``, ``status``, ``kill`` (crash simulation)."""

    def __init__(self, root: Path, port: int, *, dist_port: int | None = None, epmd_port: int | None = None,
                 start_timeout: float = 60.0) -> None:
        self.root = root.resolve()
        self.port = port
        self.dist_port = dist_port if dist_port is not None else port + 20000
        self.epmd_port = epmd_port if epmd_port is not None else self.dist_port + 11
        self.start_timeout = start_timeout
        self.node = f"streams-{port}@localhost"
        self.log_file = self.root / "rabbitmq.log"
        self.pid_file = self.root / "rabbitmq-server.pid"  # the start script (it forwards SIGTERM)
        self.beam_pid_file = self.root / "beam.pid"  # the Erlang VM (written by the node)
        self.epmd_pid_file = self.root / "epmd.pid"
        self.epmd_log = self.root / "epmd.log"

    @classmethod
    def from_settings(cls, settings) -> "LocalRabbitMQ":
        return cls(settings.home_path / "rabbitmq", settings.local_rabbitmq_port,
                   dist_port=settings.local_rabbitmq_dist_port, epmd_port=settings.local_rabbitmq_epmd_port)

    @property
    def url(self) -> str:
        """The AMQP URL of this node (RabbitMQ's ``guest`` user, allowed from loopback only)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def cli_env(self) -> dict[str, str]:
        """Environment of the node and of ``rabbitmqctl`` / ``rabbitmq-plugins`` talking to it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.root / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.dist_port + 1),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.dist_port + 10),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq"),  # the node reads rabbitmq.conf
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.beam_pid_file),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.root / "plugins-expand"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        return env

    # --- state ----------------------------------------------------------------------
    def beam_pid(self) -> int | None:
        pid = read_pid(self.beam_pid_file)
        return pid if pid_alive(pid, str(self.root / "home")) else None

    def running(self) -> bool:
        return pid_alive(read_pid(self.pid_file), "rabbitmq-server") and self.beam_pid() is not None

    def status(self) -> dict:
        return {"running": self.running(), "answering": port_open("127.0.0.1", self.port),
                "url": self.url, "node": self.node, "pid": read_pid(self.pid_file), "beam_pid": self.beam_pid(),
                "dist_port": self.dist_port, "epmd_port": self.epmd_port, "data_dir": str(self.root),
                "log_file": str(self.log_file)}

    # --- set-up ---------------------------------------------------------------------
    def _write_config(self) -> None:
        for sub in ("home", "mnesia", "log", "plugins-expand"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "rabbitmq-env.conf").write_text("")  # never /etc/rabbitmq/rabbitmq-env.conf
        (self.root / "rabbitmq.conf").write_text(
            "# written by streams (streams/dev/rabbitmq.py); rewritten on every start\n"
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "log.console = true\n"
            "log.console.use_colors = off\n"
            "log.console.level = info\n"
            "log.file.level = info\n")
        (self.root / "enabled_plugins").write_text(f"[{','.join(PLUGINS)}].\n")

    def _start_epmd(self) -> None:
        pid = read_pid(self.epmd_pid_file)
        if pid_alive(pid, "epmd") and port_open("127.0.0.1", self.epmd_port):
            return
        epmd = _epmd()
        if epmd is None:
            raise ServiceError("epmd not found: install Debian's rabbitmq-server (it brings Erlang)")
        if port_open("127.0.0.1", self.epmd_port):
            raise ServiceError(f"port {self.epmd_port} is taken by another process (STREAMS_LOCAL_RABBITMQ_EPMD_PORT)")
        pid = spawn([epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"], self.epmd_log,
                    self.epmd_pid_file, env=self.cli_env())
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.epmd_port):
            if not pid_alive(pid) or time.monotonic() > deadline:
                raise ServiceError(f"epmd did not start on port {self.epmd_port}:\n{tail(self.epmd_log)}")
            time.sleep(0.05)

    # --- lifecycle --------------------------------------------------------------------
    def up(self) -> float:
        """Start the node (no-op if it runs); returns the seconds it took (0 if it was running)."""
        if self.running():
            return 0.0
        script = RABBITMQ_BIN / "rabbitmq-server"
        if not script.exists():
            raise ServiceError(f"{script} not found: install Debian's rabbitmq-server "
                               "(make test installs it with scripts/ensure-deb.sh when run as root)")
        for port, name in ((self.port, "STREAMS_LOCAL_RABBITMQ_PORT"), (self.dist_port, "STREAMS_LOCAL_RABBITMQ_DIST_PORT")):
            if port_open("127.0.0.1", port):
                raise ServiceError(f"port {port} is taken by another process ({name})")
        started = time.monotonic()
        self._write_config()
        self._start_epmd()
        self.beam_pid_file.unlink(missing_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        pid = spawn([str(script)], self.log_file, self.pid_file, env=self.cli_env(), cwd=self.root)
        while time.monotonic() - started < self.start_timeout:
            with open(self.log_file, "rb") as fh:
                fh.seek(offset)
                if READY_MARKER in fh.read() and port_open("127.0.0.1", self.port):
                    log.info("RabbitMQ node %s ready on 127.0.0.1:%d", self.node, self.port)
                    return time.monotonic() - started
            if not pid_alive(pid):
                self._stop_epmd()
                raise ServiceError(f"rabbitmq-server exited:\n{tail(self.log_file)}")
            time.sleep(0.1)
        self.down()
        raise ServiceError(f"RabbitMQ not ready after {self.start_timeout:.0f}s:\n{tail(self.log_file)}")

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the node (SIGTERM to the start script, which stops the node cleanly), then its epmd."""
        pid = read_pid(self.pid_file)
        stopped = pid is not None and terminate(pid, "rabbitmq-server", timeout=timeout)
        beam = self.beam_pid()
        if beam is not None:  # the script was gone, or the node outlived it
            stopped = terminate(beam, str(self.root / "home"), timeout=timeout) or stopped
        self.pid_file.unlink(missing_ok=True)
        self._stop_epmd()
        return stopped

    def kill(self) -> None:
        """SIGKILL the Erlang VM (crash simulation); the next :meth:`up` starts it again."""
        beam = self.beam_pid()
        if beam is not None:
            os.kill(beam, 9)
            for _ in range(100):
                if not pid_alive(beam):
                    break
                time.sleep(0.05)
        pid = read_pid(self.pid_file)
        if pid is not None:
            terminate(pid, "rabbitmq-server", timeout=5)
        self.pid_file.unlink(missing_ok=True)

    def _stop_epmd(self) -> None:
        pid = read_pid(self.epmd_pid_file)
        if pid is not None:
            terminate(pid, "epmd", timeout=5)
        self.epmd_pid_file.unlink(missing_ok=True)
