"""The Redis bus answers only to its own RPC answer address: a forged ``reply-to`` never makes a
receiver publish elsewhere, and is dropped with a warning at most once per interval per sender;
1.x callers (bare requests) and calls from a bus still get their answers."""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from microagent import MicroAgent, Signal, receiver
from microagent.backends.redis import RedisSignalBus
from microagent.backends.redis.frame import frame
from microagent.message import REPLY_TO, REQUEST_ID, Envelope
from tests.conformance.backends import REDIS_TEST_DSN

pytestmark = pytest.mark.redis


class Query(msgspec.Struct, frozen=True):
    user_id: int


ANSWER = Envelope(b'1', {REQUEST_ID: 'r'})


@pytest.fixture
async def watch(raw: Redis) -> AsyncIterator[PubSub]:
    """Every message published under the test's prefixes (pub/sub is server-wide: prefixes are unique)."""
    pubsub = raw.pubsub()
    yield pubsub
    await pubsub.aclose()


async def _published(pubsub: PubSub, until: Callable[[list[str]], bool]) -> list[tuple[str, Any]]:
    """What the watcher got (in publishing order) until the channels seen satisfy ``until``."""
    seen: list[tuple[str, Any]] = []
    async with asyncio.timeout(5):
        while not until([channel for channel, _ in seen]):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None:
                seen.append((message['channel'].decode(), message['data']))
    return seen


async def test_a_forged_reply_address_never_makes_a_receiver_publish_elsewhere(
        raw: Redis, watch: PubSub, caplog: pytest.LogCaptureFixture) -> None:
    prefix, victim, evil = (f'{tag}{uuid.uuid4().hex[:10]}' for tag in ('T', 'V', 'E'))
    ask = Signal(f'ask_{prefix}', Query, returns=int)
    handled: list[int] = []

    class Answerer(MicroAgent):
        @receiver(ask)
        async def count(self, query: Query) -> int:
            handled.append(query.user_id)
            return query.user_id * 10

    await watch.psubscribe(f'{prefix}:*', f'{victim}:*', f'{evil}*')
    bus, caller = RedisSignalBus(REDIS_TEST_DSN, prefix=prefix), RedisSignalBus(REDIS_TEST_DSN, prefix=prefix)
    forged = [f'{evil}:inbox', f'{victim}:response', f'{prefix}:ask_{prefix}', f'{prefix}:response:x', '']
    try:
        async with Answerer(bus=bus):
            with caplog.at_level(logging.WARNING, logger='microagent.redis'):
                for i, address in enumerate(forged):
                    request = frame(b'{"user_id": %d}' % (100 + i), {REPLY_TO: address, REQUEST_ID: f'f{i}'})
                    await raw.publish(f'{prefix}:ask_{prefix}:forger#f{i}', request)
                    await raw.publish(f'{prefix}:ask_{prefix}:forger', request)  # a plain signal with headers
                # a 1.x caller: a bare request on the 1.x channel, answered bare on {prefix}:response
                await raw.publish(f'{prefix}:ask_{prefix}:legacy#old', b'{"user_id": 4}')
                # a call from a bus: answered (and it comes after all the above, which are dispatched in order)
                answers = await caller[ask].call('me', Query(user_id=5), timeout=5)
                old = f'{prefix}:response:{bus.transport.uid}#old'
                # both answers: anything the forged requests made would have been published before
                published = await _published(watch, lambda seen: old in seen and sum(
                    channel.startswith(f'{prefix}:response:{bus.transport.uid}#') for channel in seen) >= 2)
    finally:
        await bus.close()
        await caller.close()

    assert list(answers.values()) == [50]
    channels = [channel for channel, _ in published]
    answered = [channel for channel in channels if channel.startswith(f'{prefix}:response:{bus.transport.uid}#')]
    sent_by_us = {f'{prefix}:ask_{prefix}:forger', f'{prefix}:ask_{prefix}:legacy#old'}
    strays = [channel for channel in channels if channel not in sent_by_us and channel not in answered
              and not channel.startswith(f'{prefix}:ask_{prefix}:forger#')
              and not channel.startswith(f'{prefix}:ask_{prefix}:me#')]
    assert strays == []  # nothing under the victim's prefix, the evil one, or as a signal of ours
    assert sorted(handled) == [4, 5]  # no forged request reached the receiver
    assert len(answered) == 2 and old in answered  # the 1.x caller's and the bus's call
    legacy = next(data for channel, data in published if channel == old)
    assert json.loads(legacy) == {Answerer.count.__qualname__: 40}  # bare, as a 1.x caller reads it
    # one warning line for the forger in the interval, however many it sent
    lines = [record.getMessage() for record in caplog.records if 'reply address' in record.getMessage()]
    assert len(lines) == 1 and 'forger' in lines[0] and f'{evil}:inbox' in lines[0]


async def test_foreign_reply_warnings_are_rate_limited_per_source_with_a_count(
        caplog: pytest.LogCaptureFixture) -> None:
    bus = RedisSignalBus(REDIS_TEST_DSN, prefix=f'T{uuid.uuid4().hex[:10]}')
    transport = bus.transport
    now = [0.0]
    transport.foreign_replies._clock = lambda: now[0]  # the limiter's own clock: no waiting
    try:
        with caplog.at_level(logging.WARNING, logger='microagent.redis'):
            for _ in range(3):
                await transport.reply('ELSEWHERE:inbox', ANSWER)
            await transport.reply('OTHER:inbox', ANSWER)
            now[0] += transport.foreign_replies.interval  # the interval is over: the next line counts the rest
            await transport.reply('ELSEWHERE:inbox', ANSWER)
    finally:
        await bus.close()
    lines = [record.getMessage() for record in caplog.records if 'Refused to answer' in record.getMessage()]
    assert len(lines) == 3
    assert 'ELSEWHERE:inbox' in lines[0] and 'more like it' not in lines[0]
    assert 'OTHER:inbox' in lines[1] and 'more like it' not in lines[1]
    assert 'ELSEWHERE:inbox' in lines[2] and '(and 2 more like it' in lines[2]


async def test_forged_sources_cannot_grow_the_warning_memory() -> None:
    bus = RedisSignalBus(REDIS_TEST_DSN, prefix=f'T{uuid.uuid4().hex[:10]}')
    try:
        limiter = bus.transport.foreign_replies
        limiter.max_sources = 10
        quiet = logging.getLogger(f'test.quiet.{uuid.uuid4().hex}')  # enabled, but writes nowhere
        quiet.propagate = False
        quiet.addHandler(logging.NullHandler())
        for i in range(100):
            limiter.warning(quiet, f'sender s{i}', 'dropped')
        assert 10 <= len(limiter._sources) <= 11  # ten senders, then their label alone
    finally:
        await bus.close()
