"""Where a consumer's time goes: py-spy samples of one process, summarised.

``bench.consume --profile dedup`` runs py-spy (``py-spy record --format raw``, part
of the benchmark extra) on that variant's process while it consumes, and prints:

* the share of samples by where the innermost Python frame lives (Faust, aiokafka,
  asyncio, pydantic, RocksDB, this framework, ...): what the CPU is busy with;
* the functions with the most samples of their own (innermost frame);
* the share of samples with each of this framework's functions anywhere on the
  stack (time spent in it or below it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

#: innermost-frame file prefixes → the category reported (first match wins); py-spy gives paths
#: relative to their sys.path entry (``asyncio/events.py``, ``streams/consume/runner.py``)
CATEGORIES = [
    ("faust/", "faust"),
    ("mode/", "mode (faust's services)"),
    ("aiokafka/", "aiokafka"),
    ("pydantic", "pydantic"),
    ("rocksdict/", "rocksdict"),
    ("psycopg", "psycopg"),
    ("asyncio/", "asyncio"),
    ("json/", "json"),
    ("streams/", "streams (this framework)"),
    ("bench/", "bench app"),
]


def py_spy() -> str | None:
    """The py-spy executable next to this Python, or on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, rate: int = 200, native: bool = False) -> subprocess.Popen:
    """Sample ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks; ``native``: with C frames);
    returns the py-spy process."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install -e '.[bench]'")
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
                             "--format", "raw", "--output", str(out),
                             *(["--native"] if native else ["--nonblocking"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f]


def _path(frame: str) -> str:
    """The file of a frame ``function (path:line)``."""
    return frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]


def _in(frame: str, prefix: str) -> bool:
    path = _path(frame)
    return path.startswith(prefix) or f"/{prefix}" in path


def _category(frame: str) -> str:
    for prefix, name in CATEGORIES:
        if _in(frame, prefix):
            return name
    return "other (C code, stdlib)"


def summarise(raw: Path, top: int = 15) -> dict:
    """Categories, own-time functions and framework functions on the stack, in % of samples."""
    samples: list[tuple[list[str], int]] = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((_frames(stack), int(count)))
    total = sum(c for _, c in samples) or 1
    by_category: Counter = Counter()
    own: Counter = Counter()
    ours: Counter = Counter()
    for frames, count in samples:
        leaf = frames[-1] if frames else "?"
        by_category[_category(leaf)] += count
        own[_short(leaf)] += count
        # the framework's frames below the worker's entry point (the CLI and StreamsApp.main hold every stack)
        for name in {_short(f) for f in frames if _in(f, "streams/") and not _in(f, "streams/cli/")
                     and not f.startswith("StreamsApp.main ")}:
            ours[name] += count

    def pct(counter: Counter, n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)]
    return {"samples": total, "categories": pct(by_category, 20), "own": pct(own, top),
            "framework_on_stack": pct(ours, top)}


def _short(frame: str) -> str:
    """``function (file.py:line)`` → ``function (package/file.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    return f"{name} ({'/'.join(parts[-2:])})"


def print_summary(label: str, summary: dict) -> None:
    print(f"\n[profile] {label}: {summary['samples']} samples")
    print("  by innermost frame:")
    for name, p in summary["categories"]:
        print(f"    {p:5.1f}%  {name}")
    print("  functions with the most own samples:")
    for name, p in summary["own"]:
        print(f"    {p:5.1f}%  {name}")
    print("  framework functions on the stack:")
    for name, p in summary["framework_on_stack"]:
        print(f"    {p:5.1f}%  {name}")
