"""TestGroup by DSN on every server backend the registry has: a shop and a billing agent, a signal
that becomes a queue message, an RPC call, and a queue settled at the end."""
from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.testing import TestGroup
from tests.conformance.backends import REDIS_TEST_DSN, cluster_client, delete_nats_streams, drop_queues, redis_admin
from tests.redis_cluster_support import Cluster
from tests.services import NATS_DSN, REDIS_HOST, REDIS_PORT, require_nats, require_service


class Order(msgspec.Struct, frozen=True):
    order_id: int


async def run_pair(dsn: str, cleanup: Callable[[TestGroup, list[str]], Awaitable[None]]) -> None:
    """Shop turns ``placed`` into a message of ``invoices``, Billing consumes it; Shop prices by RPC."""
    suffix = uuid.uuid4().hex[:8]
    placed = Signal(f'kit_pair_placed_{suffix}', Order)
    priced = Signal(f'kit_pair_priced_{suffix}', Order, returns=int)
    invoices = Queue(f'kit_pair_invoices_{suffix}', Order)

    class Shop(MicroAgent):
        @receiver(placed)
        async def on_order(self, order: Order) -> None:
            await self.broker[invoices].send(order)

        @receiver(priced)
        async def price(self, order: Order) -> int:
            return order.order_id * 10

    class Billing(MicroAgent):
        @consumer(invoices, max_retries=0)
        async def invoice(self, order: Order) -> None:
            pass

    group = TestGroup(Shop, Billing, dsn=dsn)
    try:
        async with group:
            await group.bus[placed].send('test', Order(1))
            assert await group.handler(Billing.invoice).wait(1, timeout=10) == [Order(1)]
            assert group.sent.messages(invoices) == [Order(1)]
            assert await group.bus[priced].call('test', Order(4), timeout=10) == {Shop.price.__qualname__: 40}
            assert group.sent.answers(priced) == [{Shop.price.__qualname__: 40}]
            await group.wait_queue_empty(invoices, timeout=10)
            assert await group.broker[invoices].dead_letter_count() == 0
    finally:
        await cleanup(group, [invoices.name])


@pytest.mark.redis
async def test_an_agent_pair_runs_on_redis_by_dsn() -> None:
    require_service('Redis', REDIS_HOST, REDIS_PORT)

    async def cleanup(group: TestGroup, queues: list[str]) -> None:
        client = redis_admin(cluster=False)
        try:
            await drop_queues(client, queues, cluster=False)
        finally:
            await client.aclose()
    await run_pair(REDIS_TEST_DSN, cleanup)


@pytest.mark.nats
async def test_an_agent_pair_runs_on_nats_by_dsn() -> None:
    require_nats()

    async def cleanup(group: TestGroup, queues: list[str]) -> None:
        await delete_nats_streams(group.transports)
    await run_pair(NATS_DSN, cleanup)


async def test_an_agent_pair_runs_on_a_redis_cluster_by_dsn(redis_cluster: Cluster) -> None:
    """On the session's cluster (the ``redis_cluster`` fixture of the cluster tests starts it)."""
    async def cleanup(group: TestGroup, queues: list[str]) -> None:
        client = cluster_client()
        try:
            await drop_queues(client, queues, cluster=True)
        finally:
            await client.aclose()
    await run_pair(redis_cluster.dsn, cleanup)
