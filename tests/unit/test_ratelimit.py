"""Rate limits in the engine: the rate parser, the GCRA math (property-based: never more than
``burst + elapsed * rate`` over any window), the local limiter, ``@consumer(rate=)`` checked when
the class is defined, ``Limit`` arguments."""
from __future__ import annotations

import asyncio
import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microagent import DeclarationError, MicroAgent, Queue, Rate, consumer
from microagent.ratelimit import PERIODS, Limit, LocalLimiter, gcra, limiter_of


class Job(msgspec.Struct):
    n: int


jobs = Queue('ratelimit_unit_jobs', Job)


@pytest.mark.parametrize(('text', 'count', 'period', 'burst'), [
    ('100/s', 100, 1, 100), ('6/m', 6, 60, 6), ('1000/h', 1000, 3600, 1000), ('0.5/s', 0.5, 1, 1),
    ('2.5/m', 2.5, 60, 3), ('1/h', 1, 3600, 1),
])
def test_rates_parse(text: str, count: float, period: float, burst: int) -> None:
    rate = Rate.parse(text)
    assert (rate.count, rate.period, rate.burst) == (count, period, burst)
    assert rate.interval == pytest.approx(period / count)


@pytest.mark.parametrize('text', [
    '', '100', '/s', '100/', '100/d', '100/S', ' 100/s', '100 /s', '100/ s', '100/s ', '-1/s', '+1/s', '0/s',
    '0.0/s', '1e3/s', 'inf/s', 'nan/s', '1./s', '.5/s', '1/2s', '100/sec', '\uff11/s', '10/s/s', '1,5/s',
])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match='rate'):
        Rate.parse(text)


@pytest.mark.parametrize('value', [100, 1.5, None, b'1/s', ['1/s']])
def test_a_rate_is_a_string_or_a_rate(value: object) -> None:
    with pytest.raises(ValueError, match='rate'):
        Rate.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize('kwargs', [
    {'count': 0}, {'count': -1}, {'count': math.inf}, {'count': math.nan}, {'count': True},
    {'count': 1, 'period': 0}, {'count': 1, 'burst': -1}, {'count': 1, 'burst': 1.5}, {'count': 1e12},
])
def test_bad_rate_objects_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match='rate'):
        Rate(**kwargs)  # type: ignore[arg-type]


def test_a_rate_object_is_kept_and_shown() -> None:
    rate = Rate(10, burst=2)
    assert Rate.parse(rate) is rate
    assert str(rate) == '10/s (burst 2)' and str(Rate.parse('6/m')) == '6/m'


@given(count=st.integers(1, 10**6), unit=st.sampled_from('smh'))
def test_every_integer_rate_parses_back(count: int, unit: str) -> None:
    rate = Rate.parse(f'{count}/{unit}')
    assert rate.count == count and rate.period == PERIODS[unit] and rate.burst == count
    assert Rate.parse(str(rate)) == rate


@given(count=st.floats(1e-3, 1e6))
def test_every_rate_shows_in_the_grammar(count: float) -> None:
    rate = Rate(count, 60)
    again = Rate.parse(str(rate))
    assert again.count == pytest.approx(count) and again.period == 60


@given(st.text(max_size=12))
def test_the_parser_takes_only_its_grammar(text: str) -> None:
    import re

    try:
        rate = Rate.parse(text)
    except ValueError:
        return
    assert re.fullmatch(r'[0-9]+(\.[0-9]+)?/[smh]', text)
    assert rate.count > 0


def test_gcra_grants_the_burst_then_the_steady_rate() -> None:
    rate = Rate(10, burst=3)  # 0.1 s per grant
    granted, wait, tat = gcra(0.0, 0.0, rate, 5)
    assert (granted, wait) == (3, 0.0) and tat == pytest.approx(0.3)
    granted, wait, tat = gcra(tat, 0.0, rate, 1)
    assert granted == 0 and wait == pytest.approx(0.1)
    granted, wait, tat = gcra(tat, 0.1, rate, 5)
    assert granted == 1 and tat == pytest.approx(0.4)


