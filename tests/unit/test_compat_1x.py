"""The microagent 1.x reference example runs unchanged, and so does the typed DESIGN.md example; a 1.x
agent and this one talk both ways on one Redis."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pydantic
import pytest
from redis.asyncio import Redis

from microagent import InvalidPayload, MicroAgent, Queue, Signal, consumer, load_stuff, on, periodic, receiver
from microagent.testing import TestGroup
from microagent.tools.memory import MemoryBroker, MemorySignalBus
from microagent.tools.redis import RedisBroker, RedisSignalBus
from tests.conformance.backends import REDIS_TEST_DSN
from tests.helpers import Collector


async def test_seed_example_runs_unchanged(tmp_path: Path, unique: str) -> None:
    path = tmp_path / 'stuff.json'
    path.write_text(json.dumps({
        'signals': [{'name': f'send_mail_{unique}', 'providing_args': ['user_id']}],
        'queues': [{'name': f'mailer_{unique}'}],
    }))
    signals, queues = load_stuff(f'file://{path}')
    send_mail = getattr(signals, f'send_mail_{unique}')
    mailer = getattr(queues, f'mailer_{unique}')
    seen = Collector()

    # the 1.x reference agent, with only the names made unique for this test
    class Agent(MicroAgent):
        @on('pre_start')
        async def setup(self):  # type: ignore[no-untyped-def]
            self.log.info('Setup called!')

        @periodic(period=5)
        async def periodic_handler(self):  # type: ignore[no-untyped-def]
            pass

        @receiver(send_mail)
        async def send_mail_handler(self, **kwargs):  # type: ignore[no-untyped-def]
            seen.add(('signal', kwargs['sender'], kwargs['user_id'], kwargs['signal']))
            await getattr(self.broker, mailer.name).send({'text': 'Hello world!', 'secret': self.settings['secret']})

        @consumer(mailer)
        async def mail_handler(self, **kwargs):  # type: ignore[no-untyped-def]
            seen.add(('queue', kwargs))

    bus = MemorySignalBus(f'memory://{unique}')
    broker = MemoryBroker(f'memory://{unique}')
    agent = Agent(bus=bus, broker=broker, settings={'secret': 'my_secret'})
    await agent.start()
    try:
        await getattr(agent.bus, send_mail.name).send(sender='agent', user_id=1)
        items = await seen.wait(2)
    finally:
        await agent.stop()
    assert items == [('signal', 'agent', 1, send_mail), ('queue', {'text': 'Hello world!', 'secret': 'my_secret'})]
    info = agent.info()
    assert json.loads(json.dumps(info))['receivers'][0]['handler'] == 'Agent.send_mail_handler'
    assert {'name', 'bus', 'broker', 'periodic', 'cron', 'receivers', 'consumers'} <= set(info)


class UserCreated(msgspec.Struct, frozen=True):
    user_id: int
    email: str


class CountQuery(msgspec.Struct, frozen=True):
    user_id: int


class Mail(pydantic.BaseModel):
    to: str
    subject: str


async def test_typed_design_example(unique: str) -> None:
    user_created = Signal(f'user_created_{unique}', UserCreated)
    comments_count = Signal(f'comments_count_{unique}', CountQuery, returns=int)
    mailer = Queue(f'mailer_{unique}', Mail)
    started = Signal(name=f'started_{unique}', providing_args=[])

    class UserAgent(MicroAgent):
        @receiver(user_created)
        async def welcome(self, event: UserCreated) -> None:
            await self.broker[mailer].send(Mail(to=event.email, subject='Welcome'))

        @receiver(comments_count)
        async def count(self, query: CountQuery, *, sender: str) -> int:
            return 3 if sender == 'user_agent' else 0

        @consumer(mailer, timeout=30)
        async def send_mail(self, mail: Mail) -> None: ...

        @receiver(started)
        async def legacy(self, signal: Signal[Any, Any], sender: str, **kwargs: Any) -> None: ...

    async with TestGroup(UserAgent) as group:
        agent = group[UserAgent]
        await agent.bus[user_created].send('user_agent', UserCreated(user_id=1, email='a@b.c'))
        answers: dict[str, int] = await agent.bus[comments_count].call('user_agent', CountQuery(user_id=1))
        await getattr(agent.bus, started.name).send('user_agent')
        with pytest.raises(InvalidPayload, match='to'):
            await agent.broker[mailer].send({'subject': 'no recipient'})  # type: ignore[arg-type]
        with pytest.raises(InvalidPayload, match='email'):
            await getattr(agent.bus, user_created.name).send('user_agent', user_id=1)
        assert await group.handler(UserAgent.send_mail).wait(1) == [Mail(to='a@b.c', subject='Welcome')]
        # a 1.x style receiver is called with keywords only: the probe records them
        assert await group.handler(UserAgent.legacy).wait(1) == [{'signal': started, 'sender': 'user_agent'}]
    assert answers == {UserAgent.count.__qualname__: 3}
    assert group.sent.answers(comments_count) == [answers]


def test_everything_without_pydantic_installed(tmp_path: Path) -> None:
    """A msgspec-only user never needs pydantic: run an agent with pydantic made unimportable."""
    script = tmp_path / 'no_pydantic.py'
    script.write_text(textwrap.dedent('''
        import asyncio, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == 'pydantic' or name.startswith('pydantic.'):
                    raise ImportError('pydantic is blocked for this test')
        sys.meta_path.insert(0, Block())

        import msgspec
        import microagent
        from microagent import MicroAgent, Queue, Signal, consumer, receiver, InvalidPayload
        from microagent.tools.memory import MemoryBroker, MemorySignalBus
        from microagent.testing.mocks import BusMock

        class Job(msgspec.Struct):
            n: int

        job = Queue('job', Job)
        ping = Signal('ping', Job, returns=int)
        legacy = Signal(name='legacy', providing_args={'n': 'integer'})
        done = []

        class Agent(MicroAgent):
            @consumer(job)
            async def work(self, item: Job) -> None:
                done.append(item.n)

            @receiver(ping)
            async def answer(self, item: Job) -> int:
                return item.n

        async def main():
            async with Agent(bus=MemorySignalBus(), broker=MemoryBroker()) as agent:
                await agent.broker[job].send(Job(n=1))
                assert await agent.bus[ping].call('x', Job(n=2), timeout=2) == {Agent.answer.__qualname__: 2}
                try:
                    await agent.bus.legacy.send('x', n='two')
                except InvalidPayload:
                    pass
                else:
                    raise AssertionError('invalid payload accepted')
                while not done:
                    await asyncio.sleep(0.01)
                assert agent.info()['queues']['job']['payload']
            assert 'pydantic' not in sys.modules
            print('ok', done)

        asyncio.run(main())
    '''))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok [1]'


class Order(msgspec.Struct, frozen=True):
    order_id: int


@pytest.mark.redis
async def test_a_1x_agent_and_this_one_talk_both_ways_on_one_redis(raw: Redis, unique: str) -> None:
    """The 1.x side is played with the very commands 1.x issues (PUBLISH and PSUBSCRIBE on
    ``PUBSUB:{name}:{sender}``, RPUSH and BLPOP on the queue's list, ``json.dumps`` bodies); this side
    uses ``wire='1.x'``, so everything it sends is what 1.x reads."""
    placed, paid = Signal(f'placed_{unique}', Order), Signal(f'paid_{unique}', Order)
    invoices, payments = Queue(f'invoices_{unique}', Order), Queue(f'payments_{unique}', Order)

    class Billing(MicroAgent):
        @receiver(placed)
        async def on_placed(self, order: Order) -> None:  # 1.x signal in, queue message out
            await self.broker[invoices].send(order)

        @consumer(payments)
        async def on_payment(self, order: Order) -> None:  # 1.x queue message in, signal out
            await self.bus[paid].send('billing', order)

    legacy = raw.pubsub()
    await legacy.psubscribe(f'PUBSUB:{paid.name}:*')
    bus, broker = RedisSignalBus(REDIS_TEST_DSN, wire='1.x'), RedisBroker(REDIS_TEST_DSN, wire='1.x')
    try:
        async with Billing(bus=bus, broker=broker):
            await raw.publish(f'PUBSUB:{placed.name}:shop', json.dumps({'order_id': 1}))
            popped = await raw.blpop([invoices.name], 5)
            await raw.rpush(payments.name, json.dumps({'order_id': 2}))
            async with asyncio.timeout(5):
                signal = await legacy.get_message(ignore_subscribe_messages=True, timeout=5)
                while signal is None:
                    signal = await legacy.get_message(ignore_subscribe_messages=True, timeout=5)
    finally:
        await legacy.aclose()
        await bus.close()
        await broker.close()
        for name in (invoices.name, payments.name):
            await raw.delete(name, *[key async for key in raw.scan_iter(match=f'{name}:*')])
    assert popped is not None and json.loads(popped[1]) == {'order_id': 1}
    assert signal['channel'] == f'PUBSUB:{paid.name}:billing'.encode()
    assert json.loads(signal['data']) == {'order_id': 2}


@pytest.mark.redis
async def test_a_1x_caller_gets_an_inherited_receivers_answer_under_the_1x_key(raw: Redis, unique: str) -> None:
    """1.x keys each RPC answer by the handler's ``__qualname__`` (``signal.py``: ``Receiver.key``), so
    a receiver inherited from a base class answers as ``Base.method``, not ``Child.method``. The 1.x
    caller is played with its commands: PUBLISH ``PUBSUB:{name}:{sender}#{request id}``, then the
    answer on ``PUBSUB:response:{uid}#{request id}``, a JSON object keyed by receiver."""
    asked = Signal(f'asked_{unique}', Order, returns=int)

    class Base(MicroAgent):
        @receiver(asked)
        async def on_asked(self, order: Order) -> int:
            return order.order_id * 10

    class Child(Base):
        pass

    legacy = raw.pubsub()
    await legacy.psubscribe('PUBSUB:response:*')
    bus = RedisSignalBus(REDIS_TEST_DSN, wire='1.x')
    try:
        async with Child(bus=bus):
            await raw.publish(f'PUBSUB:{asked.name}:shop#req{unique}', json.dumps({'order_id': 4}))
            async with asyncio.timeout(5):
                answer = await legacy.get_message(ignore_subscribe_messages=True, timeout=5)
                while answer is None or not answer['channel'].endswith(f'#req{unique}'.encode()):
                    answer = await legacy.get_message(ignore_subscribe_messages=True, timeout=5)
    finally:
        await legacy.aclose()
        await bus.close()
    assert json.loads(answer['data']) == {Base.on_asked.__qualname__: 40}
    assert Base.on_asked.__qualname__.endswith('.Base.on_asked')
