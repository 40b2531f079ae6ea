"""The project's Kafka Connect worker (distributed mode) with Debezium's PostgreSQL and MariaDB connectors.

``streams dev connect up`` resolves, once, with Maven into ``<home>/cache``:

* the Connect worker: ``org.apache.kafka:connect-runtime``, ``connect-json``,
  ``connect-transforms`` at the broker's version, plus the log4j2 backend;
* Debezium's PostgreSQL connector (``io.debezium:debezium-connector-postgres``) and its
  binlog connectors for MariaDB (``debezium-connector-mariadb``) and MySQL
  (``debezium-connector-mysql``), one Debezium version for all (the newest Maven Central
  serves here with its dependencies for all three: 3.5.0.Final), Kafka's own jars
  excluded, each in its own folder under ``plugin.path`` (Connect isolates plugins per folder);

then starts ``org.apache.kafka.connect.cli.ConnectDistributed`` with its config,
offsets and status in Kafka topics (``<group>-configs|offsets|status``),
``plugin.discovery=service_load`` (2–3 s start instead of 15–19 s), its REST API
on a local port and its log under ``<home>/connect/``. Ready when the REST API
lists the Debezium connector class.

``streams dev connect up --workers 2`` starts a cluster instead
(:class:`LocalConnectCluster`): workers in one group (the same config, offsets and
status topics), REST ports ``port``, ``port + 1``, …; a worker that dies leaves the
group after its session times out (``session.timeout.ms``, 10 s) and its connectors and
tasks go to the survivors after ``scheduled.rebalance.max.delay.ms`` (Connect's default
is 5 minutes, in case the worker comes back; here ``lost_worker_delay_ms``, 0).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from streams.cdc.config import MARIADB_CONNECTOR, POSTGRES_CONNECTOR
from streams.cdc.connect_api import ConnectClient, ConnectError
from streams.dev.kafka import KAFKA_VERSION, LOG4J_VERSION, _require, java_major_version
from streams.dev.process import ServiceError, file_lock, pid_alive, port_open, read_pid, spawn, tail, terminate

DEBEZIUM_VERSION = "3.5.0.Final"
#: the connectors resolved into the plugin path (artifact ids of group io.debezium)
DEBEZIUM_CONNECTORS = ("debezium-connector-postgres", "debezium-connector-mariadb", "debezium-connector-mysql")
_MAIN_CLASS = "org.apache.kafka.connect.cli.ConnectDistributed"

log = logging.getLogger(__name__)

_WORKER_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.streams</groupId>
  <artifactId>connect-worker-jars</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-json</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-transforms</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_PLUGIN_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.streams</groupId>
  <artifactId>{artifact}-plugin</artifactId>
  <version>{debezium}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>io.debezium</groupId><artifactId>{artifact}</artifactId><version>{debezium}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
"""


