"""The reference app and its topics (built only on ``streams``)."""

from __future__ import annotations

from streams import Kind, StreamsApp

from agents.messages import registry

app = StreamsApp("reference-app", registry=registry)

#: "order placed" events, keyed by order id; any service may subscribe.
order_placed_topic = app.topic("orders.order-placed", kind=Kind.EVENT, partitions=6)
