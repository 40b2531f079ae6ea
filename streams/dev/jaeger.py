"""The project's own trace backend: Jaeger (all in one, in-memory storage) built from its Go module.

``streams dev jaeger up`` builds ``github.com/jaegertracing/jaeger/cmd/jaeger`` once
(:data:`JAEGER_MODULE` at :data:`JAEGER_VERSION`, through the Go module proxy; a few
minutes on 2 cores) into ``~/.cache/streams/jaeger/bin`` (``STREAMS_TOOLS_CACHE``), like
the kube-apiserver of :mod:`streams.dev.kube`, and runs it with a configuration of its own
(``<home>/jaeger/config.yaml``): an OTLP receiver (HTTP on ``STREAMS_LOCAL_JAEGER_OTLP_PORT``,
default 4318), the traces kept in memory, and the query service (HTTP API on
``STREAMS_LOCAL_JAEGER_UI_PORT``, default 16686), all on 127.0.0.1. Nothing else listens.

Point a process at it with the standard variables (:meth:`LocalJaeger.otel_env`)::

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318  OTEL_SERVICE_NAME=points

The Go module carries no built web UI (the UI is a separate JavaScript project): the query
service answers its HTTP API (``/api/services``, ``/api/traces?service=…``,
``/api/traces/<trace id>``), which ``streams trace show`` reads; its ``/`` page is a placeholder.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.dev.process import ServiceError, file_lock, pid_alive, port_open, read_pid, spawn, tail, terminate

JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_VERSION = "v1.75.0"
GO = os.environ.get("STREAMS_GO", "/usr/local/go/bin/go")
#: what the pid check looks for in the process's command line
MARKER = "jaeger"


def cache_dir() -> Path:
    return Path(os.environ.get("STREAMS_TOOLS_CACHE", Path.home() / ".cache" / "streams")) / "jaeger"


def _go_env() -> dict[str, str]:
    base = cache_dir().parent / "go"
    return {**os.environ, "GOPATH": str(base), "GOMODCACHE": str(base / "mod"), "GOCACHE": str(base / "build"),
            "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}


def jaeger_binary() -> Path:
    """The ``jaeger`` binary, built from the Go module proxy on first use (then cached).

    ``go install module@version`` refuses a module whose go.mod has ``replace`` lines (Jaeger's
    has one), so a wrapper module requires Jaeger, repeats its replacements and builds the command."""
    target = cache_dir() / "bin" / f"jaeger-{JAEGER_VERSION}"
    if target.exists():
        return target
    with file_lock(cache_dir() / ".build.lock"):
        if target.exists():
            return target
        if not Path(GO).exists():
            raise ServiceError(f"Go is needed to build Jaeger once ({GO} not found; STREAMS_GO)")
        env = _go_env()
        got = subprocess.run([GO, "mod", "download", "-json", f"{JAEGER_MODULE}@{JAEGER_VERSION}"], env=env,
                             capture_output=True, text=True)
        if got.returncode:
            raise ServiceError(f"go mod download {JAEGER_MODULE}@{JAEGER_VERSION} failed: "
                               f"{got.stdout[-500:]}{got.stderr[-500:]}")
        gomod = Path(json.loads(got.stdout)["GoMod"]).read_text()
        replaces = [line.removeprefix("replace").strip() for line in gomod.splitlines()
                    if line.startswith("replace ") and "=>" in line and "./" not in line]
        src = cache_dir() / "src"
        src.mkdir(parents=True, exist_ok=True)
        (src / "go.mod").write_text(
            "module streams.local/jaeger\n\ngo 1.24.6\n\n"
            f"require {JAEGER_MODULE} {JAEGER_VERSION}\n\n"
            + "".join(f"replace {r}\n" for r in replaces))
        (src / "tools.go").write_text(f'//go:build tools\n\npackage tools\n\nimport _ "{JAEGER_MODULE}/cmd/jaeger"\n')
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(str(target) + ".partial")
        for step in ([GO, "mod", "tidy"],
                     [GO, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(partial), f"{JAEGER_MODULE}/cmd/jaeger"]):
            print(f"[jaeger] {' '.join(step[:3])} ... (Jaeger is built once, several minutes on 2 cores)", flush=True)
            got = subprocess.run(step, cwd=src, env=env, capture_output=True, text=True)
            if got.returncode:
                raise ServiceError(f"{' '.join(step[:3])} failed:\n{got.stderr[-2000:]}")
        partial.rename(target)
    return target


_CONFIG = """# written by streams (streams/dev/jaeger.py); rewritten on every start
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    traces:
      level: none
    logs:
      level: info

extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health_port}
  jaeger_query:
    storage:
      traces: memory_store
    http:
      endpoint: 127.0.0.1:{ui_port}
    grpc:
      endpoint: 127.0.0.1:{query_grpc_port}
  jaeger_storage:
    backends:
      memory_store:
        memory:
          max_traces: {max_traces}

receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp_port}

processors:
  batch:
    timeout: 200ms

exporters:
  jaeger_storage_exporter:
    trace_storage: memory_store
"""


class LocalJaeger:
    """One local Jaeger: ``up``, ``down``, ``status``, and its HTTP API (:meth:`trace`, :meth:`find_traces`)."""

    def __init__(self, root: Path, *, otlp_port: int = 4318, ui_port: int = 16686, max_traces: int = 100_000) -> None:
        self.root = root.resolve()
        self.otlp_port = otlp_port
        self.ui_port = ui_port
        self.max_traces = max_traces
        self.config = self.root / "config.yaml"
        self.log_file = self.root / "jaeger.log"
        self.pid_file = self.root / "jaeger.pid"
        self.ports_file = self.root / "ports.json"

    @classmethod
    def from_settings(cls, settings: Any) -> "LocalJaeger":
        return cls(settings.home_path / "jaeger", otlp_port=int(os.environ.get("STREAMS_LOCAL_JAEGER_OTLP_PORT", 4318)),
                   ui_port=int(os.environ.get("STREAMS_LOCAL_JAEGER_UI_PORT", 16686)))

    @property
    def otlp_endpoint(self) -> str:
        """Base URL of the OTLP/HTTP receiver (``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
        return f"http://127.0.0.1:{self.otlp_port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def otel_env(self, service_name: str | None = None) -> dict[str, str]:
        """The ``OTEL_*`` variables that send a process's traces here (200 ms export delay)."""
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
               "OTEL_BSP_SCHEDULE_DELAY": "200"}
        if service_name:
            env["OTEL_SERVICE_NAME"] = service_name
        return env

    # --- lifecycle ----------------------------------------------------------------
    def running(self) -> bool:
        return pid_alive(read_pid(self.pid_file), MARKER)

    def status(self) -> dict:
        return {"running": self.running(), "pid": read_pid(self.pid_file), "otlp_endpoint": self.otlp_endpoint,
                "api": self.ui_url, "version": JAEGER_VERSION}

    def up(self, timeout: float = 60.0) -> float:
        """Build (once) and start Jaeger (no-op if it runs); returns the seconds the start took
        (0 if it was running)."""
        if self.running():
            return 0.0
        binary = jaeger_binary()
        for port in (self.otlp_port, self.ui_port):
            if port_open("127.0.0.1", port):
                raise ServiceError(f"port {port} is taken by another process (STREAMS_LOCAL_JAEGER_OTLP_PORT, "
                                   "STREAMS_LOCAL_JAEGER_UI_PORT)")
        from streams.dev.process import free_port

        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        health = free_port()
        self.config.write_text(_CONFIG.format(otlp_port=self.otlp_port, ui_port=self.ui_port, health_port=health,
                                              query_grpc_port=free_port(), max_traces=self.max_traces))
        self.ports_file.write_text(json.dumps({"otlp": self.otlp_port, "ui": self.ui_port, "health": health}))
        # Jaeger traces itself with OpenTelemetry's Go SDK (to localhost:4317 by default): not here, and
        # none of the caller's OTEL_* settings are its own
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(OTEL_TRACES_EXPORTER="none", OTEL_SDK_DISABLED="true")
        pid = spawn([str(binary), "--config", f"file:{self.config}"], self.log_file, self.pid_file, env=env)
        while time.monotonic() - started < timeout:
            if port_open("127.0.0.1", self.otlp_port) and self.api.answers():
                return time.monotonic() - started
            if not pid_alive(pid):
                raise ServiceError(f"jaeger exited:\n{tail(self.log_file)}")
            time.sleep(0.1)
        raise ServiceError(f"jaeger not ready after {timeout:.0f}s:\n{tail(self.log_file)}")

    def down(self) -> bool:
        pid = read_pid(self.pid_file)
        stopped = pid is not None and terminate(pid, MARKER, timeout=10)
        self.pid_file.unlink(missing_ok=True)
        return stopped

    @property
    def api(self) -> "JaegerApi":
        """Its query API."""
        return JaegerApi(self.ui_url)


