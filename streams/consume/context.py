"""What handling records needs from the app, in one small object.

:class:`~streams.app.StreamsApp` builds one :class:`ConsumeContext` and hands it to
every :class:`~streams.consume.runner.HandlerRunner` and to the
:class:`~streams.consume.dispatch.BatchDispatcher` (as Quix Streams hands its parts a
processing context): they see the collaborators they use, never the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.consume.committed import CommittedAtAssignment
    from streams.consume.dead_letters import DeadLetters
    from streams.consume.publishing import Publisher
    from streams.consume.retry_topics import RetryTopics
    from streams.consume.transactions import Transactions
    from streams.kafka.reprocess_windows import ReprocessWindows
    from streams.messages.registry import DecodeLimits, MessageRegistry
    from streams.metrics import Metrics
    from streams.settings import Settings


@dataclass
class ConsumeContext:
    """The collaborators of the consume path."""

    app_id: str
    settings: "Settings"
    #: the Faust app: its consumer (assignment, pauses, acknowledgements), flow control, crash
    faust: Any
    registry: "MessageRegistry"
    decode_limits: "DecodeLimits"
    metrics: "Metrics"
    transactions: "Transactions"
    publisher: "Publisher"
    dead_letters: "DeadLetters"
    retry_topics: "RetryTopics"
    #: the group's committed offsets as of the last assignment
    committed: "CommittedAtAssignment"
    #: offset ranges handled again on purpose, read on each assignment (None: not read)
    reprocess_windows: "ReprocessWindows | None" = None
