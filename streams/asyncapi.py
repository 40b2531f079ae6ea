"""An AsyncAPI 3.0 document of one or more apps: their topics, messages and consumer groups.

:func:`document` reads what the apps declare — no broker is asked:

* **channels**: every declared topic (sources, outputs, change-event topics), each handler's
  retry topics and dead-letter topic, and the topics the app's service writes through the
  outbox (:meth:`~streams.app.StreamsApp.outbox_route`); Kafka channel bindings give the
  partition count;
* **messages**: one per message type, its payload the envelope as it is on the wire (the
  payload model's JSON Schema, the envelope's fields, the type and kind as constants), its
  record headers, its key (the Kafka message binding) and its kind (a tag ``event`` or
  ``command``); change-event topics carry Debezium's change events instead, and dead-letter
  topics the original record with the ``dlq.*`` headers;
* **operations**: each handler receives (Kafka operation binding: its consumer group, the
  app id) on its source and retry topics, and sends retry copies and dead letters; an app
  sends to its outputs and its outbox routes.

``streams asyncapi --app MODULE:app`` prints it; the worker's web views serve it at
``/asyncapi.json`` and as a page at ``/asyncapi``. Its validity is checked with the AsyncAPI
initiative's own parser (``scripts/asyncapi-validate.sh``, run by ``make test``).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from streams.kafka.names import retry_topic
from streams.messages.envelope import CONTENT_TYPE, SCHEMA_VERSION, Kind

if TYPE_CHECKING:
    from streams.app import StreamsApp
    from streams.consume.spec import StreamTopic
    from streams.messages.registry import MessageSpec

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"
_COMPONENT = "#/components/schemas/{model}"

_DLQ_HEADERS = {
    "dlq.reason": "why it was parked: not_json, not_envelope, unknown_type, kind_mismatch, invalid_payload, "
                  "handler_error, too_large, too_deep, bad_headers (change topics: not_change_event, unknown_table, "
                  "schema_change)",
    "dlq.error.type": "the exception's class",
    "dlq.error.message": "the exception's text (first 2,000 characters)",
    "dlq.traceback": "the last frames of the traceback",
    "dlq.original.topic": "the topic the record came from",
    "dlq.original.partition": "its partition",
    "dlq.original.offset": "its offset",
    "dlq.attempts": "handler attempts made (0: never decoded)",
    "dlq.agent": "the handler that gave up",
    "dlq.first_failed_at": "ISO-8601 time of the first failure",
    "dlq.failed_at": "ISO-8601 time it was parked",
    "dlq.value_omitted": "only when the value was too large for a dead letter: its size (it stays in the source topic)",
}
_RETRY_HEADERS = {
    "retry.level": "the retry level (1, 2, ...)",
    "retry.due_at": "epoch seconds when it is due",
    "retry.attempts": "attempts made so far",
    "retry.first_failure": "epoch seconds of the first failure",
    "retry.original.topic": "the source topic",
    "retry.original.partition": "the source partition",
    "retry.original.offset": "the source offset",
    "retry.error": "the last error",
}


def _id(text: str) -> str:
    """A channel or operation id AsyncAPI accepts."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", text)


