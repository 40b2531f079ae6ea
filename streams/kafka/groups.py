"""What the broker knows about a consumer group: its state, its members and
which partitions each member holds.

Used by ``streams lag`` (who owns a partition) and ``streams offsets reset``
(refuse while the group has active members, as Kafka's own tool does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import for_code

from streams.kafka.clients import admin_client, with_coordinator
from streams.settings import Settings

#: group states in which no member holds partitions
INACTIVE_STATES = frozenset({"Empty", "Dead"})


@dataclass(frozen=True)
class GroupMember:
    """One live member of a group and the partitions assigned to it."""

    member_id: str
    client_id: str
    host: str
    partitions: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class GroupDescription:
    """A group as the coordinator describes it (``state`` is Kafka's: Stable, Empty, Dead, ...)."""

    group: str
    state: str
    protocol_type: str
    members: tuple[GroupMember, ...] = field(default_factory=tuple)

    @property
    def active(self) -> bool:
        """True while the group has members (a running or rebalancing consumer group)."""
        return bool(self.members) or self.state not in INACTIVE_STATES

    def owner_of(self, topic: str, partition: int) -> GroupMember | None:
        """The member that holds ``topic[partition]`` now, if any."""
        for member in self.members:
            if (topic, partition) in member.partitions:
                return member
        return None


def _decode_assignment(raw: bytes | None) -> tuple[tuple[str, int], ...]:
    if not raw:
        return ()
    try:
        assignment = ConsumerProtocolMemberAssignment.decode(raw)
    except Exception:  # noqa: BLE001 - a non-consumer protocol (e.g. Connect): no partitions to show
        return ()
    return tuple((tp.topic, tp.partition) for tp in assignment.partitions())


async def describe_group(settings: Settings, group: str) -> GroupDescription:
    """Ask the group's coordinator for its state and members (retried while the coordinator
    moves or is still loading the group: both come back as error codes inside the answer)."""
    admin = admin_client(settings)
    await admin.start()

    async def ask() -> GroupDescription:
        for response in await admin.describe_consumer_groups([group]):
            for entry in response.groups:
                error_code, group_id, state, protocol_type, _protocol, members = entry[:6]
                if group_id != group:
                    continue
                if error_code:
                    raise for_code(error_code)(f"describing consumer group {group!r} failed")
                return GroupDescription(
                    group=group_id,
                    state=state,
                    protocol_type=protocol_type,
                    members=tuple(
                        GroupMember(member_id, client_id, host.lstrip("/"), _decode_assignment(assignment))
                        for member_id, client_id, host, _metadata, assignment in members
                    ),
                )
        return GroupDescription(group, "Dead", "")

    try:
        return await with_coordinator(ask)
    finally:
        await admin.close()
