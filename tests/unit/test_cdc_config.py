"""CDC specs and the Debezium config generated from them (work in progress, issue 15)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.cdc.config import CdcSpec, connector_config


def test_tables_spec_gives_a_pgoutput_connector_that_creates_its_topics() -> None:
    spec = CdcSpec(name="shop-orders", tables=["public.orders", "public.order_lines"])
    config = connector_config(spec, "postgresql://app:pw@db.example:5433/shop", replication_factor=3)
    assert config["slot.name"] == "shop_orders" and config["publication.name"] == "shop_orders_pub"
    assert config["table.include.list"] == "public.orders,public.order_lines"
    assert config["topic.prefix"] == "cdc.shop-orders" and config["snapshot.mode"] == "initial"
    assert (config["database.hostname"], config["database.port"], config["database.dbname"]) == (
        "db.example", "5433", "shop")
    assert config["topic.creation.default.replication.factor"] == "3"
    assert config["decimal.handling.mode"] == "string"
    assert all(isinstance(v, str) for v in config.values())


def test_outbox_spec_routes_by_topic_with_the_message_id() -> None:
    config = connector_config(CdcSpec(name="outbox", outbox=True), "postgresql://postgres@127.0.0.1:55432/streams")
    assert config["table.include.list"] == "public.streams_outbox" and config["snapshot.mode"] == "no_data"
    assert config["transforms.outbox.table.field.event.id"] == "message_id"
    assert config["transforms.outbox.route.topic.replacement"] == "${routedByValue}"


@pytest.mark.parametrize("bad", [{"name": "x"}, {"name": "x", "tables": ["public.a"], "outbox": True},
                                 {"name": "Bad Name", "tables": ["public.a"]}, {"name": "x", "tables": ["a"]},
                                 {"name": "x", "tables": ["public.a"], "colour": "red"}])
def test_bad_specs_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        CdcSpec(**bad)
