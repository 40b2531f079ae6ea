"""The notes' other answer to "two relays, one row": lanes owned through a lock in Redis (with
expiry) instead of PostgreSQL's session advisory locks. An experiment, not a relay option: the
test beside it (``tests/test_relay_locks.py``) shows it is not safe, which is why the relay does
not offer it.

``python -m tests.redis_lock_relay NAME`` runs one relay with the settings from the environment
(``STREAMS_REDIS_URL``, ``STREAMS_TEST_LOCK_TTL_MS``). It is :class:`~streams.outbox.relay.Relay`
with one change: :meth:`RedisLockRelay._rebalance` takes and keeps lanes with the single-instance
form of Redlock — ``SET lane NAME NX PX ttl`` to take a lane, a compare-and-``PEXPIRE`` script to
renew it every 2 s, a compare-and-``DEL`` to give it back; members count each other by keys
that expire the same way. A lock that expires is someone else's at once, whatever its former
holder is doing.

``STREAMS_TEST_FREEZE_FILE`` names a file the test creates to freeze this relay: at its next
batch, right after the claim and before any row is handed to Kafka, the relay removes the file
and stops itself (``SIGSTOP``) until the test sends ``SIGCONT``. So the freeze always lands
where the notes' question puts it: rows claimed and locked, none sent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
from pathlib import Path

from streams.outbox.relay import Relay
from streams.outbox.schema import LANES
from streams.settings import load_settings

log = logging.getLogger("streams.outbox.relay")

RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisLockRelay(Relay):
    """A status-mode relay whose lanes are Redis locks with expiry (see the module docstring)."""

    ttl_ms = int(os.environ.get("STREAMS_TEST_LOCK_TTL_MS", "5000"))

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(self.settings.redis_connection_url)
        database = self.settings.dsn.rsplit("/", 1)[-1]
        self.prefix = f"streams-relay:{database}:{self.table}"

    async def _publish_and_mark(self, conn, rows):
        freeze = os.environ.get("STREAMS_TEST_FREEZE_FILE")
        if freeze:
            try:
                Path(freeze).unlink()
            except FileNotFoundError:
                pass
            else:
                log.warning("relay %s frozen with %d claimed rows (the test asked for it)", self.name, len(rows))
                os.kill(os.getpid(), signal.SIGSTOP)
        return await super()._publish_and_mark(conn, rows)

    async def _rebalance(self) -> None:
        r, name, ttl = self.redis, self.name, self.ttl_ms
        await r.set(f"{self.prefix}:member:{name}", name, px=ttl)
        members = max(1, len(await r.keys(f"{self.prefix}:member:*")))
        target = math.ceil(LANES / members)
        for lane in sorted(self.lanes):
            if not await r.eval(RENEW, 1, f"{self.prefix}:lane:{lane}", name, ttl):
                self.lanes.discard(lane)
                log.warning("relay %s lost lane %d (its lock expired)", name, lane)
        if len(self.lanes) > target:
            for lane in sorted(self.lanes, reverse=True)[: len(self.lanes) - target]:
                await r.eval(RELEASE, 1, f"{self.prefix}:lane:{lane}", name)
                self.lanes.discard(lane)
        start = hash(name) % LANES
        for i in range(LANES):
            if len(self.lanes) >= target:
                break
            lane = (start + i) % LANES
            if lane not in self.lanes and await r.set(f"{self.prefix}:lane:{lane}", name, nx=True, px=ttl):
                self.lanes.add(lane)


async def main(name: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    relay = RedisLockRelay(load_settings(), name=name)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, relay.stop)
    await relay.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
