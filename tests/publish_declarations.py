"""Declarations ``microagent publish --module tests.publish_declarations`` finds (no server needed)."""
from __future__ import annotations

import msgspec

from microagent import Queue, Signal


class Order(msgspec.Struct, frozen=True):
    order_id: int
    note: str = ''


order_placed = Signal('publish_order_placed', Order)
orders = Queue('publish_orders', Order)
