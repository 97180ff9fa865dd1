"""Prometheus metrics as a middleware (extra ``prometheus``: prometheus-client).

Counting lives beside the engine, not in it: ``PrometheusMiddleware`` sees every handling and every
send and their outcome, and turns them into counters, histograms and gauges labelled by agent, kind
(receiver, consumer, periodic, cron), signal or queue name and handler. Labels are bounded by the
code (its declarations and handlers), never by the traffic: no message ids, no senders.

    metrics = PrometheusMiddleware()          # registers in prometheus_client.REGISTRY
    agent = MailAgent(bus=bus, broker=broker, middlewares=[metrics])

Queue depth (ready + delayed: retries and delayed sends count, they are work still to do) and the
messages in flight (taken, not settled) are gauges sampled from the broker on an interval, never on a
scrape (so a scrape never waits on a server, and answers while the broker is down) and never on the
send path: ``metrics.watch_queues(agent)`` samples the queues the agent consumes once it has started,
then every ``depth_interval`` seconds (15, a common scrape interval) until it stops; ``marun`` does
that for every agent the middleware wraps. ``await metrics.sample_depths(broker, ['mailer'])``
samples any queue when asked. The same sampling gives the lag of each signal group the agent's
grouped receivers belong to (the signals the group has not handled yet: ready, delayed and in
flight), from its bus.

The middleware is its own collector: it counts in plain numbers on the event loop (no lock, no
label lookup per message) and hands prometheus-client the families when the registry is scraped.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from microagent.middleware import Handling, Middleware, Next, Outcome, Sending, Site
from microagent.readiness import PING_TIMEOUT
from microagent.signing import rejected

if TYPE_CHECKING:
    from microagent.broker import AbstractQueueBroker
    from microagent.transport import QueueDepth

__all__ = ['PrometheusMiddleware', 'counts_messages']

HANDLER_LABELS = ('agent', 'kind', 'name', 'handler')
#: handler durations, in seconds: from a fast in-memory handler to a slow external call
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: time from sending to handling, in seconds: a backlog can hold messages for minutes
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

#: seconds between two samples of the depth of an agent's consumed queues
DEPTH_INTERVAL = 15.0

_OK, _RETRIED, _DEAD_LETTERED = Outcome.OK, Outcome.RETRIED, Outcome.DEAD_LETTERED
log = logging.getLogger('microagent.metrics')


class _Histogram:
    """Counts per bucket (``le`` bounds, the last one +Inf) and the sum, cumulated when scraped."""

    __slots__ = ('bounds', 'counts', 'total')

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        bounds = [*map(floatToGoString, self.bounds), '+Inf']
        return list(zip(bounds, accumulate(self.counts), strict=True))


class _Series:
    """One handler's numbers."""

    __slots__ = ('dead_lettered', 'duration', 'failed', 'handled', 'in_flight', 'labels', 'received', 'retried',
                 'timed_out', 'waited')

    def __init__(self, labels: tuple[str, str, str, str]) -> None:
        self.labels = labels
        self.received = self.handled = self.failed = self.retried = self.dead_lettered = self.timed_out = 0
        self.in_flight = 0
        self.duration = _Histogram(DURATION_BUCKETS)
        self.waited = _Histogram(QUEUE_BUCKETS)


_COUNTERS = (
    ('messages_received', 'received', 'Messages and timer runs that reached a handler'),
    ('messages_handled', 'handled', 'Handler runs that returned'),
    ('messages_failed', 'failed', 'Handler runs that raised or timed out, or invalid messages'),
    ('messages_retried', 'retried', 'Queue messages that failed and will be delivered again'),
    ('messages_dead_lettered', 'dead_lettered', 'Queue messages moved to the dead letters'),
    ('handler_timeouts', 'timed_out', 'Handler runs that overran their timeout'),
)


class Watched(Protocol):
    """What ``watch_queues`` reads of an agent (a ``MicroAgent``; ops sits above the agent, which
    imports ops for its endpoints, so this names the shape instead of the class)."""

    @property
    def consumers(self) -> Sequence[Any]: ...

    @property
    def receivers(self) -> Sequence[Any]: ...

    @property
    def hooks(self) -> dict[str, list[Callable[[], Any]]]: ...


