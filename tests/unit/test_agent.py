"""MicroAgent: handler discovery, decorator checks, lifecycle, hooks, servers, timers, mocks."""
from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from microagent import (
    InvalidPayload,
    MicroAgent,
    MissConfig,
    Queue,
    ServerInterrupt,
    Signal,
    consumer,
    cron,
    on,
    periodic,
    receiver,
)
from microagent.backends.memory import MemoryBroker, MemorySignalBus
from microagent.testing.mocks import BrokerMock, BusMock
from microagent.timer import next_cron_time
from tests.helpers import Collector


class Ping(msgspec.Struct):
    n: int


@pytest.fixture
def memory(unique: str) -> tuple[MemorySignalBus, MemoryBroker]:
    return MemorySignalBus(f'memory://{unique}'), MemoryBroker(f'memory://{unique}')


# decorator arguments are checked when the class is defined

@pytest.mark.parametrize(('kwargs', 'message'), [
    ({'period': 0}, 'period must be a finite number > 0, got 0'),
    ({'period': -1}, 'period must be a finite number > 0'),
    ({'period': 1, 'timeout': 0}, 'timeout must be a finite number > 0'),
    ({'period': 1, 'start_after': -1}, 'start_after must be a finite number >= 0'),
    ({'period': 'soon'}, "period must be a finite number > 0, got 'soon'"),
])
def test_bad_periodic_arguments_name_the_handler(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        class Agent(MicroAgent):
            @periodic(**kwargs)
            async def tick(self) -> None: ...
    assert 'Agent.tick' in str(error.value)


def test_bad_cron_spec_names_the_handler() -> None:
    with pytest.raises(ValueError, match=r"Agent.nightly: invalid cron spec '61 \* \* \* \*'"):
        class Agent(MicroAgent):
            @cron('61 * * * *')
            async def nightly(self) -> None: ...


def test_unknown_hook_label() -> None:
    with pytest.raises(ValueError, match="unknown hook label 'pre_strat'"):
        on('pre_strat')


def test_one_queue_consumed_twice_in_one_agent_is_refused(unique: str) -> None:
    queue = Queue(f'twice_{unique}', Ping)
    with pytest.raises(ValueError, match=f"queue 'twice_{unique}' is consumed by both first and second"):
        class Agent(MicroAgent):
            @consumer(queue)
            async def first(self, ping: Ping) -> None: ...

            @consumer(queue)
            async def second(self, ping: Ping) -> None: ...


def test_handlers_must_be_async_and_options_sane(unique: str) -> None:
    queue = Queue(f'opts_{unique}', Ping)
    with pytest.raises(TypeError, match='sync_handler: @consumer needs an async function'):
        def sync_handler(self: Any, ping: Ping) -> None: ...
        consumer(queue)(sync_handler)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='concurrency must be an integer >= 1, got 0'):
        async def zero(self: Any, ping: Ping) -> None: ...
        consumer(queue, concurrency=0)(zero)
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0, got 'x'"):
        async def bad_retries(self: Any, ping: Ping) -> None: ...
        consumer(queue, max_retries='x')(bad_retries)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match='@receiver needs one or more Signal'):
        receiver()  # type: ignore[call-overload]
    with pytest.raises(TypeError, match='@consumer needs a Queue'):
        consumer('mailer')  # type: ignore[call-overload]