class _Builder:
    def __init__(self, title: str, description: str) -> None:
        self.doc: dict[str, Any] = {
            "asyncapi": ASYNCAPI_VERSION,
            "info": {"title": title, "version": "1", "description": description},
            "defaultContentType": "application/json",
            "channels": {},
            "operations": {},
            "components": {"schemas": {}, "messages": {}},
        }
        self.channels: dict[str, Any] = self.doc["channels"]
        self.operations: dict[str, Any] = self.doc["operations"]
        self.schemas: dict[str, Any] = self.doc["components"]["schemas"]
        self.messages: dict[str, Any] = self.doc["components"]["messages"]

    # --- schemas and messages ---------------------------------------------------------
    def schema_of(self, model: Any) -> dict[str, Any]:
        """A model's JSON Schema with its definitions moved to components/schemas."""
        schema = model.model_json_schema(mode="validation", ref_template=_COMPONENT)
        for name, definition in schema.pop("$defs", {}).items():
            existing = self.schemas.get(name)
            if existing is not None and existing != definition:
                raise ValueError(f"two different models are named {name!r}: rename one (AsyncAPI components "
                                 "are shared by name)")
            self.schemas[name] = definition
        return schema

    def envelope_message(self, spec: "MessageSpec", typed: Any) -> str:
        name = _id(spec.message_type)
        if name in self.messages:
            return name
        payload = self.schema_of(typed)
        payload["title"] = f"{spec.message_type} envelope"
        props = payload.setdefault("properties", {})
        props["message_type"] = {"type": "string", "const": spec.message_type}
        props["kind"] = {"type": "string", "const": spec.kind.value}
        headers: dict[str, Any] = {
            "message_id": {"type": "string", "description": "the envelope's message_id (consumers deduplicate by it)"},
            "message_type": {"type": "string", "const": spec.message_type},
            "kind": {"type": "string", "const": spec.kind.value},
            "content-type": {"type": "string", "const": CONTENT_TYPE},
        }
        if spec.version > 1:
            headers[SCHEMA_VERSION] = {"type": "string", "const": str(spec.version),
                                       "description": "the payload's schema version"}
        self.messages[name] = {
            "name": spec.message_type,
            "title": spec.message_type,
            "summary": (spec.model.__doc__ or "").strip().split("\n")[0] or f"{spec.kind.value} {spec.message_type}",
            "contentType": "application/json",
            "tags": [{"name": spec.kind.value}],
            "headers": {"type": "object", "properties": headers, "required": ["message_id", "message_type", "kind"]},
            "payload": payload,
            "bindings": {"kafka": {"key": {"type": "string", "description": "the envelope's key: the ordering key "
                                                                            "(UTF-8); same key, same partition"},
                                   "bindingVersion": KAFKA_BINDING}},
            "x-streams-kind": spec.kind.value,
            "x-streams-version": spec.version,
        }
        return name

    def change_message(self, message_type: str, table: str, row: Any) -> str:
        name = _id(message_type)
        if name in self.messages:
            return name
        row_schema = self.schema_of(row)
        nullable_row = {"anyOf": [row_schema, {"type": "null"}]}
        self.messages[name] = {
            "name": message_type,
            "title": f"change of {table}",
            "summary": f"A Debezium change event of table {table} (handlers get it as {message_type}).",
            "contentType": "application/json",
            "tags": [{"name": Kind.EVENT.value}, {"name": "cdc"}],
            "payload": {"type": "object", "properties": {
                "before": nullable_row, "after": nullable_row,
                "op": {"type": "string", "enum": ["c", "u", "d", "r", "t"],
                       "description": "create, update, delete, read (snapshot), truncate"},
                "source": {"type": "object", "description": "where in the log: lsn, txId, table, ..."},
                "ts_ms": {"type": "integer"}}, "required": ["op", "source"]},
            "bindings": {"kafka": {"key": {"type": "object", "description": "the row's key columns (JSON)"},
                                   "bindingVersion": KAFKA_BINDING}},
            "x-streams-kind": Kind.EVENT.value,
        }
        return name

    def dead_letter_message(self) -> str:
        name = "DeadLetter"
        if name not in self.messages:
            self.messages[name] = {
                "name": name,
                "title": "dead letter",
                "summary": "A record that could not be handled, parked with its original key, value and headers.",
                "contentType": "application/octet-stream",
                "headers": {"type": "object", "properties": {k: {"type": "string", "description": v}
                                                              for k, v in _DLQ_HEADERS.items()},
                            "required": ["dlq.reason", "dlq.original.topic", "dlq.original.partition",
                                         "dlq.original.offset"]},
                "payload": {"description": "the original record's value, byte for byte (null when dlq.value_omitted)"},
            }
        return name

    # --- channels and operations ------------------------------------------------------
    def channel(self, address: str, partitions: int, description: str, messages: list[str]) -> str:
        cid = _id(address)
        channel = self.channels.setdefault(cid, {
            "address": address, "description": description, "messages": {},
            "bindings": {"kafka": {"topic": address, "partitions": partitions, "bindingVersion": KAFKA_BINDING}},
        })
        for message in messages:
            channel["messages"][message] = {"$ref": f"#/components/messages/{message}"}
        return cid

    def operation(self, oid: str, action: str, channel: str, messages: list[str], summary: str,
                  group: str | None = None) -> None:
        op: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
        }
        if group is not None:
            op["bindings"] = {"kafka": {"groupId": {"type": "string", "enum": [group]},
                                        "bindingVersion": KAFKA_BINDING}}
        self.operations[_id(oid)] = op


