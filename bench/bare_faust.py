"""A bare faust-streaming agent: Faust's own ceiling on this machine (benchmark peer).

``python -m bench.bare_faust worker -l info --without-web`` with ``STREAMS_*``
settings (bootstrap, app id = group id, topic prefix, data dir). The agent does
nothing (``async for value in stream: pass``) on raw values: no decode, no
dedup, memory store, Faust's own acknowledgements and commits.
"""

from __future__ import annotations

from pathlib import Path

import faust

from bench.messages import PARTITIONS, TOPIC
from streams import load_settings

settings = load_settings()
datadir = Path(settings.worker_data_dir or settings.home_path / "bare")
datadir.mkdir(parents=True, exist_ok=True)  # Faust writes its lock file there before creating it
app = faust.App(
    settings.app_id,
    broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
    store="memory://",
    datadir=str(datadir),
    broker_commit_interval=settings.broker_commit_interval,
    consumer_auto_offset_reset="earliest",
    topic_disable_leader=True,
    web_enabled=False,
)
pings = app.topic(f"{settings.topic_prefix}{TOPIC}", partitions=PARTITIONS, key_serializer="raw",
                  value_serializer="raw")


@app.agent(pings)
async def bare(stream) -> None:
    async for _ in stream:
        pass


if __name__ == "__main__":
    app.main()