class PrometheusMiddleware(Middleware):
    """Counters, histograms and gauges of handling and sending, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, namespace: str = 'microagent',
                 depth_interval: float = DEPTH_INTERVAL) -> None:
        self.registry = registry
        self.namespace = namespace
        self.depth_interval = depth_interval  #: seconds between depth samples; 0: only the one at start
        self._series: dict[Site, _Series] = {}
        self._sent: dict[tuple[str, str], int] = {}
        self._depths: dict[str, QueueDepth] = {}
        self._lags: dict[str, QueueDepth] = {}  # by group store, ``signal@group``
        registry.register(self)
        _COUNTING.add(registry)

    def _of(self, handling: Handling) -> _Series:
        series = self._series.get(handling.site)  # one site per handler: no label tuple per message
        if series is None:
            series = self._series[handling.site] = _Series(
                (handling.agent, handling.kind, handling.name, handling.handler))
        return series

    async def handle(self, handling: Handling, call_next: Next) -> Any:
        series = self._of(handling)
        series.received += 1
        sent_at = handling.sent_at
        if sent_at is not None:
            series.waited.observe(max(time.time() - sent_at, 0.0))
        series.in_flight += 1
        started = time.perf_counter()
        try:
            return await call_next()
        finally:
            series.duration.observe(time.perf_counter() - started)
            series.in_flight -= 1
            outcome = handling.outcome
            if outcome is _OK:
                series.handled += 1
            else:
                series.failed += 1
                series.timed_out += handling.timed_out
                series.retried += outcome is _RETRIED
                series.dead_lettered += outcome is _DEAD_LETTERED

    async def send(self, sending: Sending, call_next: Next) -> Any:
        result = await call_next()
        key = (sending.kind, sending.name)
        self._sent[key] = self._sent.get(key, 0) + len(sending.headers)
        return result

    async def sample_depths(self, broker: AbstractQueueBroker, queues: Iterable[str]) -> None:
        """Set the depth and in-flight gauges of each queue from the broker (one ``queue_depth`` each)."""
        await self._sample_into(self._depths, broker, queues)

    async def _sample_into(self, gauges: dict[str, QueueDepth], source: AbstractQueueBroker,
                           names: Iterable[str]) -> None:
        for name in names:
            gauges[name] = await source.queue_depth(name)

    def watch_queues(self, agent: Watched) -> None:
        """Sample the depth of the queues ``agent`` consumes, from its broker, and the lag of the
        groups its grouped receivers belong to, from its bus: once when it has started (a
        ``post_start`` hook), then every ``depth_interval`` seconds in a task of its own, until it
        stops (a ``pre_stop`` hook). A sample that fails or takes longer than a ping leaves the
        gauge at its last value; ``/ready`` says what is wrong with the broker or bus."""
        watched: list[tuple[dict[str, QueueDepth], Any, list[str]]] = []
        queues = sorted({consumer.queue.name for consumer in agent.consumers})
        if queues and (broker := getattr(agent, 'broker', None)) is not None:
            watched.append((self._depths, broker, queues))
        stores = sorted({f'{r.signal.name}@{r.grouping.name}' for r in agent.receivers if r.grouping is not None})
        if stores and (bus := getattr(agent, 'bus', None)) is not None:
            watched.append((self._lags, bus.groups, stores))
        if not watched:
            return
        sampling: list[asyncio.Task[None]] = []

        async def sample() -> None:
            for gauges, source, names in watched:
                await self._sample(gauges, source, names)

        async def start_sampling() -> None:
            await sample()
            if self.depth_interval > 0:
                sampling.append(asyncio.create_task(self._sample_every(sample), name='queue-depths'))

        async def stop_sampling() -> None:
            for task in sampling:
                task.cancel()
            await asyncio.gather(*sampling, return_exceptions=True)
            sampling.clear()

        agent.hooks.setdefault('post_start', []).append(start_sampling)
        agent.hooks.setdefault('pre_stop', []).append(stop_sampling)

    async def _sample(self, gauges: dict[str, QueueDepth], source: AbstractQueueBroker, names: list[str]) -> None:
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self._sample_into(gauges, source, names)
        except Exception as exc:
            log.debug('Depths of %s not sampled: %s: %s', ', '.join(names), type(exc).__name__, exc)

    async def _sample_every(self, sample: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self.depth_interval)
            await sample()

    # the collector side: prometheus-client calls these when the registry is scraped

    def describe(self) -> list[Metric]:
        """The families without samples, so that the registry refuses a second one of these names."""
        return list(self._families([], {}, {}, {}))

    def collect(self) -> Iterator[Metric]:
        return self._families(list(self._series.values()), dict(self._sent), dict(self._depths), dict(self._lags),
                              dict(rejected))

    def _families(self, all_series: list[_Series], sent: dict[tuple[str, str], int],
                  depths: dict[str, QueueDepth], lags: dict[str, QueueDepth],
                  refusals: dict[tuple[str, str, str], int] | None = None) -> Iterator[Metric]:
        prefix = self.namespace
        for name, attribute, doc in _COUNTERS:
            counter = CounterMetricFamily(f'{prefix}_{name}', doc, labels=HANDLER_LABELS)
            for series in all_series:
                counter.add_metric(series.labels, getattr(series, attribute))
            yield counter
        sent_family = CounterMetricFamily(f'{prefix}_messages_sent',
                                          'Messages sent: signals, RPC calls and answers, queue messages',
                                          labels=('kind', 'name'))
        for labels, count in sent.items():
            sent_family.add_metric(labels, count)
        yield sent_family
        refused = CounterMetricFamily(f'{prefix}_messages_rejected',
                                      'Messages refused for their signature (signing_key): dropped signals and '
                                      'answers, dead-lettered queue messages', labels=('kind', 'name', 'reason'))
        for refusal, count in (refusals or {}).items():
            refused.add_metric(refusal, count)
        yield refused
        yield _histograms(f'{prefix}_handler_duration_seconds', 'Time a handler run took',
                          [(series.labels, series.duration) for series in all_series])
        yield _histograms(f'{prefix}_time_in_queue_seconds', 'Time from sending a message to the start of its handling',
                          [(series.labels, series.waited) for series in all_series])
        in_flight = GaugeMetricFamily(f'{prefix}_handlers_in_flight', 'Handler runs under way', labels=HANDLER_LABELS)
        for series in all_series:
            in_flight.add_metric(series.labels, series.in_flight)
        yield in_flight
        depth = GaugeMetricFamily(f'{prefix}_queue_depth',
                                  'Messages still to handle in a queue (ready + delayed), as last sampled',
                                  labels=('queue',))
        taken = GaugeMetricFamily(f'{prefix}_queue_in_flight',
                                  'Messages of a queue taken by consumers and not settled, as last sampled',
                                  labels=('queue',))
        for queue, sampled in depths.items():
            depth.add_metric((queue,), sampled.depth)
            taken.add_metric((queue,), sampled.in_flight)
        yield depth
        yield taken
        lag = GaugeMetricFamily(f'{prefix}_group_lag',
                                'Signals a group has not handled yet (waiting, due to retry or being handled), '
                                'as last sampled',
                                labels=('signal', 'group'))
        for store, sampled in lags.items():
            lag.add_metric(store.split('@', 1), sampled.total)
        yield lag


_COUNTING: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()


def counts_messages(registry: CollectorRegistry = REGISTRY) -> bool:
    """Whether a ``PrometheusMiddleware`` registers its metrics in ``registry``: without one, a
    scrape of it holds the process's own metrics only."""
    return registry in _COUNTING


def _histograms(name: str, doc: str, items: list[tuple[tuple[str, ...], _Histogram]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=HANDLER_LABELS)
    for labels, histogram in items:
        family.add_metric(labels, histogram.buckets(), histogram.total)
    return family