@settings(max_examples=300)
@given(count=st.floats(0.5, 1000), burst=st.integers(1, 50),
       steps=st.lists(st.tuples(st.floats(0, 2), st.integers(1, 200), st.integers(0, 5)), min_size=1, max_size=60))
def test_gcra_never_grants_more_than_burst_plus_elapsed_times_rate(
        count: float, burst: int, steps: list[tuple[float, int, int]]) -> None:
    """Over every window [t_i, t_j] of takes: granted <= burst + (t_j - t_i) * rate; give backs of
    unused grants (what the consume loop does) never let more through than was used."""
    rate = Rate(count, burst=burst)
    now, clock = 0.0, [0.0]
    limiter = LocalLimiter(clock=lambda: clock[0])
    takes: list[tuple[float, int]] = []
    for dt, want, unused in steps:
        now += dt
        clock[0] = now
        granted, wait = limiter.take_now('k', rate, want)
        assert 0 <= granted <= min(want, burst)
        if granted == 0:
            assert wait > 0
            assert limiter.take_now('k', rate, 1)[0] == 0  # still none: the wait is not too long...
            clock[0] = now + wait + 1e-9
            assert limiter.take_now('k', rate, 1)[0] == 1  # ...nor too short: one is free right then
            limiter._tat['k'] -= rate.interval  # undo that probe
            clock[0] = now
        used = granted - min(unused, granted)
        if used < granted:
            limiter.give_back_now('k', rate, granted - used)
        takes.append((now, used))
    for i in range(len(takes)):
        total = 0
        for j in range(i, len(takes)):
            total += takes[j][1]
            assert total <= burst + (takes[j][0] - takes[i][0]) * rate.per_second + 1e-6


def test_limiter_of_falls_back_to_a_local_one() -> None:
    assert isinstance(limiter_of(object()), LocalLimiter)
    mine = LocalLimiter()

    class Transport:
        def limiter(self) -> LocalLimiter:
            return mine

    assert limiter_of(Transport()) is mine


def test_a_bad_consumer_rate_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(DeclarationError, match=r"Bad\.take.*'100/sec'"):
        class Bad(MicroAgent):
            @consumer(jobs, rate='100/sec')
            async def take(self, job: Job) -> None: ...

    with pytest.raises(DeclarationError, match=r'Bad\.take'):
        class Bad(MicroAgent):  # type: ignore[no-redef]
            @consumer(jobs, rate=100)  # type: ignore[call-overload, untyped-decorator]
            async def take(self, job: Job) -> None: ...


def test_a_consumer_rate_is_read_once() -> None:
    class Good(MicroAgent):
        @consumer(jobs, rate='5/m')
        async def take(self, job: Job) -> None: ...

    class Unlimited(MicroAgent):
        @consumer(jobs)
        async def take(self, job: Job) -> None: ...

    from microagent.tools.memory import MemoryBroker

    good = Good(broker=MemoryBroker())
    assert good.consumers[0].rate == Rate(5, 60)
    assert good.info()['consumers'][0]['rate'] == '5/m'
    assert Unlimited(broker=MemoryBroker()).consumers[0].rate is None


@pytest.mark.parametrize(('name', 'rate', 'count'), [('', '1/s', 1), ('a', '1/x', 1), ('a', '1/s', 0)])
def test_limit_arguments_are_checked(name: str, rate: str, count: int) -> None:
    with pytest.raises(ValueError):
        Limit(LocalLimiter(), name, rate, count)


async def test_an_agent_without_a_broker_limits_in_its_process() -> None:
    agent = MicroAgent()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(4):
        async with agent.limit('x', Rate(20, burst=1)):
            pass
    assert loop.time() - start >= 3 / 20 - 0.01