def test_misspelled_or_ill_typed_consumer_option_fails_when_the_class_is_defined(unique: str) -> None:
    queue = Queue(f'badopts_{unique}', Ping)
    with pytest.raises(TypeError, match=r"Typo.work \(@consumer of queue 'badopts_.*'\): unknown option "
                                        r"'max_retry'; did you mean 'max_retries'\?"):
        class Typo(MicroAgent):
            @consumer(queue, max_retry=10)  # type: ignore[call-overload, untyped-decorator]
            async def work(self, ping: Ping) -> None: ...
    with pytest.raises(TypeError, match="unknown option 'concurency'; did you mean 'concurrency'"):
        class Typo2(MicroAgent):
            @consumer(queue, concurency=4)  # type: ignore[call-overload, untyped-decorator]
            async def work(self, ping: Ping) -> None: ...
    with pytest.raises(ValueError, match=r"Wrong\.work: autoack must be True or False, got 'no'"):
        class Wrong(MicroAgent):
            @consumer(queue, autoack='no')  # type: ignore[call-overload, untyped-decorator]
            async def work(self, ping: Ping) -> None: ...
    with pytest.raises(ValueError, match=r"Late\.work: retry_delay must be a finite number >= 0, got 'soon'"):
        class Late(MicroAgent):
            @consumer(queue, retry_delay='soon')  # type: ignore[call-overload, untyped-decorator]
            async def work(self, ping: Ping) -> None: ...


def test_consumer_options_reach_the_consumer(unique: str) -> None:
    queue = Queue(f'goodopts_{unique}', Ping)

    class Tuned(MicroAgent):
        @consumer(queue, concurrency=4, prefetch=2, max_retries=10, retry_delay=0.5, autoack=False)
        async def work(self, ping: Ping) -> None: ...

    tuned = Tuned(broker=MemoryBroker(f'memory://{unique}')).consumers[0]
    assert (tuned.concurrency, tuned.prefetch, tuned.max_retries, tuned.retry_delay, tuned.autoack) == \
        (4, 2, 10, 0.5, False)


def test_missing_bus_or_broker_is_miss_config(unique: str) -> None:
    signal = Signal(f'miss_{unique}', Ping)
    queue = Queue(f'miss_{unique}', Ping)

    class Listener(MicroAgent):
        @receiver(signal)
        async def on_ping(self, ping: Ping) -> None: ...

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, ping: Ping) -> None: ...

    with pytest.raises(MissConfig, match='Listener has receivers but no bus'):
        Listener()
    with pytest.raises(MissConfig, match='Worker has consumers but no broker'):
        Worker()
    MicroAgent()  # nothing declared, nothing needed


async def test_handlers_are_found_across_inheritance_and_overrides(
        memory: tuple[MemorySignalBus, MemoryBroker], unique: str) -> None:
    signal = Signal(f'inherit_{unique}', Ping)
    got = Collector()

    class Base(MicroAgent):
        @receiver(signal)
        async def inherited(self, ping: Ping) -> None:
            got.add(('inherited', ping.n))

        @receiver(signal)
        async def replaced(self, ping: Ping) -> None:
            got.add(('base replaced', ping.n))

    class Child(Base):
        def __init__(self, bus: MemorySignalBus, tag: str) -> None:
            super().__init__(bus=bus, settings={'tag': tag})

        async def replaced(self, ping: Ping) -> None:  # overridden without decorator: not a receiver
            got.add(('child replaced', ping.n))

        @receiver(signal)
        async def own(self, ping: Ping) -> None:
            got.add((self.settings['tag'], ping.n))

    bus, _ = memory
    async with Child(bus, 'own'):
        # an RPC answer comes once every receiver of the message has returned: it names them all
        answers = await bus[signal].call('x', Ping(n=1), timeout=5)
    # keyed as 1.x keys them, by the handler's __qualname__: the inherited one answers as Base's
    assert sorted(answers) == sorted([Base.inherited.__qualname__, Child.own.__qualname__])
    assert sorted(got.items) == [('inherited', 1), ('own', 1)]


async def test_lifecycle_hooks_run_in_order_sync_and_async(memory: tuple[MemorySignalBus, MemoryBroker]) -> None:
    order: list[str] = []

    class Agent(MicroAgent):
        @on('pre_start')
        def setup(self) -> None:
            order.append('pre_start')

        @on('post_start')
        async def started(self) -> None:
            order.append('post_start')

        @on('pre_stop')
        async def teardown(self) -> None:
            order.append('pre_stop')

    agent = Agent(bus=memory[0])
    async with agent:
        order.append('running')
    await agent.stop()  # a second stop does nothing
    assert order == ['pre_start', 'post_start', 'running', 'pre_stop']


