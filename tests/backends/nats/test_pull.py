"""The hand-made pull requests (``pull.Puller``) on a real server: batches, an empty consumer, a
refused pull named, what arrives late kept for the next fetch or handed back, and the delivery
count read from any ack subject without raising."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy

from microagent.backends.nats.pull import Puller, times_delivered
from microagent.errors import ConnectionFailed
from tests.services import NATS_DSN

pytestmark = pytest.mark.nats


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    made = await nats.connect(NATS_DSN)
    yield made
    await made.close()


@pytest.fixture
async def stream(client: Client, unique: str) -> AsyncIterator[str]:
    """A work-queue stream ``PULL-unique`` on subject ``pull.unique``, with a durable consumer ``c``."""
    js = client.jetstream()
    name = f'PULL-{unique}'
    await js.add_stream(name=name, subjects=[f'pull.{unique}'], retention=RetentionPolicy.WORK_QUEUE)
    await js.add_consumer(name, ConsumerConfig(durable_name='c', ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    yield name
    await js.delete_stream(name)


async def _publish(client: Client, unique: str, count: int) -> None:
    js = client.jetstream()
    for n in range(count):
        await js.publish(f'pull.{unique}', b'%d' % n)


async def test_a_fetch_takes_a_batch_at_most_and_the_next_one_the_rest(client: Client, stream: str,
                                                                        unique: str) -> None:
    await _publish(client, unique, 7)
    puller = Puller(client, stream, 'c')
    await puller.start()
    first = await puller.fetch(5, 1.0)
    rest = await puller.fetch(5, 1.0)
    assert [m.data for m in first] == [b'0', b'1', b'2', b'3', b'4']
    assert [m.data for m in rest] == [b'5', b'6']
    for msg in first + rest:
        await msg.ack()
    await puller.stop()


async def test_an_empty_consumer_gives_nothing_after_the_timeout_then_what_comes(client: Client, stream: str,
                                                                                  unique: str) -> None:
    puller = Puller(client, stream, 'c')
    await puller.start()
    assert await puller.fetch(10, 0.2) == []
    assert await puller.fetch(10, 0.2, wait=False) == []
    await _publish(client, unique, 2)  # the first fetch's expired request answers late: not mistaken for this one
    got: list[Msg] = []
    while len(got) < 2:
        got += await puller.fetch(10, 2.0)
    assert sorted(m.data for m in got) == [b'0', b'1']
    await puller.stop()


async def test_a_waiting_fetch_returns_with_the_first_message_sent_meanwhile(client: Client, stream: str,
                                                                           unique: str) -> None:
    puller = Puller(client, stream, 'c')
    await puller.start()
    task = asyncio.ensure_future(puller.fetch(10, 5.0))
    await _publish(client, unique, 1)  # sent while the fetch waits, or just before it asks
    msgs = await asyncio.wait_for(task, 4.0)  # well before its 5 s timeout
    assert [m.data for m in msgs] == [b'0']
    await puller.stop()


async def test_a_status_that_is_no_normal_end_is_an_error_naming_the_consumer(client: Client, unique: str) -> None:
    """A responder in JetStream's place answers every pull with 400 (what a server says of a request
    it cannot read): the fetch fails at once, naming the consumer and the status."""
    async def refuse(msg: Msg) -> None:
        await client.publish(msg.reply, b'', headers={'Status': '400', 'Description': 'Bad Request'})

    await client.subscribe(f'$JS.API.CONSUMER.MSG.NEXT.FAKE-{unique}.c', cb=refuse)
    puller = Puller(client, f'FAKE-{unique}', 'c')
    await puller.start()
    with pytest.raises(ConnectionFailed, match=f"consumer 'c' of stream 'FAKE-{unique}' refused: 400 Bad Request"):
        await puller.fetch(3, 5.0)
    await puller.stop()


async def test_a_consumer_that_does_not_exist_gives_nothing(client: Client, stream: str) -> None:
    puller = Puller(client, stream, 'nobody')  # JetStream does not answer such a pull
    await puller.start()
    assert await puller.fetch(3, 0.2) == []
    await puller.stop()


async def test_close_hands_back_what_no_fetch_took(client: Client, stream: str, unique: str) -> None:
    await _publish(client, unique, 3)
    puller = Puller(client, stream, 'c')
    await puller.start()
    await puller._ask(3, None, 2.0)  # taken from the server, not yet by a fetch
    await puller.close()
    again = Puller(client, stream, 'c')
    await again.start()
    msgs: list[Msg] = []
    async with asyncio.timeout(10):  # NAKed: back at once, not after ack_wait (30 s)
        while len(msgs) < 3:
            msgs += await again.fetch(3, 5.0)
    assert sorted(m.data for m in msgs) == [b'0', b'1', b'2']
    assert all(times_delivered(m) == 2 for m in msgs)
    await again.stop()


@given(st.text())
def test_the_delivery_count_of_any_reply_subject_is_at_least_one(reply: str) -> None:
    assert times_delivered(Msg(None, subject='s', reply=reply)) >= 1  # type: ignore[arg-type]


@pytest.mark.parametrize(('reply', 'count'), [
    ('$JS.ACK.S.c.3.10.9.1796694345584014334.0', 3),
    ('$JS.ACK.hub.ACCHASH.S.c.4.10.9.1796694345584014334.0.rnd', 4),
    ('$JS.ACK.S.c.x.10.9.17.0', 1),
    ('_INBOX.abc', 1),
    ('', 1),
])
def test_the_delivery_count_is_read_from_either_ack_subject_form(reply: str, count: int) -> None:
    assert times_delivered(Msg(None, subject='s', reply=reply)) == count  # type: ignore[arg-type]
