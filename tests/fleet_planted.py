"""A fleet with planted topology problems, for ``microagent check`` (see tests/contract/test_fleet.py)."""
from __future__ import annotations

import msgspec

from microagent import MicroAgent, Queue, Signal, consumer, receiver


class Order(msgspec.Struct):
    order_id: int


class Refund(msgspec.Struct):
    order_id: int
    amount: int


orphan = Signal('planted_orphan', Order)  # received, never sent
unheard = Signal('planted_unheard', Order)  # sent, never received
typed = Signal('planted_typed', Order)
lookup = Signal('planted_lookup', Order)  # answered, but no answer type
work = Queue('planted_work', Order)  # consumed, never sent


class Sender(MicroAgent):
    sends = (unheard, typed, lookup)


class Receiver(MicroAgent):
    @receiver(orphan)
    async def on_orphan(self, order: Order) -> None:
        pass

    @receiver(typed)  # type: ignore[arg-type]  # planted: mypy sees it too, `microagent check` reports it
    async def on_typed(self, refund: Refund) -> None:
        pass

    @receiver(lookup)
    async def on_lookup(self, order: Order) -> int:
        return order.order_id

    @consumer(work)
    async def on_work(self, order: Order) -> None:
        pass


BUS = {'default': {'backend': 'microagent.tools.memory.MemorySignalBus', 'dsn': 'memory://planted'}}
BROKER = {'default': {'backend': 'microagent.tools.memory.MemoryBroker', 'dsn': 'memory://planted'}}
AGENT = {
    'sender': {'backend': 'tests.fleet_planted.Sender', 'bus': 'default'},
    'receiver': {'backend': 'tests.fleet_planted.Receiver', 'bus': 'default', 'broker': 'default'},
}