class JaegerApi:
    """Jaeger's query HTTP API (``/api/services``, ``/api/traces``): any Jaeger, local or not."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def answers(self) -> bool:
        try:
            self._get("/api/services")
            return True
        except (OSError, ValueError):
            return False

    def services(self) -> list[str]:
        return list(self._get("/api/services").get("data") or [])

    def trace(self, trace_id: str) -> dict | None:
        """One trace as Jaeger's API gives it (``spans``, ``processes``), or None if unknown."""
        try:
            data = self._get(f"/api/traces/{trace_id}").get("data") or []
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return data[0] if data else None

    def find_traces(self, service: str, tags: dict[str, str] | None = None, limit: int = 20,
                    lookback: str = "2h") -> list[dict]:
        """Traces of ``service`` with a span carrying ``tags`` (Jaeger's search)."""
        params = {"service": service, "limit": str(limit), "lookback": lookback}
        if tags:
            params["tags"] = json.dumps(tags)
        return list(self._get("/api/traces", params).get("data") or [])


@dataclass(frozen=True)
class SpanRow:
    """One span of a trace, for printing: its depth in the tree and what it did."""

    depth: int
    service: str
    name: str
    start_ms: float  # after the trace's first span started
    duration_ms: float
    tags: dict[str, Any]
    span_id: str
    error: bool


def span_rows(trace: dict) -> list[SpanRow]:
    """A Jaeger trace's spans as a tree, depth first, children in start order (a span whose parent
    is not in the trace is a root)."""
    spans = trace.get("spans") or []
    processes = trace.get("processes") or {}
    by_id = {s["spanID"]: s for s in spans}
    children: dict[str | None, list[dict]] = {}
    for span in spans:
        parent = next((r["spanID"] for r in span.get("references") or []
                       if r.get("refType") == "CHILD_OF" and r.get("spanID") in by_id), None)
        children.setdefault(parent, []).append(span)
    t0 = min((s["startTime"] for s in spans), default=0)
    rows: list[SpanRow] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["startTime"]):
            tags = {t["key"]: t["value"] for t in span.get("tags") or []}
            rows.append(SpanRow(depth, processes.get(span.get("processID"), {}).get("serviceName", "?"),
                                span["operationName"], (span["startTime"] - t0) / 1000, span["duration"] / 1000,
                                tags, span["spanID"], tags.get("error") is True or tags.get("otel.status_code") == "ERROR"))
            walk(span["spanID"], depth + 1)

    walk(None, 0)
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m streams.dev.jaeger build``: build (or find) the cached binary and print its path."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["build"]:
        print("usage: python -m streams.dev.jaeger build", file=sys.stderr)
        return 2
    print(jaeger_binary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
