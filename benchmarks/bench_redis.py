"""Redis backend against raw redis-py, same server, same run: ``python -m benchmarks.bench_redis``.

Messages are ``{"user_id": int, "text": str}`` validated against a msgspec Struct. Every figure is a
ratio to raw redis-py doing the same commands (ratio > 1: faster than raw). The DSN defaults to
db 9 of the local Redis; set MICROAGENT_BENCH_REDIS to use another. Keys are unique and deleted.
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import time
import tracemalloc
import uuid
from typing import Any, cast

import msgspec
import pydantic
from redis.asyncio import Redis

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.backends.redis import RedisBroker, RedisSignalBus
from microagent.backends.redis.frame import frame, unframe
from microagent.message import new_headers
from microagent.payload import codec_for

from .harness import Row, Side, alternate, latency_rows, median, print_table, rate, rate_row, scaled

DSN = os.environ.get('MICROAGENT_BENCH_REDIS', 'redis://127.0.0.1:6379/9')


class Message(msgspec.Struct, frozen=True):
    user_id: int
    text: str


class PydanticMessage(pydantic.BaseModel):
    user_id: int
    text: str


class Count(msgspec.Struct, frozen=True):
    user_id: int


def _name(kind: str) -> str:
    return f'bench_{kind}_{uuid.uuid4().hex[:8]}'


def _messages(count: int) -> list[Message]:
    return [Message(user_id=i, text=f'hello {i}') for i in range(count)]


async def _drop(client: Redis, name: str) -> None:
    await client.delete(name)
    async for key in client.scan_iter(match=f'{name}:*'):
        await client.delete(key)


# queues


async def bench_send(client: Redis, count: int = 5000) -> Row:
    queue = Queue(_name('send'), Message)
    broker = RedisBroker(DSN)
    bound, items = broker[queue], _messages(count)

    async def ours() -> None:
        for item in items:
            await bound.send(item)

    async def raw() -> None:
        for item in items:
            await client.rpush(queue.name, msgspec.json.encode(item))

    async def empty() -> None:
        await client.delete(queue.name)

    sides = Side(ours, empty), Side(raw, empty)
    await alternate(sides)
    await broker.close()
    await _drop(client, queue.name)
    return rate_row('sequential send (RPUSH)', count, *sides, target=0.85)


async def bench_send_consumed(client: Redis, count: int = 5000) -> Row:
    """The issue's first row: sequential sends consumed in the same process, as they come (raw:
    RPUSH, and a reader doing LPOP 500 or else BLPOP, then decoding; no acks)."""
    queue = Queue(_name('sendrecv'), Message)
    items = _messages(count)
    reader_client = Redis.from_url(DSN)
    handled = 0
    done = asyncio.Event()

    def hit() -> None:
        nonlocal handled
        handled += 1
        if handled == count:
            done.set()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=64)
        async def work(self, message: Message) -> None:
            hit()

    broker = RedisBroker(DSN)
    bound = broker[queue]
    agent = Worker(broker=broker)

    async def reset() -> None:
        nonlocal handled
        handled = 0
        done.clear()

    async def ours() -> None:
        for item in items:
            await bound.send(item)
        await done.wait()

    async def read() -> None:
        while True:
            items = cast(list[bytes] | None, await reader_client.lpop(queue.name + 'raw', 500))
            if not items:
                popped = cast(list[bytes] | None, await reader_client.blpop([queue.name + 'raw'], 1))
                items = [popped[1]] if popped else []
            for body in items:
                json.loads(body)
                hit()

    async def raw() -> None:
        for item in items:
            await client.rpush(queue.name + 'raw', msgspec.json.encode(item))
        await done.wait()

    await agent._start()
    reader = asyncio.create_task(read())
    sides = Side(ours, reset), Side(raw, reset)
    await alternate(sides)
    await agent.stop()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await reader_client.aclose()
    await broker.close()
    await _drop(client, queue.name)
    await client.delete(queue.name + 'raw')
    return rate_row('send -> consumed, same process (raw: RPUSH; LPOP 500/BLPOP + json.loads)', count, *sides,
                    target=0.95)


async def bench_send_many(client: Redis, total: int = 50_000, batch: int = 500) -> Row:
    queue = Queue(_name('many'), Message)
    broker = RedisBroker(DSN)
    bound = broker[queue]
    batches = [_messages(batch) for _ in range(total // batch)]

    async def ours() -> None:
        for chunk in batches:
            await bound.send_many(chunk)

    async def raw() -> None:
        for chunk in batches:
            await client.rpush(queue.name, *[msgspec.json.encode(item) for item in chunk])

    async def empty() -> None:
        await client.delete(queue.name)

    sides = Side(ours, empty), Side(raw, empty)
    await alternate(sides)
    await broker.close()
    await _drop(client, queue.name)
    return rate_row(f'send_many, {batch}/batch (raw: one RPUSH of {batch})', total, *sides, target=1.5)


async def _fill(client: Redis, name: str, total: int, framed: bool = False) -> None:
    """1.x bodies, or (``framed``) the envelope frames this version's producers send."""
    bodies = [msgspec.json.encode(item) for item in _messages(total)]
    if framed:
        bodies = [frame(body, new_headers()) for body in bodies]
    for start in range(0, total, 10_000):
        await client.rpush(name, *bodies[start:start + 10_000])


