"""Running an agent until it is told to stop: ``await agent.serve()`` and ``agent.run()``."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from microagent import MicroAgent, ServerInterrupt, Signal, UsageError, on, receiver
from microagent.backends.memory import MemorySignalBus
from tests.helpers import Collector

ROOT = Path(__file__).resolve().parents[2]


class Ping(msgspec.Struct):
    n: int


PING = Signal('serve_ping', Ping)


class Served(MicroAgent):
    """Records its lifecycle and the pings it receives in ``settings``."""

    @on('post_start')
    def started(self) -> None:
        self.settings['events'].add('started')

    @on('pre_stop')
    def stopping(self) -> None:
        self.settings['events'].add('pre_stop')

    @receiver(PING)
    async def on_ping(self, ping: Ping) -> None:
        self.settings['pings'].add(ping.n)


def served() -> tuple[Served, Collector, Collector]:
    events, pings = Collector(), Collector()
    return Served(bus=MemorySignalBus(), settings={'events': events, 'pings': pings}), events, pings


async def test_serve_receives_until_stop_is_called_from_a_task() -> None:
    agent, events, pings = served()
    serving = asyncio.create_task(agent.serve())
    await events.wait(1)
    await agent.bus[PING].send('test', Ping(n=7))
    assert await pings.wait(1) == [7]
    assert not serving.done()  # start() would have returned already: there are no servers
    await asyncio.create_task(agent.stop())
    await asyncio.wait_for(serving, 5)
    assert events.items == ['started', 'pre_stop']


async def test_serve_stops_on_sigint_and_restores_the_previous_handler() -> None:
    before = signal.getsignal(signal.SIGINT)
    agent, events, _ = served()
    serving = asyncio.create_task(agent.serve())
    await events.wait(1)
    os.kill(os.getpid(), signal.SIGINT)  # handled by serve(): no KeyboardInterrupt in the test
    await asyncio.wait_for(serving, 5)
    assert events.items == ['started', 'pre_stop']
    assert signal.getsignal(signal.SIGINT) is before


class WithServer(MicroAgent):
    """A server that ends as ``settings['end']`` says; ``settings['events']`` records the stop."""

    @on('server')
    async def server(self) -> None:
        raise self.settings['end']

    @on('pre_stop')
    def stopping(self) -> None:
        self.settings['events'].add('pre_stop')


async def test_serve_ends_when_a_server_interrupts_and_raises_a_server_failure_after_stopping() -> None:
    events = Collector()
    await asyncio.wait_for(WithServer(settings={'end': ServerInterrupt('done'), 'events': events}).serve(), 5)
    assert events.items == ['pre_stop']
    events = Collector()
    with pytest.raises(RuntimeError, match='server broke'):
        await asyncio.wait_for(WithServer(settings={'end': RuntimeError('server broke'), 'events': events}).serve(), 5)
    assert events.items == ['pre_stop']


async def test_serve_twice_at_once_is_refused() -> None:
    agent, events, _ = served()
    serving = asyncio.create_task(agent.serve())
    await events.wait(1)
    with pytest.raises(UsageError, match='already serving'):
        await agent.serve()
    await agent.stop()
    await asyncio.wait_for(serving, 5)


class OwnServe(MicroAgent):
    """A 1.x style agent whose server hook is named ``serve``: ``run()`` still serves it."""

    @on('server')
    async def serve(self) -> None:
        self.settings['events'].append('server ran')
        raise ServerInterrupt('done')

    @on('pre_stop')
    def stopping(self) -> None:
        self.settings['events'].append('pre_stop')


async def test_run_serves_an_agent_whose_server_hook_is_named_serve() -> None:
    events: list[str] = []
    await asyncio.wait_for(asyncio.to_thread(OwnServe(settings={'events': events}).run), 10)  # a loop of its own
    assert events == ['server ran', 'pre_stop']


SCRIPT = '''
import sys
from microagent import MicroAgent, on

class Agent(MicroAgent):
    @on('post_start')
    def started(self):
        print('started', flush=True)

    @on('pre_stop')
    def stopping(self):
        print('pre_stop ran', flush=True)

Agent().run()
print('run returned', flush=True)
'''


async def test_run_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    script = tmp_path / 'serve_agent.py'
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    process = await asyncio.create_subprocess_exec(sys.executable, str(script), env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.readline(), 30)
        assert first == b'started\n'
        process.send_signal(signal.SIGTERM)
        rest, errors = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, errors.decode()
    assert rest.decode().splitlines() == ['pre_stop ran', 'run returned']
