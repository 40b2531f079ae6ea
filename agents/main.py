"""Entry point of the reference worker: the app with every handler module loaded.

``streams worker`` loads ``agents.main:app`` by default (``STREAMS_WORKER_APP``).
"""

from agents import seller_push  # noqa: F401  (registers the handler)
from agents.app import app

__all__ = ["app"]