async def bench_drain(client: Redis, total: int = 100_000, concurrency: int = 64, framed: bool = False) -> list[Row]:
    """Drain freshly filled queues, raw and ours in turn each round. ``framed``: on envelope frames
    (raw: LPOP 500 + unframe + decode); else on 1.x bodies (raw: LPOP 500 + decode)."""
    name = _name('drain')
    decoder = msgspec.json.Decoder(Message)
    queue = Queue(name, Message)
    handled = 0
    done = asyncio.Event()

    class Drainer(MicroAgent):
        @consumer(queue, concurrency=concurrency)
        async def work(self, message: Message) -> None:
            nonlocal handled
            handled += 1
            if handled == total:
                done.set()

    async def raw() -> None:  # the baseline: the stdlib's json
        while items := cast(list[bytes] | None, await client.lpop(name, 500)):
            for body in items:
                json.loads(unframe(body).body if framed else body)

    async def raw_msgspec() -> None:  # a raw loop as fast as Python gets
        while items := cast(list[bytes] | None, await client.lpop(name, 500)):
            for body in items:
                decoder.decode(unframe(body).body if framed else body)

    broker = RedisBroker(DSN)
    agent = Drainer(broker=broker)

    async def fill() -> None:
        nonlocal handled, agent
        await _fill(client, name, total, framed)
        handled = 0
        done.clear()
        agent = Drainer(broker=broker)

    async def ours() -> None:
        await agent._start()
        await done.wait()

    async def stop() -> None:
        await agent.stop()

    async def fill_raw() -> None:
        await _fill(client, name, total, framed)

    sides = Side(ours, fill, stop), Side(raw, fill_raw), Side(raw_msgspec, fill_raw)
    await alternate(sides)
    await broker.close()
    await _drop(client, name)
    what = 'envelope frames' if framed else '1.x bodies'
    return [rate_row(f'drain {total // 1000}k {what} with acks (raw: LPOP 500 + json.loads, no acks)',
                     total, *sides[:2], target=None if framed else 0.6),
            rate_row('  the same vs raw decoding with msgspec', total, sides[0], sides[2], note='informational')]


# signals


