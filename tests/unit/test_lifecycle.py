"""MicroAgent's lifecycle: a failed start undoes itself, and stop(grace) keeps one deadline."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

import msgspec
import pytest

from microagent import Consumer, MicroAgent, Queue, Receiver, Signal, consumer, on, periodic, receiver
from microagent.backends.memory import MemoryBroker, MemorySignalBus
from microagent.timer import Timer
from tests.helpers import Collector


class Job(msgspec.Struct):
    n: int


class FailingBroker(MemoryBroker):
    """Binds its first consumer, then fails: the broker went away half-way through a start."""

    async def bind_consumer(self, consumer: Consumer) -> None:
        if self._running:
            raise ConnectionError(f'broker down while binding {consumer.key}')
        await super().bind_consumer(consumer)


SUFFIX = uuid.uuid4().hex[:10]
SIGNAL = Signal(f'life_{SUFFIX}', Job)
FIRST, SECOND = Queue(f'life_first_{SUFFIX}', Job), Queue(f'life_second_{SUFFIX}', Job)


class Agent(MicroAgent):
    """One of each part; ``settings['events']`` records what happened to it."""

    @receiver(SIGNAL)
    async def on_job(self, job: Job) -> None: ...

    @consumer(FIRST)
    async def work_first(self, job: Job) -> None: ...

    @consumer(SECOND)
    async def work_second(self, job: Job) -> None: ...

    @periodic(period=0.01)
    async def tick(self) -> None:
        self.settings['ticked'].add(1)

    @on('server')
    async def serve(self) -> None:
        self.settings['events'].append('serving')
        try:
            await asyncio.Event().wait()
        finally:
            self.settings['events'].append('server cancelled')

    @on('pre_stop')
    def teardown(self) -> None:
        self.settings['events'].append('pre_stop')


def _agent(bus: MemorySignalBus, broker: MemoryBroker, cls: type[Agent] = Agent) -> Agent:
    return cls(bus=bus, broker=broker, settings={'events': [], 'ticked': Collector()})


async def test_a_start_that_fails_half_way_undoes_what_it_did() -> None:
    bus, broker = MemorySignalBus(), FailingBroker()
    agent = _agent(bus, broker)
    before = asyncio.all_tasks()

    with pytest.raises(ConnectionError, match=r'broker down while binding Agent\.work_second'):
        await agent.start()

    assert bus.receivers[SIGNAL.name] == []  # the receiver bound first is unbound again
    assert broker._running == {}  # the first consumer's fetch loop and workers are stopped
    assert asyncio.all_tasks() - before == set()  # nothing of the agent is left running
    await agent.stop()  # harmless: the agent never started, so pre_stop hooks do not run either
    assert agent.settings['events'] == []


async def test_a_failing_post_start_hook_cancels_timers_and_servers() -> None:
    class Announcing(Agent):
        @on('post_start')
        async def announce(self) -> None:
            await self.settings['ticked'].wait(1)  # timers and servers run by now
            raise RuntimeError('cannot announce')

    before = asyncio.all_tasks()
    agent = _agent(MemorySignalBus(), MemoryBroker(), Announcing)
    with pytest.raises(RuntimeError, match='cannot announce'):
        await agent.start()

    assert asyncio.all_tasks() - before == set()
    assert agent.settings['events'] == ['serving', 'server cancelled']
    await agent.stop()
    assert agent.settings['events'] == ['serving', 'server cancelled']


class Phases:
    """Records the grace each stop phase is given; a phase returns only once every phase has begun,
    so phases run one after another would never finish."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.given: dict[str, float] = {}
        self.begun = Collector()

    async def enter(self, name: str, grace: float) -> None:
        self.given[name] = grace
        self.begun.add(name)
        await self.begun.wait(self.count, timeout=5)


async def test_stop_gives_every_phase_the_same_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    phases = Phases(3)

    class Bus(MemorySignalBus):
        async def unbind_receivers(self, receivers: list[Receiver], grace: float) -> None:
            await phases.enter('receivers', grace)
            await super().unbind_receivers(receivers, grace)

    class Broker(MemoryBroker):
        async def stop_consumers(self, consumers: Iterable[Consumer], grace: float) -> None:
            await phases.enter('consumers', grace)
            await super().stop_consumers(consumers, grace)

    wait_runs = Timer.wait_runs

    async def timer_wait_runs(timer: Timer, grace: float) -> None:
        await phases.enter(f'timer {timer.name}', grace)
        await wait_runs(timer, grace)

    monkeypatch.setattr(Timer, 'wait_runs', timer_wait_runs)
    agent = _agent(Bus(), Broker())
    await agent.start(enable_servers_running=False)
    await agent.stop(grace=0.5)

    assert phases.given == {'receivers': 0.5, 'consumers': 0.5, 'timer Agent.tick': 0.5}
    assert agent.settings['events'] == ['pre_stop']


async def test_stop_raises_what_a_phase_raised_after_every_phase_ran() -> None:
    stopped: list[str] = []

    class Bus(MemorySignalBus):
        async def unbind_receivers(self, receivers: list[Receiver], grace: float) -> None:
            raise ConnectionError('bus down')

    class Broker(MemoryBroker):
        async def stop_consumers(self, consumers: Iterable[Consumer], grace: float) -> None:
            await super().stop_consumers(consumers, grace)
            stopped.append('consumers')

    agent = _agent(Bus(), Broker())
    await agent.start(enable_servers_running=False)
    with pytest.raises(ConnectionError, match='bus down'):
        await agent.stop(grace=0)
    assert stopped == ['consumers']


async def test_stop_does_not_wait_forever_for_a_release_the_server_never_confirms(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = Queue(f'life_hung_{SUFFIX}', Job)
    started = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=1, prefetch=4)
        async def work(self, job: Job) -> None:
            started.add(job.n)
            await asyncio.Event().wait()  # under way when the agent stops

    broker = MemoryBroker()
    await broker[queue].send_many([Job(n) for n in range(5)])

    async def hung_release(*args: object) -> None:
        await asyncio.Event().wait()  # the server went away: no release ever completes

    agent = Worker(broker=broker)
    await agent.start()
    await started.wait(1)
    monkeypatch.setattr(broker.transport, 'release', hung_release)
    async with asyncio.timeout(10):  # a hang guard, not a measure: stop keeps to its own deadline
        await agent.stop(grace=0.1)
    assert 'could not release prefetched messages on stop' in caplog.text
    assert 'could not release their message in time' in caplog.text
