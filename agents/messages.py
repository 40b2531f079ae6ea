"""Message types of the reference application and the registry that maps them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field

from streams import MessageRegistry

registry = MessageRegistry()


@registry.event("OrderPlaced")
class OrderPlaced(BaseModel):
    """A buyer placed an order; the seller should be told (push notification)."""

    order_id: str = Field(min_length=1)
    seller_id: str = Field(min_length=1)
    buyer_id: str = Field(min_length=1)
    total_amount: Decimal = Field(ge=0)
    currency: str = Field("KRW", min_length=3, max_length=3)
    item_count: int = Field(1, ge=1)
    placed_at: datetime | None = None


@registry.event("SellerNotified")
class SellerNotified(BaseModel):
    """The seller of an order was pushed (emitted by the seller-push agent)."""

    order_id: str
    seller_id: str
    notification_id: int | None = None


@registry.command("GrantPoints")
class GrantPoints(BaseModel):
    """Credit a buyer's points for an order (a command: the points service is its one owner)."""

    order_id: str = Field(min_length=1)
    buyer_id: str = Field(min_length=1)
    points: int = Field(ge=0)
