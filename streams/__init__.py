"""``streams``: a Kafka Streams-style consumer framework for reliable asynchronous
integration between services, built on Faust (faust-streaming) and aiokafka.

Importing it makes every aiokafka consumer of the process read records whose
header names are not UTF-8 instead of failing on them (see
:mod:`streams.tolerant_records`): workers, and the tools that read topics.
"""

from streams import tolerant_records

from streams.app import StreamsApp, StreamTopic
from streams.db import Database
from streams.effects import AlreadyProcessed, Effects
from streams.envelope import Envelope, Kind, command, event, new_message_id
from streams.processing import Delivery
from streams.errors import ConfigurationError, DecodeError, DecodeReason, StreamsError
from streams.registry import MessageRegistry
from streams.retry import PermanentError, RetryPolicy, TransientError
from streams.sink import CircuitBreaker, RateLimiter, SinkThrottled
from streams.settings import Settings, SettingsError, load_settings

tolerant_records.install()

__all__ = [
    "AlreadyProcessed",
    "Effects",
    "CircuitBreaker",
    "RateLimiter",
    "SinkThrottled",
    "ConfigurationError",
    "Database",
    "DecodeError",
    "DecodeReason",
    "Delivery",
    "Envelope",
    "Kind",
    "MessageRegistry",
    "PermanentError",
    "RetryPolicy",
    "Settings",
    "SettingsError",
    "StreamTopic",
    "StreamsApp",
    "TransientError",
    "command",
    "event",
    "load_settings",
    "new_message_id",
]