def _topic_messages(b: _Builder, app: "StreamsApp", topic: "StreamTopic", types: list[str]) -> list[str]:
    if topic.decoder is not None:
        from streams.cdc.changes import change_message_type

        return [b.change_message(change_message_type(t), t, row) for t, row in topic.decoder.tables.items()
                if change_message_type(t) in types or not types]
    out = []
    for message_type in types:
        spec = app.registry.spec(message_type)
        out.append(b.envelope_message(spec, app.registry.typed(spec)))
    return out


def document(apps: list["StreamsApp"], *, title: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``apps`` (a system of services sharing topics)."""
    b = _Builder(title or apps[0].app_id,
                 "Generated by `streams asyncapi` from " + ", ".join(f"`{a.app_id}`" for a in apps)
                 + ". Every message is a JSON envelope (message_id, message_type, kind, occurred_at, key, payload) "
                   "unless said otherwise; each consumer group skips a message_id it already processed.")
    for app in apps:
        taken: dict[str, set[str]] = {}
        for spec in app.handlers.values():
            taken.setdefault(spec.topic.name, set()).update(spec.message_types)
        for topic in app.topics.values():
            types = sorted(taken.get(topic.name, set()) | set(topic.message_types)
                           | set(app.output_types.get(topic.name, ())) | set(app.outbox_routes.get(topic.name, ())))
            kind = "change events (Debezium)" if topic.decoder is not None else f"{topic.kind.value} topic"
            if topic.name in taken:
                kind += f"; what its handlers cannot handle is parked in {topic.dead_letter_name}"
            b.channel(topic.name, topic.partitions, kind, _topic_messages(b, app, topic, types))
        for name, sent in app.output_types.items():
            messages = _topic_messages(b, app, app.topics[name], list(sent))
            channel = b.channel(name, app.topics[name].partitions, "", messages)
            b.operation(f"{app.app_id}.send.{name}", "send", channel, messages, f"{app.app_id} sends to {name}")
        for name, written in app.outbox_routes.items():
            topic = app.topics[name]
            messages = _topic_messages(b, app, topic, list(written))
            channel = b.channel(name, topic.partitions, "", messages)
            b.operation(f"{app.app_id}.outbox.{name}", "send", channel, messages,
                        f"{app.app_id} writes these to its outbox table in its own transactions; the outbox relay "
                        "(streams relay) publishes them")
        for spec in app.handlers.values():
            topic = spec.topic
            messages = _topic_messages(b, app, topic, sorted(spec.message_types))
            b.operation(f"{app.app_id}.{spec.name}", "receive", _id(topic.name), messages,
                        f"{spec.name} handles {', '.join(sorted(spec.message_types))} in consumer group {app.app_id}",
                        group=app.app_id)
            for level, delay in enumerate(spec.retry.delayed_retries, start=1):
                name = retry_topic(topic.name, level)
                channel = b.channel(name, topic.partitions, f"delayed retry level {level} of {topic.name} "
                                    f"({delay:g} s): copies of records whose handler failed, with the retry.* "
                                    "headers (" + ", ".join(_RETRY_HEADERS) + ")", messages)
                b.operation(f"{app.app_id}.{spec.name}.retry-{level}.send", "send", channel, messages,
                            f"{spec.name} schedules a failed message for retry level {level}")
                b.operation(f"{app.app_id}.{spec.name}.retry-{level}", "receive", channel, messages,
                            f"{spec.name} handles it again once due", group=app.app_id)
            dlq = b.channel(topic.dead_letter_name, topic.partitions,
                            f"dead letters of {topic.name} (streams dlq list|show|replay)", [b.dead_letter_message()])
            b.operation(f"{app.app_id}.{spec.name}.park", "send", dlq, ["DeadLetter"],
                        f"{spec.name} parks what it cannot handle")
    b.doc["components"]["schemas"] = dict(sorted(b.schemas.items()))
    return b.doc


def render(doc: dict[str, Any]) -> str:
    """The document as committed (JSON, two-space indent, a final newline)."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
