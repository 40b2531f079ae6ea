"""SMS to the buyer through a flaky provider (consumer group ``<base>.sms``).

The provider rate-limits (``429`` with ``Retry-After``), has outages (``503``)
and sometimes sends an SMS but loses the reply (``504``). The handler turns each
into the framework's vocabulary:

* ``429`` → :class:`~streams.SinkThrottled`: the partitions pause for the
  provider's ``Retry-After``; the message is tried again, no attempt used up;
* ``503``, a refused connection or a timeout → :class:`SmsProviderUnavailable`,
  which the circuit breaker counts: after three in a row it opens and the
  handler's partitions pause (lag grows in Kafka) until a probe gets through.
  Breaker failures never use up a message's attempts, so **an outage
  dead-letters nothing**;
* ``504`` (sent, reply lost) and other ``5xx`` → :class:`SmsProviderError`, retried
  in place: the retry carries the same ``Idempotency-Key`` (the message id), so
  the provider answers "repeat" instead of sending a second SMS;
* ``4xx`` → :class:`~streams.PermanentError`: the request itself is wrong, the
  message is parked in the dead-letter topic with the provider's answer.

A separate consumer group keeps the provider's trouble away from the seller push
and the search index: their partitions never wait for SMS.
"""

from __future__ import annotations

import aiohttp

from agents.config import agent_settings
from agents.messages import OrderPlaced
from agents.services import ORDER_PARTITIONS, ORDER_PLACED, service_app
from streams import (
    CircuitBreaker,
    Delivery,
    Envelope,
    Kind,
    PermanentError,
    RateLimiter,
    RetryPolicy,
    SinkThrottled,
    TransientError,
)


class SmsProviderUnavailable(TransientError):
    """The provider is down or unreachable (counted by the circuit breaker)."""


class SmsProviderError(TransientError):
    """A one-off provider failure (retried in place with the same idempotency key)."""


app = service_app("sms")
order_placed_topic = app.topic(ORDER_PLACED, kind=Kind.EVENT, partitions=ORDER_PARTITIONS)

provider_breaker = CircuitBreaker("sms-provider", failure_threshold=3, reset_timeout=1.0,
                                  trip_on=(SmsProviderUnavailable,))
provider_rate = RateLimiter("sms-provider", rate=agent_settings.sms_rate, burst=20)

_session: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    """One HTTP connection pool per worker process (created on the worker's event loop)."""
    global _session
    if _session is None or _session.closed:
        _session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=agent_settings.sms_timeout))
    return _session


def sms_text(order: OrderPlaced) -> str:
    return f"Order {order.order_id} confirmed: {order.item_count} item(s), {order.total_amount} {order.currency}."


@app.handler(order_placed_topic, "OrderPlaced", sink=(provider_breaker, provider_rate),
             retry=RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=2.0))
async def send_sms(message: Envelope[OrderPlaced], delivery: Delivery) -> None:
    """Text the buyer once per order: the provider deduplicates by ``delivery.idempotency_key``."""
    order = message.payload
    url = f"{agent_settings.sms_provider_url.rstrip('/')}/v1/messages"
    try:
        async with session().post(url, json={"to": order.buyer_id, "text": sms_text(order)},
                                  headers={"Idempotency-Key": delivery.idempotency_key}) as resp:
            status, reply = resp.status, await resp.text()
            retry_after = resp.headers.get("Retry-After", "1")
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        raise SmsProviderUnavailable(f"SMS provider at {url} unreachable: {type(exc).__name__}: {exc}") from exc
    if status == 429:
        try:
            wait = float(retry_after)
        except ValueError:
            wait = 1.0
        raise SinkThrottled(retry_after=wait, message=f"SMS provider rate limit (429, Retry-After {retry_after})")
    if status in (502, 503):
        raise SmsProviderUnavailable(f"SMS provider answered {status}: {reply[:200]}")
    if status >= 500:
        raise SmsProviderError(f"SMS provider answered {status}: {reply[:200]}")
    if status >= 400:
        raise PermanentError(f"SMS provider refused the message ({status}): {reply[:200]}")