async def bench_signal(client: Redis, count: int = 3000) -> Row:
    prefix = f'B{uuid.uuid4().hex[:8]}'
    signal = Signal(_name('signal'), Message)
    decoder = msgspec.json.Decoder(Message)
    items = _messages(count)
    got = 0
    all_in = asyncio.Event()

    def received() -> None:
        nonlocal got
        got += 1
        if got == count:
            all_in.set()

    async def reset() -> None:
        nonlocal got
        got = 0
        all_in.clear()

    class Listener(MicroAgent):
        @receiver(signal)
        async def on_message(self, message: Message) -> None:
            received()

    listening, sending = RedisSignalBus(DSN, prefix=prefix), RedisSignalBus(DSN, prefix=prefix)
    agent = Listener(bus=listening)
    await agent._start()
    bound = sending[signal]

    async def ours() -> None:
        for item in items:
            await bound.send('bench', item)
        await all_in.wait()

    channel = f'{prefix}:{signal.name}:bench'
    pubsub = client.pubsub()
    await pubsub.psubscribe(f'{prefix}:{signal.name}:*')

    async def read() -> None:
        async for message in pubsub.listen():
            if message['type'] == 'pmessage':
                decoder.decode(message['data'])
                received()

    reader = asyncio.create_task(read())

    async def raw() -> None:
        for item in items:
            await client.publish(channel, msgspec.json.encode(item))
        await all_in.wait()

    sides = Side(ours, reset), Side(raw, reset)
    await alternate(sides)
    await agent.stop()
    await listening.close()
    await sending.close()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await pubsub.aclose()
    return rate_row('signal send -> receive, sequential (PUBLISH)', count, *sides, target=0.95)


# signal groups (Redis streams)


async def bench_grouped_signal(client: Redis, count: int = 3000) -> Row:
    """A grouped receiver, sequential sends until all are handled; raw: XADD (approximate MAXLEN, as
    a good raw loop would trim) and a reader doing XREADGROUP 500 + decode + XACK of the batch."""
    prefix = f'B{uuid.uuid4().hex[:8]}'
    signal = Signal(_name('grouped'), Message)
    decoder = msgspec.json.Decoder(Message)
    items = _messages(count)
    got = 0
    all_in = asyncio.Event()

    def received() -> None:
        nonlocal got
        got += 1
        if got == count:
            all_in.set()

    class Member(MicroAgent):
        @receiver(signal, group='bench')
        async def on_message(self, message: Message) -> None:
            received()

    member_bus, sending = RedisSignalBus(DSN, prefix=prefix), RedisSignalBus(DSN, prefix=prefix)
    agent = Member(bus=member_bus)
    await agent._start()
    bound = sending[signal]

    async def ours() -> None:
        nonlocal got
        got = 0
        all_in.clear()
        for item in items:
            await bound.send('bench', item)
        await all_in.wait()

    stream = f'{prefix}:raw-stream'
    await client.xgroup_create(stream, 'raw', id='$', mkstream=True)
    reading = Redis.from_url(DSN)

    async def read() -> None:
        while True:
            reply: Any = await reading.xreadgroup('raw', 'c', {stream: '>'}, count=500, block=1000)
            for _, entries in reply or ():
                for _, fields in entries:
                    decoder.decode(fields[b'd'])
                    received()
                await reading.xack(stream, 'raw', *[entry_id for entry_id, _ in entries])

    reader = asyncio.create_task(read())

    async def raw() -> None:
        nonlocal got
        got = 0
        all_in.clear()
        for item in items:
            await client.xadd(stream, {'d': msgspec.json.encode(item), 's': 'bench'}, maxlen=100_000,
                              approximate=True)
        await all_in.wait()

    ours_rate = raw_rate = 0.0
    for _ in range(4):
        ours_rate = max(ours_rate, await rate(count, ours))
        raw_rate = max(raw_rate, await rate(count, raw))
    await agent.stop()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await reading.aclose()
    await member_bus.close()
    await sending.close()
    await _drop_groups(client, prefix)
    await client.delete(stream)
    return Row('grouped signal send -> handled, sequential (PUBLISH+XADD; raw: XADD, XREADGROUP, XACK)',
               ours_rate, raw_rate, 'msg/s', 0.8)


async def _fill_stream(client: Redis, stream: str, total: int) -> None:
    """What a sender of this version appends: the frame, the sender."""
    bodies = [frame(msgspec.json.encode(item), new_headers()) for item in _messages(total)]
    for start in range(0, total, 5000):
        async with client.pipeline(transaction=False) as pipe:
            for body in bodies[start:start + 5000]:
                pipe.xadd(stream, {'d': body, 's': 'bench'})
            await pipe.execute()


