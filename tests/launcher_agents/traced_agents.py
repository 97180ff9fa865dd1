"""The agents of ``traced``: a signal and a queue named after ``TRACE_TEST_ID``."""
from __future__ import annotations

import os
from pathlib import Path

import msgspec

from microagent import Message, Queue, Signal, consumer, periodic, receiver
from tests.launcher_agents.agents import Recorder

_ID = os.environ.get('TRACE_TEST_ID', 'default')


class Order(msgspec.Struct, frozen=True):
    order_id: int


placed = Signal(f'trace_placed_{_ID}', Order)
shipping = Queue(f'trace_shipping_{_ID}', Order)


class Ticker(Recorder):
    """Sends ``placed`` once, when the relay and the worker are up (a signal nobody hears is lost)."""

    sent = False

    def peers_started(self) -> bool:
        return all(Path(self.settings['dir'], f'{name}.started').exists() for name in ('relay', 'worker'))

    @periodic(period=0.05, timeout=5)
    async def tick(self) -> None:
        if not self.sent and self.peers_started():
            self.sent = True
            await self.bus[placed].send('ticker', Order(order_id=1))
            self.mark('sent')


class Relay(Recorder):
    @receiver(placed)
    async def ship(self, order: Order) -> None:
        await self.broker[shipping].send(order)


class Worker(Recorder):
    @consumer(shipping)
    async def handle(self, order: Order, message: Message) -> None:
        self.mark('handled', message.traceparent or '')
