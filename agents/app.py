"""The reference app and its topics (built only on ``streams``)."""

from __future__ import annotations

from agents.messages import registry
from streams import Kind, StreamsApp

app = StreamsApp("reference-app", registry=registry)

#: "order placed" events, keyed by order id; any service may subscribe.
order_placed_topic = app.topic("orders.order-placed", kind=Kind.EVENT, partitions=6)

#: "seller notified" events, one per order (causation_id = the OrderPlaced message id).
seller_notified_topic = app.output("sellers.seller-notified", kind=Kind.EVENT, partitions=6)

#: order key -> the seller push made for it (message id, seller, when, where).
#: Co-partitioned with the topic: same partitions, keyed by the record key (order id).
order_push_status = app.table("order-push-status", partitions=6)
