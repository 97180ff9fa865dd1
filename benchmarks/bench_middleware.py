"""What a middleware costs per message: drain a memory queue with no middleware, with one that only
passes the call on, with the tracing middleware (the API's no-op provider, then the SDK exporting to
memory) and with the Prometheus metrics middleware; the difference per message is the middleware's
cost (the memory backend has no server, so it is all client CPU). A second table times the sends.
The ``signing`` row is no middleware: the broker's ``signing_key`` (an HMAC-SHA256 signed on send,
checked on fetch), measured the same way.

    python -m benchmarks.bench_middleware [--count N] [--rounds R]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import time
import uuid

import msgspec
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from microagent import MicroAgent, Middleware, Queue, consumer
from microagent.backends.memory import MemoryBroker
from microagent.message import Envelope, Incoming, new_headers
from microagent.middleware import Handling, MiddlewareLike, Sending, Site
from microagent.ops.metrics import PrometheusMiddleware
from microagent.ops.tracing import TracingMiddleware
from microagent.signing import SigningKeys

from .harness import median


class Job(msgspec.Struct, frozen=True):
    n: int


async def drain_seconds(count: int, middlewares: list[MiddlewareLike], signing_key: str | None = None) -> float:
    """Seconds to handle ``count`` queued messages (queued before the consumer starts)."""
    queue = Queue(f'bench_mw_{uuid.uuid4().hex[:8]}', Job)
    done = asyncio.Event()
    handled = 0

    class Worker(MicroAgent):
        @consumer(queue, concurrency=8)
        async def work(self, job: Job) -> None:
            nonlocal handled
            handled += 1
            if handled == count:
                done.set()

    broker = MemoryBroker(signing_key=signing_key)
    await broker[queue].send_many([Job(n=i) for i in range(count)])
    agent = Worker(broker=broker, middlewares=middlewares)
    start = time.perf_counter()
    await agent.start()
    await done.wait()
    elapsed = time.perf_counter() - start
    await agent.stop()
    await broker.close()
    return elapsed


async def send_seconds(count: int, middlewares: list[MiddlewareLike], signing_key: str | None = None) -> float:
    """Seconds to send ``count`` messages one by one (nothing consumes them)."""
    queue = Queue(f'bench_mw_{uuid.uuid4().hex[:8]}', Job)
    broker = MemoryBroker(signing_key=signing_key).use(*middlewares)
    bound, job = broker[queue], Job(n=1)
    start = time.perf_counter()
    for _ in range(count):
        await bound.send(job)
    elapsed = time.perf_counter() - start
    await broker.close()
    return elapsed


async def _done() -> None:
    return None


async def alone_seconds(count: int, middlewares: list[MiddlewareLike], signing_key: str | None = None) -> float:
    """Seconds for ``count`` handle() and send() calls of the (one) middleware alone, around a call
    that does nothing; 'none' awaits that call directly. Its own cost, without the engine's and the
    backend's, and their noise."""
    site = Site('consumer', 'Worker', 'Worker.work', 'jobs', 'memory')
    incoming = Incoming(new_headers())
    middleware = middlewares[0] if middlewares else None
    if signing_key is not None:  # signing a message's envelope and checking it, alone
        return _signing_alone(count, SigningKeys(signing_key))
    start = time.perf_counter()
    for _ in range(count):
        handling, sending = Handling(site, incoming), Sending('queue', 'jobs', 'memory', [new_headers()])
        if middleware is None:
            await _done()
            await _done()
        else:
            await middleware.handle(handling, _done)
            await middleware.send(sending, _done)
    return time.perf_counter() - start


def _signing_alone(count: int, keys: SigningKeys) -> float:
    body = msgspec.json.encode(Job(n=1))
    start = time.perf_counter()
    for _ in range(count):
        if keys.check(keys.sign(Envelope(body, new_headers()))) is not None:
            raise AssertionError('a message signed here does not verify')
    return time.perf_counter() - start


#: rows that are a broker's signing key, not middlewares
SIGNING = {'signing': 'bench-fleet-key-0123456789abcdef'}


def variants() -> tuple[dict[str, list[MiddlewareLike]], InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # given, not global: the no-op row stays no-op
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return {'none': [], 'pass-through': [Middleware()], 'tracing no-op': [TracingMiddleware()],
            'tracing SDK': [TracingMiddleware(provider)],
            'prometheus': [PrometheusMiddleware(CollectorRegistry())], 'signing': []}, exporter


async def main(count: int, rounds: int) -> None:
    chains, exporter = variants()
    for title, measure in (('handled', drain_seconds), ('sent', send_seconds),
                           ('handled and sent, by the middleware alone', alone_seconds)):
        times: dict[str, list[float]] = {name: [] for name in chains}
        for _ in range(rounds):  # alternating, so that load on the machine hits every variant alike
            for name, middlewares in chains.items():
                gc.collect()  # the garbage of one variant (spans) is not collected in the time of another
                times[name].append(await measure(count, middlewares, SIGNING.get(name)))
                exporter.clear()  # finished spans pile up in memory otherwise
        pick, how = (min, 'best') if measure is alone_seconds else (median, 'median')  # a micro-benchmark: best
        base = pick(times['none']) / count
        print(f'\nMiddleware cost per message {title} (memory broker, {count:,} messages, {how} of {rounds} rounds)')
        print(f'{"middlewares":<14} {"us/msg":>8} {"added us/msg":>13}')
        for name in chains:
            per = pick(times[name]) / count
            print(f'{name:<14} {per * 1e6:>8.2f} {(per - base) * 1e6:>13.2f}')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--count', type=int, default=50_000)
    parser.add_argument('--rounds', type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rounds))
