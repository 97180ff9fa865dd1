"""The test kit (microagent.testing): isolated groups, probes that wait, a log of what was sent."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest
from redis.asyncio import Redis

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.testing import ExpectationFailed, NotInGroup, TestGroup
from tests.conformance.backends import REDIS_TEST_DSN

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = uuid.uuid4().hex[:8]


class Order(msgspec.Struct, frozen=True):
    order_id: int


order_placed = Signal(f'kit_order_placed_{SUFFIX}', Order)
price_asked = Signal(f'kit_price_asked_{SUFFIX}', Order, returns=int)
invoices = Queue(f'kit_invoices_{SUFFIX}', Order)


class Shop(MicroAgent):
    @receiver(order_placed)
    async def on_order(self, order: Order) -> None:
        await self.broker[invoices].send(order)

    @receiver(price_asked)
    async def price(self, order: Order) -> int:
        return order.order_id * 10


class Billing(MicroAgent):
    @consumer(invoices, max_retries=0)
    async def invoice(self, order: Order) -> None:
        if order.order_id < 0:
            raise ValueError(f'negative order {order.order_id}')


async def test_a_group_routes_a_signal_to_a_consumer_and_records_what_was_sent() -> None:
    async with TestGroup(Shop, Billing) as group:
        await group.bus[order_placed].send('test', Order(1))
        got = await group.handler(Billing.invoice).wait(1)
        assert got == [Order(1)]
        assert group.handler(Shop.on_order).models == [Order(1)]
        assert group.sent.signals(order_placed) == [Order(1)]
        assert group.sent.messages(invoices) == [Order(1)]
        await group.wait_queue_empty(invoices)


async def test_rpc_answers_are_recorded_by_signal() -> None:
    async with TestGroup(Shop) as group:
        assert await group.bus[price_asked].call('test', Order(4)) == {'Shop.price': 40}
        assert group.sent.answers(price_asked) == [{'Shop.price': 40}]


async def test_a_failing_consumer_leaves_a_dead_letter_to_wait_for() -> None:
    async with TestGroup(Billing) as group:
        await group.broker[invoices].send(Order(-1))
        letters = await group.wait_dead_letters(invoices)
        assert len(letters) == 1 and 'negative order -1' in letters[0].reason
        probe = group.handler(Billing.invoice)
        assert probe.models == [Order(-1)] and isinstance(probe.errors[0], ValueError)


async def test_a_wait_that_times_out_names_the_handler_and_what_it_got() -> None:
    async with TestGroup(Shop) as group:
        await group.bus[order_placed].send('test', Order(7))
        expected = r'handler Shop\.on_order handled 1 of 2 messages .*Order\(order_id=7\)'
        with pytest.raises(ExpectationFailed, match=expected):
            await group.handler(Shop.on_order).wait(2, timeout=0.3)


async def test_dead_letter_and_empty_waits_name_the_queue() -> None:
    async with TestGroup(Billing) as group:
        await group.broker[invoices].send(Order(2))
        with pytest.raises(ExpectationFailed, match=rf"queue 'kit_invoices_{SUFFIX}' has 0 of 1 dead letters"):
            await group.wait_dead_letters(invoices, timeout=0.3)
    async with TestGroup(Shop) as group:  # nobody consumes: the message stays
        await group.broker[invoices].send(Order(3))
        expected = rf"queue 'kit_invoices_{SUFFIX}' not settled .*1 ready, 0 delayed, 0 in flight"
        with pytest.raises(ExpectationFailed, match=expected):
            await group.wait_queue_empty(invoices, timeout=0.3)


async def test_groups_are_isolated_from_each_other() -> None:
    async with TestGroup(Billing) as first, TestGroup(Shop) as second:
        await second.bus[order_placed].send('test', Order(5))
        await second.handler(Shop.on_order).wait(1)
        assert await first.broker.queue_length(invoices.name) == 0
        assert await second.broker.queue_length(invoices.name) == 1


async def test_an_unknown_handler_or_agent_is_named_with_the_known_ones() -> None:
    async with TestGroup(Shop) as group:
        with pytest.raises(NotInGroup, match=r"Billing\.invoice'? is no receiver or consumer .*'Shop\.on_order'"):
            group.handler(Billing.invoice)
        with pytest.raises(NotInGroup, match=r"Billing is not in this group: \['Shop'\]"):
            group[Billing]


async def test_a_group_stops_its_agents_on_exit() -> None:
    async with TestGroup(Shop, settings={'x': 1}) as group:
        shop = group[Shop]
        assert shop.settings == {'x': 1}
    assert not shop._started


@pytest.mark.redis
async def test_the_same_group_runs_on_redis_by_dsn(raw: Redis) -> None:
    queue = Queue(f'kit_redis_{uuid.uuid4().hex[:8]}', Order)

    class Counter(MicroAgent):
        @consumer(queue)
        async def count(self, order: Order) -> None:
            pass

    try:
        async with TestGroup(Counter, dsn=REDIS_TEST_DSN) as group:
            await group.broker[queue].send(Order(8))
            assert await group.handler(Counter.count).wait(1) == [Order(8)]
            assert group.sent.messages(queue) == [Order(8)]
            await group.wait_queue_empty(queue)
    finally:
        await raw.delete(queue.name)
        async for key in raw.scan_iter(match=f'{queue.name}:*'):
            await raw.delete(key)


def test_the_docs_example_passes_under_a_users_own_pytest(tmp_path: Path) -> None:
    """The example of docs/testing.md, run as a new user would: a project of its own (no pytest.ini,
    no pyproject, so pytest-asyncio is in its default strict mode) with the plugin's fixtures."""
    section = (ROOT / 'docs' / 'testing.md').read_text()
    example = section[section.index('```python\n') + len('```python\n'):section.index('```\n', 10)]
    project = tmp_path / 'project'
    project.mkdir()
    (project / 'test_shop.py').write_text(example)
    (project / 'test_dsn.py').write_text(
        'def test_dsn(microagent_dsn, agent_group):\n'
        "    assert microagent_dsn == agent_group.dsn == 'memory://'\n")
    # -p no:microagent: the installed entry point (if any) gives way to the module named here
    done = subprocess.run([sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-p', 'no:microagent',
                           '-p', 'microagent.testing.pytest_plugin', '--rootdir', str(project),
                           '--microagent-dsn', 'memory://', str(project)],
                          cwd=project, env={**os.environ, 'PYTHONPATH': str(ROOT)}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'configfile' not in done.stdout and 'mode=Mode.STRICT' in done.stdout, done.stdout  # no help from us
    assert '3 passed' in done.stdout


@pytest.mark.amqp
async def test_the_same_group_runs_on_rabbitmq_by_dsn() -> None:
    from tests.amqp_support import AMQP_DSN, delete_declared

    queue = Queue(f'kit_amqp_{uuid.uuid4().hex[:8]}', Order)
    asked = Signal(f'kit_amqp_ask_{uuid.uuid4().hex[:8]}', Order, returns=int)

    class Strict(MicroAgent):
        @consumer(queue, max_retries=0)
        async def check(self, order: Order) -> None:
            raise ValueError(f'order {order.order_id} refused')

        @receiver(asked)
        async def ask(self, order: Order) -> int:
            return order.order_id + 1

    group = TestGroup(Strict, dsn=AMQP_DSN)
    try:
        async with group:
            assert await group.bus[asked].call('test', Order(1), timeout=10) == {Strict.ask.__qualname__: 2}
            await group.broker[queue].send(Order(2))
            (letter,) = await group.wait_dead_letters(queue, timeout=10)
            assert 'order 2 refused' in letter.reason
            assert group.sent.answers(asked) == [{Strict.ask.__qualname__: 2}]
            assert group.handler(Strict.check).models == [Order(2)]
    finally:
        await delete_declared(group.transports)


async def test_a_queue_is_not_empty_while_its_consumer_is_still_handling() -> None:
    queue = Queue(f'kit_busy_{uuid.uuid4().hex[:8]}', Order)
    begun, release = asyncio.Event(), asyncio.Event()

    class Slow(MicroAgent):
        @consumer(queue)
        async def work(self, order: Order) -> None:
            begun.set()
            await release.wait()

    async with TestGroup(Slow) as group:
        await group.broker[queue].send(Order(1))
        probe = group.handler(Slow.work)
        await asyncio.wait_for(begun.wait(), 5)
        expected = r'not settled within 0\.2s: 0 ready, 0 delayed, 1 in flight; 1 being handled'
        with pytest.raises(ExpectationFailed, match=expected):
            await group.wait_queue_empty(queue, timeout=0.2)
        release.set()
        await group.wait_queue_empty(queue)
        assert probe.handled == 1
