"""Redis wire compatibility with microagent 1.x (both directions), storage layout, DSN handling."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import textwrap
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.backends.redis import RedisBroker, RedisSignalBus
from microagent.backends.redis.keys import inflight_key
from microagent.cli.config import load_module
from tests.conformance.backends import REDIS_TEST_DSN
from tests.helpers import Collector, eventually
from tests.services import REDIS_HOST, REDIS_PORT

pytestmark = pytest.mark.redis


class Note(msgspec.Struct, frozen=True):
    user_id: int
    text: str


class Query(msgspec.Struct, frozen=True):
    user_id: int


async def _drop_queue(client: Redis, name: str) -> None:
    await client.delete(name)
    async for key in client.scan_iter(match=f'{name}:*'):
        await client.delete(key)


async def _next_message(pubsub: Any, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            if message is not None:
                return dict(message)


# signals


async def test_signal_published_by_1x_reaches_a_typed_receiver(raw: Redis, unique: str) -> None:
    signal = Signal(f'noted_{unique}', Note)
    got = Collector()

    class Reader(MicroAgent):
        @receiver(signal)
        async def on_note(self, note: Note, *, sender: str) -> None:
            got.add((note, sender))

    bus = RedisSignalBus(REDIS_TEST_DSN)  # default prefix PUBSUB, as 1.x
    try:
        async with Reader(bus=bus):
            # exactly what 1.x's json.dumps produces, spaces included
            await raw.publish(f'PUBSUB:noted_{unique}:legacy_agent', b'{"user_id": 1, "text": "hi"}')
            assert await got.wait(1) == [(Note(1, 'hi'), 'legacy_agent')]
    finally:
        await bus.close()


async def test_signal_sent_here_is_what_a_1x_agent_reads(raw: Redis, unique: str) -> None:
    signal = Signal(f'noted_{unique}', Note)
    bus = RedisSignalBus(REDIS_TEST_DSN, wire='1.x')
    pubsub = raw.pubsub()
    try:
        await pubsub.psubscribe(f'PUBSUB:noted_{unique}:*')  # how 1.x binds a signal
        await bus[signal].send('new_agent', Note(user_id=2, text='é'))
        message = await _next_message(pubsub)
    finally:
        await pubsub.aclose()
        await bus.close()
    assert message['channel'] == f'PUBSUB:noted_{unique}:new_agent'.encode()
    assert json.loads(message['data']) == {'user_id': 2, 'text': 'é'}


async def test_rpc_request_from_1x_is_answered_on_the_1x_response_channel(raw: Redis, unique: str) -> None:
    signal = Signal(f'count_{unique}', Query, returns=int)

    class Counter(MicroAgent):
        @receiver(signal)
        async def count(self, query: Query) -> int:
            return query.user_id * 10

    bus = RedisSignalBus(REDIS_TEST_DSN)
    pubsub = raw.pubsub()
    try:
        await pubsub.psubscribe('PUBSUB:response:*')
        async with Counter(bus=bus):
            await raw.publish(f'PUBSUB:count_{unique}:legacy#{unique}', b'{"user_id": 4}')
            message = await _next_message(pubsub)
    finally:
        await pubsub.aclose()
        await bus.close()
    assert message['channel'] == f'PUBSUB:response:{bus.transport.uid}#{unique}'.encode()
    assert json.loads(message['data']) == {Counter.count.__qualname__: 40}


async def test_rpc_call_from_here_is_answered_by_a_1x_agent(raw: Redis, unique: str) -> None:
    signal = Signal(f'count_{unique}', Query, returns=int)
    pubsub = raw.pubsub()
    await pubsub.psubscribe(f'PUBSUB:count_{unique}:*')
    requests: list[tuple[bytes, Any]] = []

    async def legacy_agent() -> None:  # the 1.x side: read the request, answer {"Class.method": value}
        message = await _next_message(pubsub)
        channel = message['channel'].decode()
        requests.append((message['channel'], json.loads(message['data'])))
        request_id = channel.partition('#')[2]
        await raw.publish(f'PUBSUB:response:{uuid.uuid4().hex}#{request_id}', b'{"Legacy.count": 5}')

    bus = RedisSignalBus(REDIS_TEST_DSN, wire='1.x')
    task = asyncio.create_task(legacy_agent())
    try:
        answer = await bus[signal].call('caller', Query(user_id=3), timeout=5)
        await task
    finally:
        await pubsub.aclose()
        await bus.close()
    assert answer == {'Legacy.count': 5}
    ((channel, body),) = requests
    name, _, request_id = channel.decode().partition('#')
    assert name == f'PUBSUB:count_{unique}:caller' and len(request_id) == 32
    assert body == {'user_id': 3}


async def test_custom_prefix_and_one_subscriber_connection_per_bus(raw: Redis, unique: str) -> None:
    signals = [Signal(f'many_{i}_{unique}', Note) for i in range(5)]
    got = Collector()

    class Many(MicroAgent):
        @receiver(*signals)
        async def on_any(self, note: Note) -> None:
            got.add(note.user_id)

    prefix = f'APP{unique}'
    bus = RedisSignalBus(f'{REDIS_TEST_DSN}?client_name=bus{unique}', prefix=prefix)
    try:
        async with Many(bus=bus):
            for i, signal in enumerate(signals):
                await bus[signal].send('me', Note(user_id=i, text=''))
            assert sorted(await got.wait(5)) == [0, 1, 2, 3, 4]
            ours = [c for c in await raw.client_list() if c.get('name') == f'bus{unique}']
    finally:
        await bus.close()
    subscribers = [c for c in ours if int(c['psub'])]
    # the five signals, and since its first send the joins of signal groups of its prefix ({prefix}:~groups)
    assert len(subscribers) == 1 and int(subscribers[0]['psub']) == 6


# queues


async def test_message_pushed_by_1x_is_consumed(raw: Redis, unique: str) -> None:
    typed = Queue(f'notes_{unique}', Note)
    legacy = Queue(name=f'legacy_{unique}')
    got = Collector()

    class Worker(MicroAgent):
        @consumer(typed)
        async def on_note(self, note: Note) -> None:
            got.add(note)

        @consumer(legacy)
        async def on_legacy(self, **kwargs: Any) -> None:
            got.add(kwargs)

    broker = RedisBroker(REDIS_TEST_DSN)
    try:
        async with Worker(broker=broker):
            await raw.rpush(typed.name, b'{"user_id": 1, "text": "hi"}')
            await raw.rpush(legacy.name, b'{"text": "Hello world!"}')
            items = await got.wait(2)
        assert Note(1, 'hi') in items and {'text': 'Hello world!'} in items
    finally:
        await broker.close()
        await _drop_queue(raw, typed.name)
        await _drop_queue(raw, legacy.name)


async def test_message_sent_here_is_what_a_1x_consumer_pops(raw: Redis, unique: str) -> None:
    queue = Queue(f'notes_{unique}', Note)
    broker = RedisBroker(REDIS_TEST_DSN, wire='1.x')
    try:
        await broker[queue].send(Note(user_id=1, text='a'))
        await broker[queue].send_many([Note(user_id=2, text='b'), Note(user_id=3, text='c')])
        popped = [await raw.blpop([queue.name], 1) for _ in range(3)]  # how 1.x consumes
    finally:
        await broker.close()
        await _drop_queue(raw, queue.name)
    assert [json.loads(item[1]) for item in popped if item] == [
        {'user_id': 1, 'text': 'a'}, {'user_id': 2, 'text': 'b'}, {'user_id': 3, 'text': 'c'}]


async def test_retry_keeps_the_raw_body_and_counts_attempts_beside_it(raw: Redis, unique: str) -> None:
    queue = Queue(f'retry_{unique}', Note)
    body = b'{"user_id": 7, "text": "x"}'
    failed = asyncio.Event()

    class Failing(MicroAgent):
        @consumer(queue, max_retries=3, retry_delay=60)
        async def on_note(self, note: Note) -> None:
            failed.set()
            raise RuntimeError('not now')

    broker = RedisBroker(REDIS_TEST_DSN)
    try:
        async with Failing(broker=broker):
            await raw.rpush(queue.name, body)
            await asyncio.wait_for(failed.wait(), 5)
            await eventually(lambda: _exists(raw, f'{queue.name}:delayed'))
        (member,) = await raw.zrange(f'{queue.name}:delayed', 0, -1)
        assert member[32:] == body
        assert await raw.hget(f'{queue.name}:attempts', hashlib.sha1(body).hexdigest()) == b'2'
        assert await raw.llen(queue.name) == 0
    finally:
        await broker.close()
        await _drop_queue(raw, queue.name)


async def test_acks_in_any_order_remove_exactly_the_handled_messages(raw: Redis, unique: str) -> None:
    """Acks mostly trim the head of the in-flight list; out-of-order and identical bodies still
    remove exactly one entry each, and what is still being handled stays owned."""
    queue = Queue(f'acks_{unique}', Note)
    bodies = [b'{"user_id":1,"text":"a"}', b'{"user_id":2,"text":"b"}', b'{"user_id":1,"text":"a"}',
              b'{"user_id":3,"text":"c"}', b'{"user_id":4,"text":"d"}']
    broker = RedisBroker(REDIS_TEST_DSN)
    transport = broker.transport
    inflight = inflight_key(queue.name, transport.uid)
    try:
        await raw.rpush(queue.name, *bodies)
        taken = await transport.fetch(queue, 5, timeout=1)
        assert [d.envelope.body for d in taken] == bodies
        for index in (1, 0, 4, 2):  # message 3 is still being handled
            await transport.ack(queue, taken[index])
        await eventually(lambda: _length_is(raw, inflight, 1))
        assert await raw.lrange(inflight, 0, -1) == [bodies[3]]
        await transport.ack(queue, taken[3])
        await eventually(lambda: _length_is(raw, inflight, 0))
        assert await raw.llen(queue.name) == 0
    finally:
        await broker.close()
        await _drop_queue(raw, queue.name)


async def _length_is(client: Redis, key: str, length: int) -> bool:
    return bool(await client.llen(key) == length)


async def _exists(client: Redis, key: str) -> bool:
    return bool(await client.exists(key))


async def test_exchange_routing_pushes_1x_bodies_to_each_bound_queue(raw: Redis, unique: str) -> None:
    android = Queue(f'android_{unique}', Note, exchange=f'push_{unique}', topics=['*.android'])
    ios = Queue(f'ios_{unique}', Note, exchange=f'push_{unique}', topics=['*.ios'])
    broker = RedisBroker(REDIS_TEST_DSN, wire='1.x')
    try:
        await broker[android].declare()  # the binding is stored in Redis, for every publisher
        await broker[ios].declare()
        assert await raw.hgetall(f'microagent:exchange:push_{unique}') == {android.name.encode(): b'["*.android"]',
                                                                           ios.name.encode(): b'["*.ios"]'}
        assert await broker.publish(f'push_{unique}', Note(user_id=1, text='t'), routing_key='1.android') == 1
        assert await raw.lrange(android.name, 0, -1) == [b'{"user_id":1,"text":"t"}']
        assert await raw.llen(ios.name) == 0
    finally:
        await broker.close()
        await _drop_queue(raw, android.name)
        await _drop_queue(raw, ios.name)
        await raw.delete(f'microagent:exchange:push_{unique}')


# DSN


async def test_password_user_and_db_from_the_dsn_are_used_and_never_shown(
        raw: Redis, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    user, secret = f'u{unique}', f's3cret{unique}'
    await raw.acl_setuser(user, enabled=True, passwords=[f'+{secret}'], keys=['*'], channels=['*'],
                          commands=['+@all'])
    queue = Queue(f'auth_{unique}', Note)
    dsn = f'redis://{user}:{secret}@{REDIS_HOST}:{REDIS_PORT}/9'
    broker = RedisBroker(dsn)
    bus = RedisSignalBus(dsn)

    class Service(MicroAgent):
        @consumer(queue)
        async def on_note(self, note: Note) -> None: ...

    try:
        await broker[queue].send(Note(user_id=1, text=''))
        assert await raw.llen(queue.name) == 1  # db 9 of the DSN
        assert await broker.transport.redis.acl_whoami() == user
        info = json.dumps(Service(bus=bus, broker=broker).info())
        for shown in (repr(broker), repr(bus), info):
            assert secret not in shown and '***' in shown
    finally:
        await broker.close()
        await bus.close()
        await raw.acl_deluser(user)
        await _drop_queue(raw, queue.name)

    caplog.set_level(logging.INFO)
    down = RedisSignalBus(f'redis://{user}:{secret}@127.0.0.1:1/0')
    down.transport.subscribe_timeout = 0.3
    signal = Signal(f'down_{unique}', Note)

    class Listener(MicroAgent):
        @receiver(signal)
        async def on_note(self, note: Note) -> None: ...

    listener = Listener(bus=down)
    await listener._start()
    await eventually(lambda: _logged(caplog, 'reconnect 2'))
    await listener.stop()
    await down.close()
    assert secret not in caplog.text


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


# settings


async def test_a_marun_entry_chooses_the_1x_wire(
        raw: Redis, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``wire`` is a key of a BUS or BROKER entry, like any constructor keyword."""
    module = f'settings_{unique}'
    entry = {'dsn': REDIS_TEST_DSN, 'wire': '1.x'}
    (tmp_path / f'{module}.py').write_text(textwrap.dedent(f'''
        from microagent import MicroAgent

        class Agent(MicroAgent):
            pass

        BUS = {{'main': {{'backend': 'microagent.backends.redis.RedisSignalBus', **{entry!r}}}}}
        BROKER = {{'main': {{'backend': 'microagent.backends.redis.RedisBroker', **{entry!r}}}}}
        AGENT = {{'agent': {{'backend': '{module}.Agent', 'bus': 'main', 'broker': 'main'}}}}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    (agent,) = load_module(module)
    assert agent.bus is not None and agent.broker is not None
    bus, broker = agent.bus.build(logging.getLogger()), agent.broker.build(logging.getLogger())
    signal, queue = Signal(f'noted_{unique}', Note), Queue(f'notes_{unique}', Note)
    pubsub = raw.pubsub()
    try:
        await pubsub.psubscribe(f'PUBSUB:{signal.name}:*')
        await bus[signal].send('configured', Note(user_id=1, text='a'))
        await broker[queue].send(Note(user_id=2, text='b'))
        message = await _next_message(pubsub)
        assert message['data'] == b'{"user_id":1,"text":"a"}'
        assert await raw.lrange(queue.name, 0, -1) == [b'{"user_id":2,"text":"b"}']
    finally:
        await pubsub.aclose()
        await bus.close()
        await broker.close()
        await _drop_queue(raw, queue.name)


# commands


def test_commands_are_packed_byte_for_byte_as_redis_py_packs_them() -> None:
    """The transports pack commands with hiredis (fast); what goes on the wire must not change."""
    from redis.asyncio.connection import Connection
    from redis.exceptions import DataError

    from microagent.backends.redis.wire import HiredisPacking as _HiredisPacking

    ours, theirs = _HiredisPacking(), Connection()
    for args in [('RPUSH', 'queue', b'\x1eMA1{"a":"b"}\n{}', b'{"user_id": 1}'),
                 ('EVALSHA', 'f' * 40, 2, 'k1', 'k2', 0.05, 1e-05, 10_000, -3, 'é', memoryview(b'mv')),
                 ('CLIENT SETNAME', 'name'), (b'CONFIG GET', b'maxmemory'), ('SET', 'k', '')]:
        assert b''.join(ours.pack_command(*args)) == b''.join(theirs.pack_command(*args)), args
    with pytest.raises(DataError):  # what redis-py refuses, refused the same way
        ours.pack_command('SET', 'k', None)


def test_an_unknown_wire_is_refused_not_defaulted() -> None:
    from microagent.errors import InvalidArgument

    for make in (RedisBroker, RedisSignalBus):
        with pytest.raises(InvalidArgument, match=r"wire must be 'envelope' or '1\.x', got '2\.x'"):
            make(REDIS_TEST_DSN, wire='2.x')  # type: ignore[arg-type]


def test_a_bare_request_alone_is_answered_bare_whatever_the_wire() -> None:
    """``wire.request`` takes a request for a 1.x one when it came bare, and its reply address says so
    to ``wire.answer``: nothing is remembered in between, so no number of unanswered requests turns
    an answer to a 1.x caller into a frame it cannot read."""
    from microagent.backends.redis.frame import frame
    from microagent.backends.redis.wire import BareReplyTo, answer, request
    from microagent.message import REPLY_TO, REQUEST_ID, Envelope

    bare = request(Envelope(b'{"user_id": 4}', None), 'r1', 'PUBSUB:response')
    assert bare.headers == {REQUEST_ID: 'r1', REPLY_TO: 'PUBSUB:response'}
    address = bare.headers[REPLY_TO]
    assert isinstance(address, BareReplyTo) and address == 'PUBSUB:response'
    framed = request(Envelope(b'{}', {REQUEST_ID: 'r2', REPLY_TO: 'OTHER:response'}), 'r2', 'PUBSUB:response')
    assert type(framed.headers[REPLY_TO]) is str  # type: ignore[index]

    reply = Envelope(b'{"A.b": 40}', {REQUEST_ID: 'r1', 'message-id': 'm'})
    assert answer(address, 'uid', reply, legacy=False) == ('PUBSUB:response:uid#r1', b'{"A.b": 40}')
    assert answer('PUBSUB:response', 'uid', reply, legacy=False) == (
        'PUBSUB:response:uid#r1', frame(reply.body, reply.headers))
    assert answer('PUBSUB:response', 'uid', reply, legacy=True) == ('PUBSUB:response:uid#r1', b'{"A.b": 40}')
