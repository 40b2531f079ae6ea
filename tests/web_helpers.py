"""Helpers for the web-view tests: workers with their web server on, and a tiny HTTP client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from streams.dev.process import free_port
from streams.dev.worker import WorkerProcess
from tests.harness import Isolated


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def web_worker(iso: Isolated, label: str, **env: str) -> tuple[WorkerProcess, str]:
    """A reference-app worker (not started) serving its web views on a free port; returns it and its base URL."""
    port = free_port()
    worker = iso.worker(label, STREAMS_WEB_PORT=str(port), STREAMS_WEB_HOST="127.0.0.1", **env)
    worker.args = ["--web-port", str(port)]
    return worker, f"http://127.0.0.1:{port}"


def http(url: str, *, token: str | None = None, method: str = "GET", headers: dict[str, str] | None = None,
         timeout: float = 30) -> Reply:
    """One request; never raises on an HTTP error status."""
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, method=method, headers=hdrs, data=b"{}" if method in ("POST", "PUT") else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


def answers(url: str) -> bool:
    """True once something answers HTTP at ``url``."""
    try:
        http(url, timeout=2)
        return True
    except OSError:
        return False
