"""Topics on the broker: list, describe (partitions, leaders, offsets, configs), create."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from streams.kafka.admin import TopicSpec, new_topic, wait_for_topic_metadata
from streams.kafka.clients import admin_client, on_a_live_broker
from streams.kafka.lag import log_offsets
from streams.settings import Settings

#: describe_configs' ``config_source`` for a value set on the topic itself
_TOPIC_OVERRIDE = 1


@dataclass(frozen=True)
class TopicSummary:
    name: str
    partitions: int
    replication_factor: int
    internal: bool


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    start: int
    end: int

    @property
    def records(self) -> int:
        """Records retained now (end − start; an upper bound on a compacted topic)."""
        return self.end - self.start


@dataclass(frozen=True)
class TopicDescription:
    name: str
    internal: bool
    partitions: tuple[PartitionInfo, ...]
    #: configs set on the topic (or all of them, when asked)
    configs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "internal": self.internal,
                "partitions": [{**p.__dict__, "replicas": list(p.replicas), "isr": list(p.isr),
                                "records": p.records} for p in self.partitions],
                "configs": self.configs}


async def list_topics(settings: Settings, *, include_internal: bool = False) -> list[TopicSummary]:
    """Every topic with its partition count and replication factor, sorted by name."""
    admin = admin_client(settings)
    await admin.start()
    try:
        described = await on_a_live_broker(admin.describe_topics)
    finally:
        await admin.close()
    out = []
    for t in described:
        if t["is_internal"] and not include_internal:
            continue
        parts = t["partitions"]
        out.append(TopicSummary(t["topic"], len(parts), max((len(p["replicas"]) for p in parts), default=0),
                                bool(t["is_internal"])))
    return sorted(out, key=lambda s: s.name)


async def describe_topic(settings: Settings, name: str, *, all_configs: bool = False) -> TopicDescription:
    """Partitions (leader, replicas, in-sync replicas, log start/end) and configs of one topic."""
    admin = admin_client(settings)
    await admin.start()
    try:
        described = await on_a_live_broker(lambda: admin.describe_topics([name]))
        if not described or described[0]["error_code"]:
            code = described[0]["error_code"] if described else 3
            if code == 3:  # UNKNOWN_TOPIC_OR_PARTITION
                raise LookupError(f"topic {name!r} does not exist")
            raise for_code(code)(f"describing topic {name!r} failed")
        responses = await on_a_live_broker(
            lambda: admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)]))
    finally:
        await admin.close()
    configs: dict[str, str] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            for entry in resource["config_entries"]:
                if all_configs or entry.get("config_source") == _TOPIC_OVERRIDE:
                    configs[entry["config_names"]] = "******" if entry["is_sensitive"] else entry["config_value"]
    offsets = await log_offsets(settings, [name])
    t = described[0]
    partitions = tuple(sorted(
        (PartitionInfo(p["partition"], p["leader"], tuple(p["replicas"]), tuple(p["isr"]),
                       *offsets[(name, p["partition"])]) for p in t["partitions"]),
        key=lambda p: p.partition))
    return TopicDescription(name, bool(t["is_internal"]), partitions, dict(sorted(configs.items())))


async def create_topic(settings: Settings, name: str, partitions: int, replication_factor: int | None,
                       configs: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """Create a topic (replication None: the settings' and cluster's default, see
    :meth:`Settings.replication`); returns its replication factor and configs. Raises
    ``TopicAlreadyExistsError`` if it exists."""
    admin = admin_client(settings)
    await admin.start()
    try:
        if name in await admin.list_topics():
            raise TopicAlreadyExistsError(f"topic {name!r} already exists")
        brokers = len(admin._client.cluster.brokers()) or 1  # noqa: SLF001
        request = new_topic(settings, TopicSpec(name, partitions, replication_factor, configs), brokers)
        response = await admin.create_topics([request])
        for entry in getattr(response, "topic_errors", []) or []:
            topic, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else ""
            if code:
                raise for_code(code)(f"creating {topic!r} failed: {message}")
        await wait_for_topic_metadata(admin._client, {name: partitions})  # noqa: SLF001
        return request.replication_factor, dict(request.topic_configs)
    finally:
        await admin.close()
