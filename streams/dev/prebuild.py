"""The test suite's built tools, prepared in the background so a first ``make test`` does not wait for them.

A fresh machine has to build ``kube-apiserver`` (about 5 minutes on 2 cores) and Jaeger from their Go
modules, and fetch ``helm``/``kubectl``, Debian's ``etcd`` and the chart's CRDs. ``make test`` runs
``python -m streams.dev.prebuild start`` first: a detached, low-priority (``nice 10``) process prepares
each missing tool in turn while lint, types, the unit tier, the docs build and the end-to-end tests
that need none of them run. A tool's user calls the same function
(:func:`streams.dev.kube.kube_apiserver`, :func:`streams.dev.jaeger.jaeger_binary`, ...); each one
holds a file lock while it builds, so a second user waits for the build in progress (or builds it
itself if the background process has not got there), never starts a second one, and never sees a
half-written binary. A failed background build is only logged: the test that needs the tool builds
it again and fails with the build's error.

``make test`` then runs the end-to-end tests that need none of them (``-m "not built_tools"``),
``python -m streams.dev.prebuild wait``, and the ``built_tools`` tests: a test never spends its own time
limit waiting for a build. Once every tool is cached, it runs them all in one go.

``python -m streams.dev.prebuild start|run|wait|ready|status``; the log is ``.streams/prebuild.log``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from streams.dev.process import pid_alive, read_pid, spawn

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / ".streams"
LOG = STATE / "prebuild.log"
PID = STATE / "prebuild.pid"
MARKER = "streams.dev.prebuild"


def _tools() -> list[tuple[str, Callable[[], object], Callable[[], bool]]]:
    """(name, prepare, is ready) for each tool, cheapest first."""
    from streams.dev import jaeger, kube

    def built(path: Callable[[], Path]) -> Callable[[], bool]:
        return lambda: path().exists()

    return [
        ("helm + kubectl", kube.helm, built(lambda: kube.cache_dir() / "bin" / "kubectl")),
        ("etcd", kube.etcd, built(lambda: kube.cache_dir() / "bin" / "etcd")),
        ("CRDs", kube.crds, lambda: False),  # Go's module cache answers at once once downloaded
        ("kube-apiserver", kube.kube_apiserver, built(lambda: kube.cache_dir() / "bin" / "kube-apiserver")),
        ("jaeger", jaeger.jaeger_binary,
         built(lambda: jaeger.cache_dir() / "bin" / f"jaeger-{jaeger.JAEGER_VERSION}")),
    ]


def missing() -> list[str]:
    """The tools not prepared yet (the CRDs are always listed: cheap to confirm)."""
    return [name for name, _, ready in _tools() if not ready() and name != "CRDs"]


def running() -> int | None:
    """The pid of a background prebuild still running, if any."""
    pid = read_pid(PID)
    return pid if pid and pid_alive(pid, MARKER) else None


def start() -> int:
    """Start the background prebuild unless every tool is ready or one already runs."""
    todo = missing()
    if not todo:
        print("[prebuild] every tool is cached")
        return 0
    if (pid := running()) is not None:
        print(f"[prebuild] already running (pid {pid}); log: {LOG}")
        return 0
    STATE.mkdir(parents=True, exist_ok=True)
    pid = spawn([sys.executable, "-m", MARKER, "run"], LOG, PID, cwd=ROOT)
    print(f"[prebuild] preparing {', '.join(todo)} in the background (pid {pid}, nice 10); log: {LOG}")
    return 0


def wait(poll: float = 5.0) -> int:
    """Wait for a background prebuild to end, then say what it left missing (those tests build it)."""
    began = time.monotonic()
    if running() is not None:
        print(f"[prebuild] waiting for the background build (log: {LOG}) ...", flush=True)
    while running() is not None:
        time.sleep(poll)
    todo = missing()
    print(f"[prebuild] done after waiting {time.monotonic() - began:.0f}s"
          + (f"; still missing: {', '.join(todo)} (see {LOG})" if todo else ""), flush=True)
    return 0


def run() -> int:
    """Prepare every tool in turn at low priority; returns 1 if one failed (it is logged)."""
    os.nice(10)
    failed = 0
    for name, prepare, ready in _tools():
        if ready():
            continue
        began = time.monotonic()
        print(f"[prebuild] {name} ...", flush=True)
        try:
            prepare()
        except Exception as exc:  # noqa: BLE001 - logged; the test needing the tool builds it again
            failed += 1
            print(f"[prebuild] {name} FAILED after {time.monotonic() - began:.0f}s: {exc}", flush=True)
        else:
            print(f"[prebuild] {name} ready in {time.monotonic() - began:.0f}s", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MARKER}", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "run", "wait", "ready", "status"],
                        help="start: in the background; run: here, in the foreground; wait: until a background "
                             "run ends; ready: exit 0 if every tool is there, 1 if not; status: what is missing")
    args = parser.parse_args(argv)
    if args.command == "start":
        return start()
    if args.command == "run":
        return run()
    if args.command == "wait":
        return wait()
    if args.command == "ready":
        return 0 if not missing() else 1
    todo = missing()
    pid = running()
    print(f"missing: {', '.join(todo) or 'nothing'}; background prebuild: {f'pid {pid}' if pid else 'not running'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
