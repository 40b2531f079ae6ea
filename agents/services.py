"""What the reference app's services share: topic names and one consumer group per integration.

Each integration is its own consumer group, so one slow or failing downstream
(the SMS provider, the search index) never holds up another's partitions:

========================  ==========================  =============================
app (consumer group)      module                      takes
========================  ==========================  =============================
``reference-app``         :mod:`agents.seller_push`   ``OrderPlaced`` (event)
``reference-app.points``  :mod:`agents.points`        ``GrantPoints`` (command)
``reference-app.search``  :mod:`agents.search_index`  ``OrderPlaced`` (event)
``reference-app.sms``     :mod:`agents.sms`           ``OrderPlaced`` (event)
========================  ==========================  =============================

``STREAMS_APP_ID`` renames the base (``<id>``, ``<id>.points``, ...). Importing
this module creates no app: each worker process builds only its own.
"""

from __future__ import annotations

from agents.messages import registry
from streams import StreamsApp, load_settings

BASE_APP_ID = "reference-app"
#: "order placed" events, keyed by order id; any service may subscribe
ORDER_PLACED = "orders.order-placed"
ORDER_PARTITIONS = 6
#: the points service's command topic, keyed by buyer id (one owner: reference-app.points)
GRANT_POINTS = "points.grant-points"
POINTS_PARTITIONS = 4
#: every service: (name, ``module:attribute`` of its StreamsApp)
SERVICES = {
    "orders": "agents.main:app",
    "points": "agents.points:app",
    "search": "agents.search_index:app",
    "sms": "agents.sms:app",
}


def service_app_id(service: str) -> str:
    """The consumer group of one integration: ``<base app id>.<service>``."""
    settings = load_settings()
    base = settings.app_id if "app_id" in settings.model_fields_set else BASE_APP_ID
    return f"{base}.{service}"


def service_app(service: str) -> StreamsApp:
    """A StreamsApp of its own consumer group (see the table above)."""
    settings = load_settings()
    return StreamsApp(registry=registry, settings=settings.model_copy(update={"app_id": service_app_id(service)}))