def _mvn_copy(pom_text: str, work: Path, lib: Path, *extra: str) -> None:
    mvn = _require("mvn", "Maven (to fetch Kafka Connect and Debezium from Maven Central)")
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(pom_text)
    if lib.exists():
        shutil.rmtree(lib)
    result = subprocess.run([mvn, "-B", "-q", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
                             f"-DoutputDirectory={lib}", "-DincludeScope=runtime", *extra],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or not any(lib.glob("*.jar")):
        raise ServiceError(f"Maven could not resolve {work.name} (exit {result.returncode}).\n"
                           f"{(result.stdout + result.stderr)[-3000:]}")


def resolve_connect(cache_dir: Path, kafka: str = KAFKA_VERSION, debezium: str = DEBEZIUM_VERSION) -> tuple[Path, Path]:
    """(worker lib folder, plugin path) resolved once from Maven Central."""
    cache_dir = Path(cache_dir).resolve()
    worker = cache_dir / f"connect-{kafka}"
    plugins = cache_dir / f"connect-plugins-debezium-{debezium}"
    with file_lock(cache_dir / f"connect-{kafka}-{debezium}.lock"):
        if not (worker / ".complete").exists():
            log.info("resolving Kafka Connect %s jars from Maven Central", kafka)
            _mvn_copy(_WORKER_POM.format(kafka=kafka, log4j=LOG4J_VERSION), worker, worker / "lib")
            (worker / ".complete").write_text(kafka + "\n")
        if not (plugins / ".complete").exists():
            for artifact in DEBEZIUM_CONNECTORS:
                log.info("resolving Debezium %s (%s) from Maven Central", debezium, artifact)
                _mvn_copy(_PLUGIN_POM.format(debezium=debezium, artifact=artifact), plugins / "build" / artifact,
                          plugins / artifact, "-DexcludeGroupIds=org.apache.kafka")
            (plugins / ".complete").write_text(debezium + "\n")
    return worker / "lib", plugins


@dataclass
class LocalConnect:
    """One Kafka Connect worker in distributed mode: ``up``, ``down``, ``status``, ``rest``."""

    data_dir: Path
    cache_dir: Path
    bootstrap: str
    port: int = 8083
    group: str = "streams-connect"
    heap: str = "512m"
    #: how often the worker stores its connectors' source positions (what a crash re-sends)
    offset_flush_ms: int = 1000
    #: how long the group waits for a lost worker before its connectors and tasks move (cluster mode)
    lost_worker_delay_ms: int | None = None

    @classmethod
    def from_settings(cls, settings) -> "LocalConnect":
        return cls(settings.home_path / "connect", settings.home_path / "cache", settings.bootstrap_servers,
                   port=settings.local_connect_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "connect.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "connect.pid"

    def running(self) -> bool:
        return pid_alive(read_pid(self.pid_file), _MAIN_CLASS)

    def client(self, timeout: float = 30.0) -> ConnectClient:
        """The REST client of this worker."""
        return ConnectClient(self.url, timeout)

    def status(self) -> dict:
        out: dict[str, object] = {"running": self.running(), "pid": read_pid(self.pid_file), "rest": self.url,
               "bootstrap": self.bootstrap, "group": self.group, "log_file": str(self.log_file)}
        if out["running"] and port_open("127.0.0.1", self.port):
            try:
                out["plugins"] = self.client(5).plugins()
            except ConnectError:
                pass
        return out

    def _write_config(self, plugins: Path) -> Path:
        config = self.data_dir / "connect-distributed.properties"
        config.write_text("\n".join([
            f"bootstrap.servers={self.bootstrap}",
            f"group.id={self.group}",
            f"config.storage.topic={self.group}-configs",
            f"offset.storage.topic={self.group}-offsets",
            f"status.storage.topic={self.group}-status",
            "config.storage.replication.factor=1",
            "offset.storage.replication.factor=1",
            "status.storage.replication.factor=1",
            "offset.storage.partitions=5",
            "status.storage.partitions=3",
            f"offset.flush.interval.ms={self.offset_flush_ms}",
            "key.converter=org.apache.kafka.connect.json.JsonConverter",
            "value.converter=org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable=false",
            "value.converter.schemas.enable=false",
            f"listeners=http://127.0.0.1:{self.port}",
            "rest.advertised.host.name=127.0.0.1",
            f"rest.advertised.port={self.port}",
            f"plugin.path={plugins}",
            "plugin.discovery=service_load",
            # topics Debezium writes to are created by Connect with these defaults
            "topic.creation.enable=true",
            *([] if self.lost_worker_delay_ms is None
              else [f"scheduled.rebalance.max.delay.ms={self.lost_worker_delay_ms}"]),
        ]) + "\n")
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        return config

    def up(self, timeout: float = 120.0) -> float:
        """Start the worker (no-op if it runs); wait until its REST API lists the Debezium connector."""
        if self.running():
            return 0.0
        if port_open("127.0.0.1", self.port):
            raise ServiceError(f"port {self.port} is taken by another process (STREAMS_LOCAL_CONNECT_PORT)")
        java = _require("java", "a JDK 17+ (Kafka Connect)")
        if java_major_version(java) < 17:
            raise ServiceError("Kafka Connect 4.x needs Java 17 or newer")
        started = time.monotonic()
        lib, plugins = resolve_connect(self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config(plugins)
        env = {**os.environ, "KAFKA_HEAP_OPTS": f"-Xmx{self.heap}"}
        cmd = [java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
               "-cp", f"{lib}/*", _MAIN_CLASS, str(config)]
        pid = spawn(cmd, self.log_file, self.pid_file, env=env)
        while time.monotonic() - started < timeout:
            if not pid_alive(pid):
                raise ServiceError(f"Kafka Connect exited:\n{tail(self.log_file, 40)}")
            if port_open("127.0.0.1", self.port):
                try:
                    if {POSTGRES_CONNECTOR, MARIADB_CONNECTOR} <= set(self.client(5).plugins()):
                        return time.monotonic() - started
                except ConnectError:
                    pass
            time.sleep(0.5)
        raise ServiceError(f"Kafka Connect not ready after {timeout:.0f}s:\n{tail(self.log_file, 40)}")

    def down(self, timeout: float = 30.0) -> bool:
        pid = read_pid(self.pid_file)
        stopped = pid is not None and terminate(pid, _MAIN_CLASS, timeout)
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def kill(self) -> None:
        """SIGKILL (crash tests): no offset flush."""
        import signal

        pid = read_pid(self.pid_file)
        if pid is not None and pid_alive(pid, _MAIN_CLASS):
            os.kill(pid, signal.SIGKILL)
            # gone, and its REST port closed: an ``up`` right after must start a new worker (it does
            # nothing while the old pid still shows; a JVM takes a while to exit on a loaded machine)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                if not pid_alive(pid) and not port_open("127.0.0.1", self.port, timeout=0.2):
                    break
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)


@dataclass
class LocalConnectCluster:
    """``workers`` Connect workers in distributed mode in one group: ``up``, ``down``, ``status``,
    ``kill(i)`` (SIGKILL one). Worker ``i`` lives in ``<data_dir>/worker-<i>`` on REST port
    ``port + i``. The size is recorded in ``<data_dir>/cluster.json`` (later commands find it)."""

    data_dir: Path
    cache_dir: Path
    bootstrap: str
    workers: int = 2
    port: int = 8083
    group: str = "streams-connect"
    offset_flush_ms: int = 1000
    lost_worker_delay_ms: int = 0
    #: each worker's REST port, instead of ``port + i`` (tests: ports reserved with ``free_port``)
    ports: list[int] | None = None

    @classmethod
    def from_settings(cls, settings, workers: int) -> "LocalConnectCluster":
        return cls(settings.home_path / "connect", settings.home_path / "cache", settings.bootstrap_servers,
                   workers=workers, port=settings.local_connect_port)

    @property
    def nodes(self) -> list[LocalConnect]:
        return [LocalConnect(self.data_dir / f"worker-{i}", self.cache_dir, self.bootstrap, port=self._port(i),
                             group=self.group, offset_flush_ms=self.offset_flush_ms,
                             lost_worker_delay_ms=self.lost_worker_delay_ms) for i in range(self.workers)]

    def _port(self, index: int) -> int:
        return self.ports[index] if self.ports else self.port + index

    @property
    def url(self) -> str:
        """The REST URL of the first running worker (any worker serves the whole cluster)."""
        for node in self.nodes:
            if node.running():
                return node.url
        return self.nodes[0].url

    def client(self, timeout: float = 30.0) -> ConnectClient:
        return ConnectClient(self.url, timeout)

    def running(self) -> bool:
        return any(node.running() for node in self.nodes)

    def up(self, timeout: float = 120.0) -> float:
        """Start every worker that is not running; wait until each lists the Debezium connectors."""
        import json

        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "cluster.json").write_text(json.dumps({"workers": self.workers}) + "\n")
        took = [node.up(timeout) for node in self.nodes]
        return 0.0 if not any(took) else time.monotonic() - started

    def down(self, timeout: float = 30.0) -> bool:
        stopped = [node.down(timeout) for node in self.nodes]  # every one, not up to the first
        return any(stopped)

    def kill(self, index: int) -> None:
        """SIGKILL worker ``index`` (no offset flush, no leaving the group)."""
        self.nodes[index].kill()

    def worker_index(self, worker_id: str) -> int:
        """The index of the worker a Connect status names (``127.0.0.1:<port>``)."""
        port = int(worker_id.rsplit(":", 1)[1])
        return next(i for i in range(self.workers) if self._port(i) == port)

    def status(self) -> dict:
        nodes = [node.status() for node in self.nodes]
        return {"running": all(n["running"] for n in nodes), "workers": nodes, "group": self.group,
                "rest": self.url}


def recorded_workers(data_dir: Path) -> int | None:
    """The size ``streams dev connect up --workers N`` recorded (None: a single worker)."""
    import json

    try:
        return int(json.loads((data_dir / "cluster.json").read_text())["workers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
