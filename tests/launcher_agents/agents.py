"""Agents that leave a trace of their lifecycle as files, so a test can see inside other processes."""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import msgspec

from microagent import MicroAgent, Queue, ServerInterrupt, Signal, consumer, on, periodic, receiver
from microagent.backends.memory import MemorySignalBus


class Ping(msgspec.Struct, frozen=True):
    number: int


ping = Signal('launcher_test_ping', Ping)
jobs = Queue('launcher_test_jobs', Ping)


class Recorder(MicroAgent):
    """Writes ``<name>.started`` (its pid) after start and ``<name>.stopped`` in ``pre_stop``."""

    def mark(self, event: str, text: str = '') -> None:
        path = Path(self.settings['dir']) / f'{self.settings["name"]}.{event}'
        path.write_text(text or str(os.getpid()))

    @on('post_start')
    def started(self) -> None:
        self.mark('started')

    @on('pre_stop')
    def stopping(self) -> None:
        self.mark('stopped')


class SlowWorker(Recorder):
    """A periodic task that works for ``settings['work']`` seconds: ``begun``, then ``done``."""

    @periodic(period=3600, timeout=120)
    async def work(self) -> None:
        self.mark('begun')
        await asyncio.sleep(self.settings['work'])
        self.mark('done')


class Pinger(Recorder):
    """Sends ``launcher_test_ping`` every 50 ms."""

    count = 0

    @periodic(period=0.05, timeout=5)
    async def send(self) -> None:
        self.count += 1
        await self.bus[ping].send('pinger', Ping(number=self.count))


class Listener(Recorder):
    """Records the first ping it receives; a test in this process may also listen through ``heard``."""

    heard: ClassVar[list[Callable[[str], object]]] = []  # called with the agent's name on each ping

    @receiver(ping)
    async def got(self, event: Ping, *, sender: str) -> None:
        self.mark('pinged', f'{sender} {event.number}')
        for call in self.heard:
            call(self.settings['name'])


class Billing(Recorder):
    """A grouped receiver of pings (``group=True``: the group is named after the marun entry)."""

    heard: ClassVar[list[Callable[[MicroAgent, int], object]]] = []  # called with the agent and the ping

    @receiver(ping, group=True)
    async def bill(self, event: Ping) -> None:
        for call in self.heard:
            call(self, event.number)


class GroupedWriter(Recorder):
    """A grouped receiver of pings that appends each number it handles to ``billed.<pid>`` (a
    killed process leaves what it handled on disk) and takes ``settings['work']`` seconds for it."""

    @receiver(ping, group=True, concurrency=4)
    async def bill(self, event: Ping) -> None:
        await asyncio.sleep(self.settings.get('work', 0.01))
        with (Path(self.settings['dir']) / f'billed.{os.getpid()}').open('a') as file:
            file.write(f'{event.number}\n')


class Worker(Recorder):
    """Consumes ``launcher_test_jobs``."""

    @consumer(jobs)
    async def work(self, job: Ping) -> None:
        pass


class FailingStart(Recorder):
    @on('pre_start')
    def boom(self) -> None:
        raise RuntimeError('cannot reach the database')


class ShortServer(Recorder):
    """A server that ends the agent once the agent is up."""

    @on('server')
    async def serve(self) -> None:
        await asyncio.sleep(0.2)
        raise ServerInterrupt('done serving')


class StrictBus(MemorySignalBus):
    """A bus that needs its DSN spelled out."""

    def __init__(self, dsn: str, log: logging.Logger | None = None) -> None:
        super().__init__(dsn, log=log)
