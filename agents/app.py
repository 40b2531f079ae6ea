"""The reference app's order-side service: the seller push (consumer group ``reference-app``).

The other integrations run in their own groups (see :mod:`agents.services`).
"""

from __future__ import annotations

from agents.messages import registry
from agents.services import BASE_APP_ID, GRANT_POINTS, ORDER_PARTITIONS, ORDER_PLACED, POINTS_PARTITIONS
from streams import Kind, StreamsApp

app = StreamsApp(BASE_APP_ID, registry=registry)

#: "order placed" events, keyed by order id; any service may subscribe.
order_placed_topic = app.topic(ORDER_PLACED, kind=Kind.EVENT, partitions=ORDER_PARTITIONS)

#: "seller notified" events, one per order (causation_id = the OrderPlaced message id).
seller_notified_topic = app.output("sellers.seller-notified", kind=Kind.EVENT, partitions=6,
                                   message_types=("SellerNotified",))

#: what the order service (agents.order_service) writes through the outbox, published by ``streams relay``
app.outbox_route(ORDER_PLACED, "OrderPlaced", partitions=ORDER_PARTITIONS)
app.outbox_route(GRANT_POINTS, "GrantPoints", partitions=POINTS_PARTITIONS)

#: order key -> the seller push made for it (message id, seller, when, where).
#: Co-partitioned with the topic: same partitions, keyed by the record key (order id).
order_push_status = app.table("order-push-status", partitions=6)
