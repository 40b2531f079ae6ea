"""``streams``: a Kafka Streams-style consumer framework for reliable asynchronous
integration between services, built on Faust (faust-streaming) and aiokafka.

Importing it makes every aiokafka consumer of the process read records whose
header names are not UTF-8 instead of failing on them (see
:mod:`streams.faust_compat.record_headers`): workers, and the tools that read topics.
"""

from streams.app import StreamsApp, StreamTopic
from streams.background import BackgroundTasks
from streams.consume.delivery import Delivery
from streams.consume.effects import AlreadyProcessed, Effects
from streams.consume.retry import PermanentError, RetryPolicy, TransientError
from streams.consume.sink import CircuitBreaker, RateLimiter, SinkThrottled
from streams.db import Database
from streams.errors import ConfigurationError, DecodeError, DecodeReason, StreamsError
from streams.faust_compat import record_headers
from streams.messages.envelope import Envelope, Kind, command, event, new_message_id
from streams.messages.registry import MessageRegistry
from streams.settings import Settings, SettingsError, load_settings

record_headers.install()

__all__ = [
    "AlreadyProcessed",
    "BackgroundTasks",
    "CircuitBreaker",
    "ConfigurationError",
    "Database",
    "DecodeError",
    "DecodeReason",
    "Delivery",
    "Effects",
    "Envelope",
    "Kind",
    "MessageRegistry",
    "PermanentError",
    "RateLimiter",
    "RetryPolicy",
    "Settings",
    "SettingsError",
    "SinkThrottled",
    "StreamTopic",
    "StreamsApp",
    "StreamsError",
    "TransientError",
    "command",
    "event",
    "load_settings",
    "new_message_id",
]
