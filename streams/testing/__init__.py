"""Testing an app's handlers without a broker: :class:`TestDriver`.

::

    from streams.testing import TestDriver

    async def test_push_seller(database_url):
        async with TestDriver(app, database=database_url) as driver:
            result = await driver.send(orders, registry.envelope(order, key=order.order_id))
            assert result.outcome == "handled"
            assert driver.messages(seller_notified)[0].payload.order_id == order.order_id

See :mod:`streams.testing.driver` and ``docs/contracts.md`` for what it proves and what
only a run on a broker proves.
"""

from streams.testing.driver import Delivered, ManualClock, Parked, Retry, TestDriver, Wait
from streams.testing.transport import Record

__all__ = ["Delivered", "ManualClock", "Parked", "Record", "Retry", "TestDriver", "Wait"]
