"""Kafka's own ``kafka-consumer-groups`` (ConsumerGroupCommand from the kafka-tools jar,
Maven-resolved like the broker) run with the machine's java, and its table parsed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from streams.dev.kafka import resolve_jars
from tests.harness import ROOT

CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


@dataclass(frozen=True)
class ToolRow:
    topic: str
    partition: int
    current: int | None
    end: int
    lag: int | None
    consumer_id: str | None
    client_id: str | None


def consumer_groups(bootstrap: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``kafka-consumer-groups --bootstrap-server <bootstrap> <args>``."""
    lib = resolve_jars(ROOT / ".streams" / "cache", with_tools=True)
    java = shutil.which("java")
    assert java, "java is needed for Kafka's tools"
    cmd = [java, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", f"{lib}/*", CONSUMER_GROUP_COMMAND,
           "--bootstrap-server", bootstrap, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def client_quota(bootstrap: str, producer_byte_rate: int | None) -> None:
    """``kafka-configs --alter --entity-type clients --entity-default``: every producer of the broker
    limited to ``producer_byte_rate`` bytes/s (the broker delays its answers), or no limit (None)."""
    lib = resolve_jars(ROOT / ".streams" / "cache", with_tools=True)
    java = shutil.which("java")
    assert java, "java is needed for Kafka's tools"
    change = (["--add-config", f"producer_byte_rate={producer_byte_rate}"] if producer_byte_rate is not None
              else ["--delete-config", "producer_byte_rate"])
    out = subprocess.run([java, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", f"{lib}/*", "kafka.admin.ConfigCommand",
                          "--bootstrap-server", bootstrap, "--alter", *change, "--entity-type", "clients",
                          "--entity-default"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr + out.stdout


def describe(bootstrap: str, group: str) -> list[ToolRow]:
    """Rows of ``kafka-consumer-groups --describe --group <group>``."""
    out = consumer_groups(bootstrap, "--describe", "--group", group)
    assert out.returncode == 0, out.stderr + out.stdout
    rows = []
    header = None
    for line in out.stdout.splitlines():
        cols = line.split()
        if cols[:2] == ["GROUP", "TOPIC"]:
            header = cols
            continue
        if header is None or len(cols) != len(header) or cols[0] != group:
            continue
        rec = dict(zip(header, cols, strict=False))

        def num(v: str) -> int | None:
            return None if v == "-" else int(v)

        rows.append(ToolRow(rec["TOPIC"], int(rec["PARTITION"]), num(rec["CURRENT-OFFSET"]),
                            int(rec["LOG-END-OFFSET"]), num(rec["LAG"]),
                            None if rec["CONSUMER-ID"] == "-" else rec["CONSUMER-ID"],
                            None if rec["CLIENT-ID"] == "-" else rec["CLIENT-ID"]))
    return rows
