"""A small client of Kafka Connect's REST API (the calls ``streams cdc`` makes).

Every call returns parsed JSON or raises :class:`ConnectError` with the HTTP status
and Connect's own message, e.g. ``409 Connector orders already exists`` or
``Kafka Connect at http://127.0.0.1:8083 does not answer (connection refused)``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from streams.errors import StreamsError

#: connector states as Connect reports them
RUNNING, PAUSED, STOPPED, FAILED, UNASSIGNED = "RUNNING", "PAUSED", "STOPPED", "FAILED", "UNASSIGNED"


class ConnectError(StreamsError):
    """A Connect REST call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class ConnectClient:
    """Kafka Connect's REST API at ``url`` (one worker of the cluster is enough)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    # --- transport --------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        """One request; the parsed JSON answer (None when empty) or :class:`ConnectError`."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectError(0, f"Kafka Connect at {self.url} does not answer ({reason}); "
                                  "start it with `streams dev connect up` or set STREAMS_CONNECT_URL") from None
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        if status not in ok:
            message = parsed.get("message") if isinstance(parsed, dict) else parsed
            raise ConnectError(status, f"{method} {path}: HTTP {status}: {message}")
        return parsed

    @staticmethod
    def _path(name: str, *rest: str) -> str:
        return "/connectors/" + urllib.parse.quote(name, safe="") + "".join("/" + r for r in rest)

    # --- connectors -------------------------------------------------------------
    def plugins(self) -> list[str]:
        """Connector classes the cluster can run."""
        return sorted(p["class"] for p in self.call("GET", "/connector-plugins") or [])

    def connectors(self) -> list[str]:
        return sorted(self.call("GET", "/connectors") or [])

    def exists(self, name: str) -> bool:
        try:
            self.call("GET", self._path(name))
        except ConnectError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def create(self, name: str, config: dict[str, str]) -> dict[str, Any]:
        """Create a connector (409 if one of that name exists)."""
        return self.call("POST", "/connectors", {"name": name, "config": config})

    def config(self, name: str) -> dict[str, str]:
        return self.call("GET", self._path(name, "config"))

    def status(self, name: str) -> dict[str, Any]:
        """``{"connector": {"state": ...}, "tasks": [{"id", "state", "trace"?}]}``."""
        return self.call("GET", self._path(name, "status"))

    def pause(self, name: str) -> None:
        self.call("PUT", self._path(name, "pause"))

    def resume(self, name: str) -> None:
        self.call("PUT", self._path(name, "resume"))

    def stop(self, name: str) -> None:
        """Stop the connector and its tasks (its config stays; needed to change offsets)."""
        self.call("PUT", self._path(name, "stop"))

    def restart(self, name: str, *, only_failed: bool = False) -> None:
        """Restart the connector and its tasks."""
        query = f"?includeTasks=true&onlyFailed={'true' if only_failed else 'false'}"
        self.call("POST", self._path(name, "restart") + query)

    def delete(self, name: str) -> None:
        self.call("DELETE", self._path(name))

    # --- offsets (KIP-875: the connector must be STOPPED to change them) ----------------
    def offsets(self, name: str) -> list[dict[str, Any]]:
        """``[{"partition": {...}, "offset": {...}}]``: where the connector's source stands."""
        return (self.call("GET", self._path(name, "offsets")) or {}).get("offsets", [])

    def reset_offsets(self, name: str) -> None:
        """Forget the stored positions: on resume the connector starts as a new one."""
        self.call("DELETE", self._path(name, "offsets"))

    def alter_offsets(self, name: str, offsets: list[dict[str, Any]]) -> None:
        self.call("PATCH", self._path(name, "offsets"), {"offsets": offsets})

    # --- waiting ----------------------------------------------------------------
    def state(self, name: str) -> tuple[str, list[str]]:
        """(connector state, task states)."""
        st = self.status(name)
        return st["connector"]["state"], [t["state"] for t in st.get("tasks", [])]

    def wait_for(self, name: str, state: str, timeout: float = 60.0, *, tasks: int = 1) -> None:
        """Until the connector and (for RUNNING/PAUSED) its ``tasks`` tasks are in ``state``;
        a FAILED task ends the wait with its trace."""
        deadline = time.monotonic() + timeout
        seen: tuple[str, list[str]] = ("?", [])
        while time.monotonic() < deadline:
            try:
                st = self.status(name)
            except ConnectError as exc:
                if exc.status != 404:
                    raise
                time.sleep(0.3)
                continue
            task_states = [t["state"] for t in st.get("tasks", [])]
            seen = (st["connector"]["state"], task_states)
            failed = [t for t in st.get("tasks", []) if t["state"] == FAILED]
            if failed and state in (RUNNING, PAUSED):  # a stop or delete of a failed connector goes on
                trace = (failed[0].get("trace") or "").strip().splitlines()
                raise ConnectError(500, f"connector {name}: task {failed[0]['id']} FAILED: "
                                        + " | ".join(trace[:3]))
            want_tasks = state in (RUNNING, PAUSED)
            if seen[0] == state and (not want_tasks or (len(task_states) >= tasks
                                                        and all(s == state for s in task_states))):
                return
            time.sleep(0.3)
        raise ConnectError(0, f"connector {name}: not {state} after {timeout:.0f}s (connector {seen[0]}, "
                              f"tasks {seen[1]})")