async def test_start_flags_disable_parts(memory: tuple[MemorySignalBus, MemoryBroker], unique: str) -> None:
    signal = Signal(f'flags_{unique}', Ping)
    ticks = Collector()
    got = Collector()

    class Agent(MicroAgent):
        @periodic(period=0.01)
        async def tick(self) -> None:
            ticks.add(1)

        @receiver(signal)
        async def on_ping(self, ping: Ping) -> None:
            got.add(ping.n)

    bus, _ = memory
    agent = Agent(bus=bus)
    await agent.start(enable_periodic_tasks=False, enable_receiving_signals=True)
    await bus[signal].send('x', Ping(n=1))
    await got.wait(1)
    assert ticks.items == []
    await agent.stop()
    assert bus.receivers[signal.name] == []


async def test_start_blocks_while_servers_run_and_server_interrupt_stops(
        memory: tuple[MemorySignalBus, MemoryBroker]) -> None:
    stopped = asyncio.Event()

    class Agent(MicroAgent):
        @on('server')
        async def serve(self) -> None:
            await asyncio.sleep(0.01)
            raise ServerInterrupt('done serving')

        @on('pre_stop')
        def teardown(self) -> None:
            stopped.set()

    await asyncio.wait_for(Agent(bus=memory[0]).start(), 5)
    assert stopped.is_set()


async def test_periodic_task_keeps_its_schedule_through_errors_and_timeouts(
        memory: tuple[MemorySignalBus, MemoryBroker], caplog: pytest.LogCaptureFixture) -> None:
    runs = Collector()

    class Agent(MicroAgent):
        @periodic(period=0.02, timeout=0.05)
        async def tick(self) -> None:
            runs.add(1)
            if len(runs.items) == 1:
                raise RuntimeError('first run fails')
            if len(runs.items) == 2:
                await asyncio.sleep(1)  # times out

    caplog.set_level(logging.ERROR)
    async with Agent():
        await runs.wait(4)
    assert 'Task Agent.tick failed' in caplog.text
    assert 'Task Agent.tick timed out after 0.1s' in caplog.text


async def test_periodic_start_after_delays_the_first_run() -> None:
    runs = Collector()

    class Agent(MicroAgent):
        @periodic(period=0.01, start_after=0.2)
        async def tick(self) -> None:
            runs.add(asyncio.get_running_loop().time())

    async with Agent():
        began = asyncio.get_running_loop().time()
        first = (await runs.wait(1))[0]
    assert first - began >= 0.19


async def test_cron_task_fires_on_schedule_and_stops_with_the_agent() -> None:
    runs = Collector()

    class Agent(MicroAgent):
        @cron('* * * * * *', timeout=1)  # croniter's sixth field: every second
        async def each_second(self) -> None:
            runs.add(datetime.now(UTC))

    agent = Agent()
    async with agent:
        await runs.wait(2, timeout=4)
    # stopped: no timer is left scheduled to fire again (the test's own task is the only one)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    # one run per second, however late a loaded machine wakes the timer
    assert runs.items[1].replace(microsecond=0) > runs.items[0].replace(microsecond=0)


def test_next_cron_time_uses_croniter_and_time_zone() -> None:
    after = datetime(2026, 1, 1, 3, 59, tzinfo=UTC)
    assert next_cron_time('0 */4 * * *', after) == datetime(2026, 1, 1, 4, 0, tzinfo=UTC)
    tz = timezone(timedelta(hours=2))
    assert next_cron_time('0 6 * * *', after.astimezone(tz)) == datetime(2026, 1, 1, 6, 0, tzinfo=tz)  # 05:59 there