async def bench_grouped_drain(client: Redis, total: int = 100_000, rounds: int = 3) -> Row:
    """A group's member comes back to ``total`` retained signals; raw: XREADGROUP 500, unframe +
    decode each, XACK the batch, until the group has read them all."""
    from microagent.backends.redis.keys import group_stream

    prefix = f'B{uuid.uuid4().hex[:8]}'
    signal = Signal(_name('gdrain'), Message)
    decoder = msgspec.json.Decoder(Message)
    handled = 0
    done = asyncio.Event()

    class Member(MicroAgent):
        @receiver(signal, group='bench')
        async def on_message(self, message: Message) -> None:
            nonlocal handled
            handled += 1
            if handled == total:
                done.set()

    stream, raw_stream = group_stream(prefix, signal.name), f'{prefix}:raw-drain'
    bus = RedisSignalBus(DSN, prefix=prefix)
    agent = Member(bus=bus)
    await agent._start()  # the group exists from now on
    await agent.stop()

    async def raw() -> None:
        while True:
            reply: Any = await client.xreadgroup('raw', 'c', {raw_stream: '>'}, count=500)
            if not reply or not reply[0][1]:
                return
            entries = reply[0][1]
            for _, fields in entries:
                decoder.decode(unframe(fields[b'd']).body)
            await client.xack(raw_stream, 'raw', *[entry_id for entry_id, _ in entries])

    async def ours() -> None:
        await agent._start()
        await done.wait()

    raw_rates: list[float] = []
    our_rates: list[float] = []
    for _ in range(rounds):
        await client.delete(raw_stream)
        await client.xgroup_create(raw_stream, 'raw', id='$', mkstream=True)
        await _fill_stream(client, raw_stream, total)
        raw_rates.append(await rate(total, raw))
        await _fill_stream(client, stream, total)
        handled = 0
        done.clear()
        agent = Member(bus=bus)
        our_rates.append(await rate(total, ours))
        await agent.stop()
    await bus.close()
    await client.delete(raw_stream)
    await _drop_groups(client, prefix)
    return Row(f'drain {total // 1000}k retained grouped signals (raw: XREADGROUP 500 + unframe + decode + XACK)',
               median(our_rates), median(raw_rates), 'msg/s', 0.8, note=f'median of {rounds} alternating rounds')


async def _drop_groups(client: Redis, prefix: str) -> None:
    from microagent.backends.redis.keys import group_registry, group_stream

    await client.delete(group_registry(prefix))
    async for key in client.scan_iter(match=f'{group_stream(prefix, "")}*'):
        await client.delete(key)


async def bench_rpc(client: Redis, count: int = 1000) -> list[Row]:
    prefix = f'B{uuid.uuid4().hex[:8]}'
    signal = Signal(_name('rpc'), Count, returns=int)

    class Counter(MicroAgent):
        @receiver(signal)
        async def count(self, query: Count) -> int:
            return query.user_id + 1

    serving, calling = RedisSignalBus(DSN, prefix=prefix), RedisSignalBus(DSN, prefix=prefix)
    agent = Counter(bus=serving)
    await agent._start()
    bound = calling[signal]
    await bound.call('bench', Count(user_id=0), timeout=5)  # warm up: response subscription

    # raw ping-pong: a responder reads the request and publishes an answer the caller reads
    requests, answers = client.pubsub(), client.pubsub()
    await requests.psubscribe(f'{prefix}:req:*')
    await answers.psubscribe(f'{prefix}:resp:*')
    waiting: dict[bytes, asyncio.Future[bytes]] = {}

    async def respond() -> None:
        async for message in requests.listen():
            if message['type'] == 'pmessage':
                request_id = message['channel'].rpartition(b'#')[2]
                value = msgspec.json.decode(message['data'], type=Count).user_id + 1
                await client.publish(f'{prefix}:resp:x#{request_id.decode()}',
                                     msgspec.json.encode({'Raw.count': value}))

    async def collect() -> None:
        async for message in answers.listen():
            if message['type'] == 'pmessage':
                future = waiting.pop(message['channel'].rpartition(b'#')[2], None)
                if future is not None:
                    future.set_result(message['data'])

    tasks = [asyncio.create_task(respond()), asyncio.create_task(collect())]
    loop = asyncio.get_running_loop()
    ours_rounds: list[list[float]] = []
    raw_rounds: list[list[float]] = []

    async def ours() -> None:
        samples = []
        for i in range(count):
            start = time.perf_counter()
            await bound.call('bench', Count(user_id=i), timeout=5)
            samples.append(time.perf_counter() - start)
        ours_rounds.append(samples)

    async def raw() -> None:
        samples = []
        for i in range(count):
            request_id = uuid.uuid4().hex
            future: asyncio.Future[bytes] = loop.create_future()
            waiting[request_id.encode()] = future
            start = time.perf_counter()
            await client.publish(f'{prefix}:req:bench#{request_id}', msgspec.json.encode(Count(user_id=i)))
            await future
            samples.append(time.perf_counter() - start)
        raw_rounds.append(samples)

    sides = Side(ours), Side(raw)
    await alternate(sides)
    del ours_rounds[0], raw_rounds[0]  # the warm-up round
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await requests.aclose()
    await answers.aclose()
    await agent.stop()
    await serving.close()
    await calling.close()
    cpu = (median(sides[0].cpu) / count * 1e6, median(sides[1].cpu) / count * 1e6)
    return latency_rows('RPC round trip p50 (raw: pub/sub ping-pong)', ours_rounds, raw_rounds, 1 / 1.1, cpu)


