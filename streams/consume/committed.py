"""The group's committed offsets as the broker had them when the partitions were last assigned."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.settings import Settings


class CommittedAtAssignment:
    """Committed offsets of ``group``, read once per assignment (Faust's own copy is filled only
    after its recovery, while records may already flow)."""

    def __init__(self, settings: "Settings", group: str) -> None:
        self.settings = settings
        self.group = group
        self._offsets: dict[tuple[str, int], int] | None = None

    async def __call__(self, topic: str, partition: int) -> int | None:
        """The committed offset of ``topic[partition]`` (None: never committed)."""
        if self._offsets is None:
            from streams.kafka.admin import committed_offsets

            self._offsets = await committed_offsets(self.settings, self.group)
        return self._offsets.get((topic, partition))

    def forget(self) -> None:
        """A new assignment: read them again on the next call."""
        self._offsets = None
