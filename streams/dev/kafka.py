"""A genuine single-node Apache Kafka broker (KRaft), started by the project.

The broker jars come from Maven Central through the machine's Maven (the
official ``org.apache.kafka:kafka_2.13`` artifact and its runtime dependencies,
plus a log4j2 backend), pinned to :data:`KAFKA_VERSION` and copied once into a
cache folder. The broker runs on the machine's JDK 17 with a small heap, keeps
its data and log file under a project-local folder, and is stopped by its own
process id.

Usage from the shell: ``streams dev kafka up|down|status``. From Python::

    broker = LocalKafka.from_settings(settings)
    broker.up()      # idempotent: returns at once if it already answers
    broker.down()
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from streams.dev.process import (
    ServiceError,
    file_lock,
    pid_alive,
    port_open,
    read_pid,
    spawn,
    tail,
    terminate,
)
from streams.settings import replication_defaults

#: The one place the Kafka version is pinned.
KAFKA_VERSION = "4.1.1"
#: log4j2 backend for the broker (Kafka ships none in its Maven artifacts).
LOG4J_VERSION = "2.24.3"
SCALA_BINARY = "2.13"

_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
_READY_LINE = "Kafka Server started"

log = logging.getLogger(__name__)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.streams</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{scala}</artifactId><version>{kafka}</version></dependency>
{extra}
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_TOOLS_DEP = (
    "    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>"
    "<version>{kafka}</version></dependency>"
)

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.server.name = org.apache.kafka
logger.server.level = {level}
logger.ready.name = kafka.server.KafkaRaftServer
logger.ready.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def _require(tool: str, what: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ServiceError(
            f"'{tool}' was not found on PATH. The local Kafka broker needs {what}. "
            "Install it (Debian/Ubuntu: apt-get install openjdk-17-jdk-headless maven), "
            "or point STREAMS_KAFKA_BOOTSTRAP at an existing Kafka cluster."
        )
    return path


def java_major_version(java: str) -> int:
    """Major version of the given ``java`` executable (e.g. 17)."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    text = out.stderr + out.stdout
    for token in text.split():
        token = token.strip('"')
        if token[:1].isdigit():
            head = token.split(".")[0]
            if head == "1":  # 1.8.0_x
                return int(token.split(".")[1])
            return int(head.split("-")[0].split("+")[0])
    raise ServiceError(f"could not read the Java version from: {text.strip()!r}")


def resolve_jars(cache_dir: Path, version: str = KAFKA_VERSION, with_tools: bool = False) -> Path:
    """Resolve the broker jars from Maven Central into ``cache_dir`` (once) and return the lib folder.

    ``with_tools`` adds ``kafka-tools`` (the admin CLIs such as ``kafka-consumer-groups``).
    """
    name = f"kafka-{version}" + ("-tools" if with_tools else "")
    cache_dir = Path(cache_dir).resolve()  # Maven reads a relative outputDirectory from the pom's folder
    with file_lock(cache_dir / f"{name}.lock"):
        return _resolve_jars(cache_dir, name, version, with_tools)


