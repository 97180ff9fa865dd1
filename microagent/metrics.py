"""Prometheus metrics as a middleware (extra ``prometheus``: prometheus-client).

Counting lives beside the engine, not in it: ``PrometheusMiddleware`` sees every handling and every
send and their outcome, and turns them into counters, histograms and gauges labelled by agent, kind
(receiver, consumer, periodic, cron), signal or queue name and handler. Labels are bounded by the
code (its declarations and handlers), never by the traffic: no message ids, no senders.

    metrics = PrometheusMiddleware()          # registers in prometheus_client.REGISTRY
    agent = MailAgent(bus=bus, broker=broker, middlewares=[metrics])

Queue depth is a gauge sampled from the broker when asked (``await metrics.sample_depths(broker,
['mailer'])``, e.g. from a ``@periodic`` task), so a scrape never waits on a server.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from .middleware import Handling, Middleware, Next, Outcome, Sending

if TYPE_CHECKING:
    from .broker import AbstractQueueBroker

__all__ = ['PrometheusMiddleware']

HANDLER_LABELS = ('agent', 'kind', 'name', 'handler')
#: handler durations, in seconds: from a fast in-memory handler to a slow external call
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: time from sending to handling, in seconds: a backlog can hold messages for minutes
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class _Series:
    """The labelled children of one handler, looked up once instead of on every message."""

    __slots__ = ('dead_lettered', 'duration', 'failed', 'handled', 'in_flight', 'received', 'retried', 'timed_out',
                 'waited')

    def __init__(self, metrics: PrometheusMiddleware, labels: tuple[str, str, str, str]) -> None:
        self.received = metrics.received.labels(*labels)
        self.handled = metrics.handled.labels(*labels)
        self.failed = metrics.failed.labels(*labels)
        self.retried = metrics.retried.labels(*labels)
        self.dead_lettered = metrics.dead_lettered.labels(*labels)
        self.timed_out = metrics.timed_out.labels(*labels)
        self.duration = metrics.duration.labels(*labels)
        self.in_flight = metrics.in_flight.labels(*labels)
        self.waited = metrics.time_in_queue.labels(*labels)


class PrometheusMiddleware(Middleware):
    """Counters, histograms and gauges of handling and sending; one per registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, namespace: str = 'microagent') -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = HANDLER_LABELS) -> Counter:
            return Counter(f'{namespace}_{name}', doc, labels, registry=registry)

        self.registry = registry
        self.received = counter('messages_received', 'Messages and timer runs that reached a handler')
        self.handled = counter('messages_handled', 'Handler runs that returned')
        self.failed = counter('messages_failed', 'Handler runs that raised or timed out, or invalid messages')
        self.retried = counter('messages_retried', 'Queue messages that failed and will be delivered again')
        self.dead_lettered = counter('messages_dead_lettered', 'Queue messages moved to the dead letters')
        self.timed_out = counter('handler_timeouts', 'Handler runs that overran their timeout')
        self.sent = counter('messages_sent', 'Messages sent: signals, RPC calls and answers, queue messages',
                            ('kind', 'name'))
        self.duration = Histogram(f'{namespace}_handler_duration_seconds', 'Time a handler run took',
                                  HANDLER_LABELS, registry=registry, buckets=DURATION_BUCKETS)
        self.time_in_queue = Histogram(f'{namespace}_time_in_queue_seconds',
                                       'Time from sending a message to the start of its handling',
                                       HANDLER_LABELS, registry=registry, buckets=QUEUE_BUCKETS)
        # the modes matter under marun --http, where agent processes share prometheus-client's
        # multiprocess mode: in-flight runs add up over live processes, a depth is the last sample
        self.in_flight = Gauge(f'{namespace}_handlers_in_flight', 'Handler runs under way', HANDLER_LABELS,
                               registry=registry, multiprocess_mode='livesum')
        self.queue_depth = Gauge(f'{namespace}_queue_depth', 'Messages waiting in a queue, as last sampled',
                                 ('queue',), registry=registry, multiprocess_mode='mostrecent')
        self._series: dict[tuple[str, str, str, str], _Series] = {}

    def _of(self, handling: Handling) -> _Series:
        labels = (handling.agent, handling.kind, handling.name, handling.handler)
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(self, labels)
        return series

    async def handle(self, handling: Handling, call_next: Next) -> Any:
        series = self._of(handling)
        series.received.inc()
        message = handling.message
        if message is not None:
            series.waited.observe(max(time.time() - message.sent_at, 0.0))
        series.in_flight.inc()
        started = time.perf_counter()
        try:
            return await call_next()
        finally:
            series.duration.observe(time.perf_counter() - started)
            series.in_flight.dec()
            self._count_outcome(series, handling)

    @staticmethod
    def _count_outcome(series: _Series, handling: Handling) -> None:
        outcome = handling.outcome
        if outcome is Outcome.OK:
            series.handled.inc()
            return
        series.failed.inc()
        if handling.timed_out:
            series.timed_out.inc()
        if outcome is Outcome.RETRIED:
            series.retried.inc()
        elif outcome is Outcome.DEAD_LETTERED:
            series.dead_lettered.inc()

    async def send(self, sending: Sending, call_next: Next) -> Any:
        result = await call_next()
        self.sent.labels(sending.kind, sending.name).inc(len(sending.headers))
        return result

    async def sample_depths(self, broker: AbstractQueueBroker, queues: Iterable[str]) -> None:
        """Set the queue-depth gauge of each queue from the broker (one ``length`` call each)."""
        for name in queues:
            self.queue_depth.labels(name).set(await broker.queue_length(name))
