"""Each reference integration (agents/) on the test driver: its handler, its effects in a real
PostgreSQL, no broker. Beside each one's real-broker test (test_seller_push_worker.py,
test_reference_points.py, test_reference_search.py, test_reference_sms.py), in milliseconds.

The apps are imported into this process once (``in_process_agents``), so every test here runs on
one event loop: the services' module-level connections belong to the loop that opened them.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from agents.messages import GrantPoints, OrderPlaced, registry
from streams.testing import TestDriver

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _order(tag: str, **fields) -> OrderPlaced:
    return OrderPlaced(**{"order_id": f"{tag}-{uuid.uuid4().hex[:6]}", "seller_id": "seller-7", "buyer_id": "buyer-3",
                          "total_amount": Decimal("12500"), "item_count": 2, **fields})


async def _rows(agents, query: str, *params) -> list[tuple]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(agents.database_url, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def test_seller_push_pushes_once_announces_and_remembers(in_process_agents) -> None:
    agents = in_process_agents
    app_module = agents.main
    from agents.app import order_placed_topic, order_push_status, seller_notified_topic

    order = _order("push")
    message = registry.envelope(order, key=order.order_id)
    async with TestDriver(app_module.app, database=agents.database_url) as driver:
        assert (await driver.send(order_placed_topic, message)).outcome == "handled"
        assert (await driver.send(order_placed_topic, message)).outcome == "duplicate"
        [notified] = driver.messages(seller_notified_topic)
        assert notified.payload.order_id == order.order_id and notified.causation_id == message.message_id
        assert order_push_status[order.order_id]["message_id"] == message.message_id
        bad = await driver.send_raw(order_placed_topic, b"\xff not json", key=b"k")
        assert bad.outcome == "dead_lettered" and driver.parked()[0].reason == "not_json"
    rows = await _rows(agents, "SELECT message_id FROM seller_push_notifications WHERE order_id = %s", order.order_id)
    assert rows == [(message.message_id,)]
    recorded = await _rows(agents, "SELECT outputs FROM streams_processed_messages WHERE message_id = %s",
                           message.message_id)
    assert len(recorded) == 1 and len(recorded[0][0]) == 1, "the SellerNotified output is recorded with the id"


async def test_points_credit_once_even_on_a_worker_that_lost_its_tables(in_process_agents) -> None:
    agents = in_process_agents
    points = agents.points
    buyer = f"buyer-{uuid.uuid4().hex[:6]}"
    command = registry.envelope(GrantPoints(order_id="o-1", buyer_id=buyer, points=125), key=buyer)
    async with TestDriver(points.app, database=agents.database_url) as driver:
        assert (await driver.send(points.grant_points_topic, command)).outcome == "handled"
    async with TestDriver(points.app, database=agents.database_url) as fresh:  # empty processed-ID table
        assert (await fresh.send(points.grant_points_topic, command)).outcome == "duplicate"
    assert await _rows(agents, "SELECT count(*) FROM points_ledger WHERE buyer_id = %s", buyer) == [(1,)]
    assert await _rows(agents, "SELECT points FROM points_balance WHERE buyer_id = %s", buyer) == [(125,)]


async def test_search_index_writes_one_document_with_the_seller(in_process_agents) -> None:
    agents = in_process_agents
    search = agents.search_index
    order = _order("idx", seller_id="seller-99")
    message = registry.envelope(order, key=order.order_id)
    async with TestDriver(search.app, database=agents.database_url) as driver:
        assert (await driver.send(search.order_placed_topic, message)).outcome == "handled"
        assert (await driver.send(search.order_placed_topic, message)).outcome == "duplicate"
    rows = await _rows(agents, "SELECT writes, document @@ plainto_tsquery('simple', 'seller-99') FROM order_search "
                               "WHERE order_id = %s", order.order_id)
    assert rows == [(1, True)]


async def test_sms_is_sent_once_when_the_reply_is_lost(in_process_agents, monkeypatch) -> None:
    agents = in_process_agents
    sms, provider = agents.sms, agents.sms_provider
    from agents.config import agent_settings

    monkeypatch.setattr(agent_settings, "sms_provider_url", provider.url)
    monkeypatch.setattr(provider, "lost_reply_every", 1)  # the SMS goes out, its reply is lost (504)
    order = _order("sms")
    message = registry.envelope(order, key=order.order_id)
    async with TestDriver(sms.app) as driver:
        assert (await driver.send(sms.order_placed_topic, message)).outcome == "handled"
        assert driver.counts()["retried"] == 1
        assert [w.real for w in driver.waits] == [False], "the backoff moved the driver's clock, no sleep"
    assert provider.messages[message.message_id][1].startswith(f"Order {order.order_id} ")
    assert provider.sent_twice == 0