def _resolve_jars(cache_dir: Path, name: str, version: str, with_tools: bool) -> Path:
    lib = cache_dir / name / "lib"
    marker = cache_dir / name / ".complete"
    if marker.exists() and any(lib.glob(f"kafka_{SCALA_BINARY}-{version}.jar")):
        return lib
    mvn = _require("mvn", "Maven (to fetch the official broker jars from Maven Central)")
    work = cache_dir / name
    if lib.exists():
        shutil.rmtree(lib)
    work.mkdir(parents=True, exist_ok=True)
    pom = work / "pom.xml"
    extra = _TOOLS_DEP.format(kafka=version) if with_tools else ""
    pom.write_text(_POM.format(kafka=version, scala=SCALA_BINARY, log4j=LOG4J_VERSION, extra=extra))
    log.info("resolving Apache Kafka %s jars from Maven Central into %s", version, lib)
    cmd = [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={lib}", "-DincludeScope=runtime"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not any(lib.glob("kafka_*.jar")):
        raise ServiceError(
            f"Maven could not resolve org.apache.kafka:kafka_{SCALA_BINARY}:{version} "
            f"(exit {result.returncode}).\n{(result.stdout + result.stderr)[-3000:]}"
        )
    marker.write_text(version + "\n")
    return lib


@dataclass
class LocalKafka:
    """One local KRaft node (broker and controller in one process): jars, config, data dir,
    pid file and log. Alone it is a single-node cluster; :class:`LocalKafkaCluster` runs
    several with one controller quorum."""

    data_dir: Path
    cache_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    host: str = "127.0.0.1"
    version: str = KAFKA_VERSION
    start_timeout: float = 90.0
    log_level: str = "INFO"
    node_id: int = 1
    #: ``controller.quorum.voters``; None: this node alone
    voters: str | None = None
    #: the cluster's size (replication defaults of internal topics follow it)
    cluster_size: int = 1
    #: file holding the cluster id (shared by every node of a cluster); None: in data_dir
    cluster_id_file: Path | None = None

    @classmethod
    def from_settings(cls, settings) -> "LocalKafka | LocalKafkaCluster":
        """The local broker, or the local cluster when ``STREAMS_LOCAL_KAFKA_BROKERS`` (or the
        size recorded by ``streams dev kafka up --brokers N``) is more than one."""
        home = settings.home_path
        brokers = settings.local_kafka_nodes
        if brokers > 1:
            return LocalKafkaCluster(
                data_dir=home / "kafka", cache_dir=home / "cache", brokers=brokers,
                port=settings.local_kafka_port, controller_port=settings.local_kafka_controller_port,
                heap=settings.local_kafka_heap, start_timeout=settings.local_kafka_start_timeout,
            )
        return cls(
            data_dir=home / "kafka",
            cache_dir=home / "cache",
            port=settings.local_kafka_port,
            controller_port=settings.local_kafka_controller_port,
            heap=settings.local_kafka_heap,
            start_timeout=settings.local_kafka_start_timeout,
        )

    # --- paths ------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "data"

    # --- state ------------------------------------------------------------
    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid_alive(pid, str(self.config_file)) else None

    def is_running(self) -> bool:
        """True when our broker process lives and its port answers."""
        return self.pid() is not None and port_open(self.host, self.port)

    def status(self) -> dict:
        pid = self.pid()
        return {
            "version": self.version,
            "bootstrap": self.bootstrap,
            "pid": pid,
            "running": pid is not None,
            "answering": pid is not None and port_open(self.host, self.port),
            "data_dir": str(self.data_dir),
            "log_file": str(self.log_file),
        }

    # --- lifecycle --------------------------------------------------------
    def up(self) -> float:
        """Start the broker unless it already runs; wait until it answers.

        Returns the seconds it took (0.0 if it was already up).
        """
        if self.is_running():
            return 0.0
        java = _require("java", "a Java 17+ runtime (JDK 17)")
        major = java_major_version(java)
        if major < 17:
            raise ServiceError(f"Kafka {self.version} needs Java 17 or newer; found Java {major} at {java}")
        stale = read_pid(self.pid_file)
        if stale and pid_alive(stale, str(self.config_file)):
            # Process lives but does not answer yet (or is wedged): wait for it below.
            started = time.monotonic()
            self._wait_ready(stale, started, offset=0)
            return time.monotonic() - started
        for port in (self.port, self.controller_port):
            if port_open(self.host, port):
                raise ServiceError(
                    f"port {self.host}:{port} is already in use by another process; "
                    "set STREAMS_LOCAL_KAFKA_PORT / STREAMS_LOCAL_KAFKA_CONTROLLER_PORT to free ports"
                )
        lib = resolve_jars(self.cache_dir, self.version)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._format(java, lib)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        started = time.monotonic()
        pid = spawn(self._java_cmd(java, lib, _MAIN_CLASS, str(self.config_file)),
                    self.log_file, self.pid_file, env=self._env())
        log.info("started Kafka %s (pid %s) on %s", self.version, pid, self.bootstrap)
        self._wait_ready(pid, started, offset)
        return time.monotonic() - started

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the broker by its pid (SIGTERM, then SIGKILL after ``timeout``)."""
        pid = read_pid(self.pid_file)
        stopped = False
        if pid is not None:
            stopped = terminate(pid, str(self.config_file), timeout=timeout)
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def kill(self) -> None:
        """SIGKILL the broker (crash simulation)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, 9)
            terminate(pid, str(self.config_file), timeout=5)
        self.pid_file.unlink(missing_ok=True)

    # --- internals ----------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("KAFKA_OPTS", None)
        env.pop("JAVA_TOOL_OPTIONS", None)
        return env

    def _java_cmd(self, java: str, lib: Path, main: str, *args: str) -> list[str]:
        log4j = self.data_dir / "log4j2.properties"
        return [
            java,
            "-Xms128m", f"-Xmx{self.heap}",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp", f"{lib}/*",
            main, *args,
        ]

    def _write_config(self) -> None:
        replication, min_isr = replication_defaults(self.cluster_size)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": "1",
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(replication),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": str(replication),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            # a replica that fell behind never becomes leader: acks=all writes are never lost
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            # small machine (2 cores)
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "4",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "log.cleaner.io.buffer.size": str(512 * 1024),
            "log.cleaner.enable": "true",
            "log.cleaner.backoff.ms": "2000",
            # topics are created on purpose, with their partition count; a typo must fail loudly
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        text = "# written by streams.dev.kafka; edits are overwritten on `up`\n"
        text += "".join(f"{k}={v}\n" for k, v in props.items())
        self.config_file.write_text(text)
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(level=self.log_level))

    def _format(self, java: str, lib: Path) -> None:
        if (self.log_dirs / "meta.properties").exists():
            return
        cluster_id = shared_cluster_id(self.cluster_id_file or self.data_dir / "cluster.id")
        cmd = self._java_cmd(java, lib, _STORAGE_TOOL, "format", "-t", cluster_id,
                             "-c", str(self.config_file), "--ignore-formatted")
        result = subprocess.run(cmd, capture_output=True, text=True, env=self._env(), check=False)
        if result.returncode != 0:
            raise ServiceError(f"formatting Kafka storage failed:\n{(result.stdout + result.stderr)[-3000:]}")

    def _wait_ready(self, pid: int, started: float, offset: int) -> None:
        deadline = started + self.start_timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                raise ServiceError(
                    f"the Kafka broker (pid {pid}) exited during start-up. Last log lines "
                    f"({self.log_file}):\n{tail(self.log_file)}"
                )
            if port_open(self.host, self.port) and self._log_has_ready_line(offset):
                return
            time.sleep(0.25)
        raise ServiceError(
            f"the Kafka broker did not answer on {self.bootstrap} within {self.start_timeout:.0f}s. "
            f"Last log lines ({self.log_file}):\n{tail(self.log_file)}"
        )

    def _log_has_ready_line(self, offset: int) -> bool:
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(offset)
                return _READY_LINE.encode() in fh.read()
        except FileNotFoundError:
            return False


@dataclass
class LocalKafkaCluster:
    """Several local KRaft nodes (each broker and controller) forming one cluster.

    Node ``i`` (1-based) listens on ``port + 2(i-1)`` and its controller on
    ``controller_port + 2(i-1)``, keeps its data in ``data_dir/node-<i>``; the
    cluster id and size are recorded in ``data_dir``. With three nodes, topics get
    three replicas and ``min.insync.replicas=2`` by default (internal topics too),
    so the cluster takes acks=all writes with any one node down."""

    data_dir: Path
    cache_dir: Path
    brokers: int = 3
    port: int = 9092
    controller_port: int = 9093
    heap: str = "384m"
    host: str = "127.0.0.1"
    version: str = KAFKA_VERSION
    start_timeout: float = 120.0
    #: (port, controller port) of each node, instead of the ones derived from ``port`` (tests: free ports)
    node_ports: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        ports = self.node_ports or [(self.port + 2 * i, self.controller_port + 2 * i) for i in range(self.brokers)]
        voters = ",".join(f"{i}@{self.host}:{ports[i - 1][1]}" for i in range(1, self.brokers + 1))
        self.nodes = [
            LocalKafka(data_dir=self.data_dir / f"node-{i}", cache_dir=self.cache_dir,
                       port=ports[i - 1][0], controller_port=ports[i - 1][1],
                       heap=self.heap, host=self.host, version=self.version, start_timeout=self.start_timeout,
                       node_id=i, voters=voters, cluster_size=self.brokers,
                       cluster_id_file=self.data_dir / "cluster.id")
            for i in range(1, self.brokers + 1)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    def is_running(self) -> bool:
        return all(node.is_running() for node in self.nodes)

    def status(self) -> dict:
        nodes = [node.status() for node in self.nodes]
        return {"version": self.version, "brokers": self.brokers, "bootstrap": self.bootstrap,
                "running": all(n["running"] for n in nodes), "answering": all(n["answering"] for n in nodes),
                "data_dir": str(self.data_dir), "nodes": nodes}

    def up(self) -> float:
        """Start every node that does not run (in parallel: a quorum needs most of them) and wait
        until all answer. Returns the seconds it took (0.0 if all already ran)."""
        from concurrent.futures import ThreadPoolExecutor

        if self.is_running():
            return 0.0
        self.data_dir.mkdir(parents=True, exist_ok=True)
        resolve_jars(self.cache_dir, self.version)
        (self.data_dir / "cluster.json").write_text(f'{{"brokers": {self.brokers}}}\n')
        shared_cluster_id(self.data_dir / "cluster.id")  # one id, before the nodes start side by side
        started = time.monotonic()
        with ThreadPoolExecutor(self.brokers) as pool:
            for future in [pool.submit(node.up) for node in self.nodes]:
                future.result()
        return time.monotonic() - started

    def down(self, timeout: float = 30.0) -> bool:
        """Stop every node; True if any was running."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.brokers) as pool:
            stopped = list(pool.map(lambda node: node.down(timeout), self.nodes))
        return any(stopped)


def shared_cluster_id(path: Path) -> str:
    """The cluster id kept in ``path``, made on first use; every caller gets the same one.

    The nodes of a cluster format their storage side by side, one thread each. A
    check-then-write let two of them each make an id (seen in CI: a node's controller
    answered the others' votes with INCONSISTENT_CLUSTER_ID and start-up failed). The id
    is written to a private file and linked into place, which fails if another caller got
    there first: the file is never seen half written, and the first id stays."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    draft.write_text(_random_cluster_id() + "\n")
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_text().strip()


def _random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (as StorageTool makes).

    Like Kafka's own ``Uuid.randomUuid`` it never starts with ``-``, which the storage
    tool's command line would take for an option (1 in 64 ids did)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
