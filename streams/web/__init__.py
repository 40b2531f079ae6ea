"""Web views of a worker: table contents, processed IDs, lag, dead letters,
outbox, health, Prometheus metrics and an HTML dashboard.

Served by each worker's Faust web server (``STREAMS_WEB_HOST`` /
``STREAMS_WEB_PORT``, default ``127.0.0.1:6066``; off with
``STREAMS_WEB_ENABLED=false``). Read-only; ``STREAMS_WEB_TOKEN`` makes every
endpoint but ``/health/*`` require ``Authorization: Bearer <token>``. The
endpoints are listed in :mod:`streams.web.api`.
"""

from streams.web.api import WebApi

__all__ = ["WebApi"]