# codecs and memory


def bench_codecs(count: int = 20_000) -> list[Row]:
    rows = []
    for label, model, make in (('msgspec', Message, lambda i: Message(user_id=i, text='hello')),
                               ('pydantic', PydanticMessage, lambda i: PydanticMessage(user_id=i, text='hello'))):
        codec: Any = codec_for(model, 'benchmark')
        items = [make(i) for i in range(count)]
        start = time.perf_counter()
        bodies = [codec.encode(item) for item in items]
        encode = (time.perf_counter() - start) / count * 1e6
        start = time.perf_counter()
        for body in bodies:
            codec.decode(body)
        decode = (time.perf_counter() - start) / count * 1e6
        rows.append(Row(f'encode+validate, {label}', encode, None, 'us/msg', note='send side'))
        rows.append(Row(f'decode+validate, {label}', decode, None, 'us/msg', note='receive side'))
    return rows


async def bench_idle_memory() -> Row:
    signal, queue = Signal(_name('idle'), Message), Queue(_name('idle'), Message)

    class Idle(MicroAgent):
        @receiver(signal)
        async def on_message(self, message: Message) -> None: ...

        @consumer(queue)
        async def work(self, message: Message) -> None: ...

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    bus, broker = RedisSignalBus(DSN), RedisBroker(DSN)
    agent = Idle(bus=bus, broker=broker)
    await agent._start()
    await asyncio.sleep(2)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    await agent.stop()
    await bus.close()
    await broker.close()
    return Row('memory of an idle agent (1 receiver, 1 consumer)', used / 1024, None, 'KiB',
               note='tracemalloc, after 2 s idle')


async def main() -> None:
    client = Redis.from_url(DSN)
    rows: list[Row] = []
    try:
        rows.append(await bench_send(client, scaled(5000)))
        rows.append(await bench_send_consumed(client, scaled(5000)))
        rows.append(await bench_send_many(client, scaled(50_000)))
        rows.extend(await bench_drain(client, scaled(100_000)))
        rows.extend(await bench_drain(client, scaled(100_000), framed=True))
        rows.append(await bench_signal(client, scaled(3000)))
        rows.append(await bench_grouped_signal(client, scaled(3000)))
        rows.append(await bench_grouped_drain(client, scaled(100_000)))
        rows.extend(await bench_rpc(client, scaled(1000)))
        rows.extend(bench_codecs(scaled(20_000)))
        rows.append(await bench_idle_memory())
    finally:
        await client.aclose()
    print_table(f'microagent on Redis vs raw redis-py ({DSN.rpartition("@")[2]})', rows)


if __name__ == '__main__':
    asyncio.run(main())
