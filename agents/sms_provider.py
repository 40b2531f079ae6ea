"""A flaky SMS provider for the demo and the tests: an HTTP server that behaves like a real one on a bad day.

``POST /v1/messages`` with JSON ``{"to": ..., "text": ...}`` and an
``Idempotency-Key`` header sends one SMS. What makes it realistic:

* **rate limit**: more than ``rate`` requests per second (token bucket of
  ``burst``) get ``429 Too Many Requests`` with ``Retry-After: 1``; and, on a
  schedule that does not depend on the client's speed, the ``throttle_at``-th to
  the ``(throttle_at + throttle_count - 1)``-th request get it too;
* **outage**: from the ``outage_at``-th request on, for ``outage_seconds``, every
  request gets ``503 Service Unavailable``;
* **lost replies**: every ``lost_reply_every``-th new SMS is sent but answered
  ``504 Gateway Timeout`` (the client cannot tell it went out);
* **idempotency**: a request whose key was already sent is answered ``200``
  with ``"repeat": true`` and sends nothing, as providers that honour an
  idempotency key do. A request without a key is refused (``400``).

``GET /v1/stats`` returns the counters; :attr:`SmsProvider.sent_twice` counts
phones that got the same text more than once (what a customer would notice).
Run it alone with ``python -m agents.sms_provider --port 8025``.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import Counter

from aiohttp import web


class SmsProvider:
    """The simulator; :meth:`start` runs it in a background thread, :meth:`stop` ends it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, rate: float = 100.0, burst: int = 10,
                 outage_at: int | None = None, outage_seconds: float = 3.0, lost_reply_every: int = 0,
                 throttle_at: int | None = None, throttle_count: int = 5) -> None:
        self.host, self.port = host, port
        self.rate, self.burst = rate, burst
        self.outage_at, self.outage_seconds = outage_at, outage_seconds
        self.lost_reply_every = lost_reply_every
        self.throttle_at, self.throttle_count = throttle_at, throttle_count
        self.stats: Counter[str] = Counter()
        #: idempotency key -> (to, text)
        self.messages: dict[str, tuple[str, str]] = {}
        self._tokens, self._at = float(burst), time.monotonic()
        self._outage_until: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def sent_twice(self) -> int:
        """SMS beyond the first of the same text to the same phone."""
        with self._lock:
            return sum(n - 1 for n in Counter(self.messages.values()).values() if n > 1)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self.stats, "sent": len(self.messages), "sent_twice": sum(
                n - 1 for n in Counter(self.messages.values()).values() if n > 1)}

    # --- behaviour ------------------------------------------------------------
    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _in_outage(self) -> bool:
        now = time.monotonic()
        if self.outage_at is not None and self._outage_until is None and self.stats["requests"] >= self.outage_at:
            self._outage_until = now + self.outage_seconds
            self.stats["outages"] += 1
        return self._outage_until is not None and now < self._outage_until

    async def _send(self, request: web.Request) -> web.Response:
        with self._lock:
            self.stats["requests"] += 1
            key = request.headers.get("Idempotency-Key")
            if not key:
                self.stats["bad_requests"] += 1
                return web.json_response({"error": "Idempotency-Key header required"}, status=400)
            if self._in_outage():
                self.stats["unavailable"] += 1
                return web.json_response({"error": "service unavailable"}, status=503)
            scheduled = (self.throttle_at is not None
                         and self.throttle_at <= self.stats["requests"] < self.throttle_at + self.throttle_count)
            if scheduled or not self._take_token():
                self.stats["throttled"] += 1
                return web.json_response({"error": "rate limit exceeded"}, status=429, headers={"Retry-After": "1"})
        try:
            body = await request.json()
            to, text = str(body["to"]), str(body["text"])
        except (ValueError, KeyError, TypeError):
            with self._lock:
                self.stats["bad_requests"] += 1
            return web.json_response({"error": "body must be JSON with 'to' and 'text'"}, status=400)
        with self._lock:
            if key in self.messages:
                self.stats["repeats"] += 1
                return web.json_response({"id": key, "repeat": True})
            self.messages[key] = (to, text)
            if self.lost_reply_every and len(self.messages) % self.lost_reply_every == 0:
                self.stats["lost_replies"] += 1
                return web.json_response({"error": "gateway timeout"}, status=504)
        return web.json_response({"id": key, "repeat": False})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    # --- running --------------------------------------------------------------
    def application(self) -> web.Application:
        application = web.Application()
        application.router.add_post("/v1/messages", self._send)
        application.router.add_get("/v1/stats", self._stats)
        return application

    async def serve(self) -> None:
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    def start(self) -> "SmsProvider":
        """Serve in a daemon thread; returns when the port is listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self.serve())
            except BaseException as exc:  # noqa: BLE001 - handed to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=main, name="sms-provider", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--outage-at", type=int, default=None)
    parser.add_argument("--outage-seconds", type=float, default=3.0)
    parser.add_argument("--lost-reply-every", type=int, default=0)
    args = parser.parse_args()
    provider = SmsProvider(port=args.port, rate=args.rate, outage_at=args.outage_at,
                           outage_seconds=args.outage_seconds, lost_reply_every=args.lost_reply_every).start()
    print(f"SMS provider on {provider.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        provider.stop()


if __name__ == "__main__":
    main()