async def test_info_lists_handlers_and_hides_passwords(unique: str) -> None:
    signal = Signal(f'info_{unique}', Ping, returns=int)
    queue = Queue(f'info_{unique}', Ping)

    class Agent(MicroAgent):
        @receiver(signal, timeout=5)
        async def answer(self, ping: Ping) -> int:
            return 1

        @consumer(queue, timeout=30, concurrency=4)
        async def work(self, ping: Ping) -> None: ...

        @periodic(5, timeout=4)
        async def tick(self) -> None: ...

        @cron('*/15 * * * *', timeout=10)
        async def quarter(self) -> None: ...

    agent = Agent(bus=MemorySignalBus('memory://user:s3cret@host'), broker=MemoryBroker('memory://:s3cret@h'))
    info = agent.info()
    assert info['name'] == 'Agent'
    assert 's3cret' not in repr(info) and 's3cret' not in repr(agent.bus) and 's3cret' not in repr(agent.broker)
    assert info['receivers'] == [{'handler': 'Agent.answer', 'signal': f'info_{unique}', 'timeout': 5.0}]
    assert info['consumers'][0]['options'] == {'concurrency': 4}
    assert info['periodic'] == [{'name': 'tick', 'period': 5.0, 'timeout': 4.0, 'start_after': 0.0}]
    assert info['cron'][0]['spec'] == '*/15 * * * *'


async def test_mocks_record_what_an_agent_sends(unique: str) -> None:
    signal = Signal(f'mocked_{unique}', Ping)
    queue = Queue(f'mocked_{unique}', Ping)

    class Agent(MicroAgent):
        @receiver(signal)
        async def on_ping(self, ping: Ping) -> None:
            await self.broker[queue].send(Ping(n=ping.n + 1))
            await self.bus[signal].send('agent', Ping(n=0))

    agent = Agent(bus=BusMock(), broker=BrokerMock())
    await agent.on_ping(Ping(n=1))
    getattr(agent.broker, queue.name).send.assert_awaited_once_with(Ping(n=2))
    getattr(agent.bus, signal.name).send.assert_awaited_once_with('agent', Ping(n=0))
    assert await getattr(agent.broker, queue.name).length() == 0
    await getattr(agent.broker, queue.name).declare()
    async with agent:
        agent.bus.bind_receiver.assert_awaited()  # type: ignore[attr-defined]


async def test_mocks_index_like_attributes_and_publish_still_validates(unique: str) -> None:
    signal = Signal(f'mockpub_{unique}', Ping)
    queue = Queue(f'mockpub_{unique}', Ping, exchange=f'mockx_{unique}')
    bus, broker = BusMock(), BrokerMock()
    assert bus[signal] is getattr(bus, signal.name) and broker[queue] is getattr(broker, queue.name)
    assert await broker.publish(f'mockx_{unique}', Ping(n=1)) == 1  # the declared queue counts as bound
    with pytest.raises(InvalidPayload):
        await broker.publish(f'mockx_{unique}', {'n': 'one'})


def test_bad_handler_timeouts_name_the_handler(unique: str) -> None:
    signal = Signal(f'timeouts_{unique}', Ping)
    queue = Queue(f'timeouts_{unique}', Ping)
    with pytest.raises(ValueError, match=r'Agent.on_ping: timeout must be a finite number > 0, got -1'):
        class Agent(MicroAgent):
            @receiver(signal, timeout=-1)
            async def on_ping(self, ping: Ping) -> None: ...
    with pytest.raises(ValueError, match=r'Worker.work: timeout must be a finite number > 0, got 0'):
        class Worker(MicroAgent):
            @consumer(queue, timeout=0)
            async def work(self, ping: Ping) -> None: ...


async def test_memory_hubs_route_only_the_queues_bound_on_them(unique: str) -> None:
    queue = Queue(f'hubbed_{unique}', Ping, exchange=f'hubx_{unique}')
    here, elsewhere = MemoryBroker(f'memory://here_{unique}'), MemoryBroker(f'memory://elsewhere_{unique}')
    await here[queue].declare()
    assert await here.publish(f'hubx_{unique}', Ping(n=1)) == 1
    with pytest.raises(LookupError, match=f"No queue is bound to exchange 'hubx_{unique}'"):
        await elsewhere.publish(f'hubx_{unique}', Ping(n=2))
    assert (await here[queue].length(), await elsewhere[queue].length()) == (1, 0)
