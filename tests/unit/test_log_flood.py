"""A flood of stray or bad messages on a bus is a few log lines, each saying how many it stands for,
not one line per message (20,000 stray answers were 20,000 WARNING lines)."""
from __future__ import annotations

import logging

import msgspec
import pytest

from microagent import MicroAgent, Signal, receiver
from microagent.logs import LogLimiter
from microagent.message import Envelope
from microagent.tools.memory import MemorySignalBus


class Event(msgspec.Struct):
    user_id: int


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage() and r.levelno == logging.WARNING]


async def test_a_thousand_stray_answers_are_one_line_then_one_that_counts_them(
        caplog: pytest.LogCaptureFixture) -> None:
    bus, clock = MemorySignalBus(), Clock()
    bus.limited = LogLimiter(interval=10, clock=clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(1000):
            await bus._on_reply(Envelope(b'{"A.b": 1}'))   # names no request: not an answer of this bus
        assert len(_lines(caplog, 'stray message')) == 1
        clock.now = 10.5
        await bus._on_reply(Envelope(b'{"A.b": 1}'))
    first, second = _lines(caplog, 'stray message')
    assert 'more like it' not in first
    assert second.endswith('(and 999 more like it in the last 10 s, not logged)')


async def test_a_thousand_undecodable_signals_are_bounded_per_signal(
        caplog: pytest.LogCaptureFixture, unique: str) -> None:
    signal, other = Signal(f'flood_{unique}', Event), Signal(f'flood2_{unique}', Event)

    class Listener(MicroAgent):
        @receiver(signal, other)
        async def heard(self, event: Event) -> None:
            pass

    bus, clock = MemorySignalBus(), Clock()
    bus.limited = LogLimiter(interval=10, clock=clock)
    async with Listener(bus=bus):
        with caplog.at_level(logging.WARNING):
            for _ in range(1000):
                bus.dispatch(signal.name, 'x', Envelope(b'{"user_id": "nope"'))
                bus.dispatch(other.name, 'x', Envelope(b'not json'))
            clock.now = 11
            bus.dispatch(signal.name, 'x', Envelope(b'[]'))
    lines = _lines(caplog, 'Dropped signal')
    assert len(lines) == 3  # one per signal, then the one that counts what was left out
    assert lines[2].startswith(f'Dropped signal {signal.name} from x: ') and '999 more like it' in lines[2]


def test_the_limiter_keeps_sources_apart_and_costs_nothing_when_disabled() -> None:
    clock = Clock()
    limiter = LogLimiter(interval=1, clock=clock)
    log = logging.getLogger('test.limiter')
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for _ in range(5):
            limiter.warning(log, 'a', 'from a %d', 1)
            limiter.warning(log, 'b', 'from b')
            limiter.log(log, logging.DEBUG, 'c', 'debug, disabled')
        assert records == ['from a 1', 'from b']
        assert limiter._sources.keys() == {'a', 'b'}
    finally:
        log.removeHandler(handler)


def test_wire_details_cannot_make_the_sources_many() -> None:
    clock = Clock()
    limiter = LogLimiter(interval=10, clock=clock, max_sources=3)
    log = logging.getLogger('test.limiter.cap')
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        for n in range(1000):  # a flood with a new sender each time
            limiter.warning(log, f'invalid sig:sender{n}', 'bad from %d', n)
        assert records == ['bad from 0', 'bad from 1', 'bad from 2', 'bad from 3']  # 3 details, then the label
        assert len(limiter._sources) == 4
    finally:
        log.removeHandler(handler)
