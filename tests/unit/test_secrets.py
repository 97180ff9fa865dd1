"""Secrets of a DSN (userinfo, query parameters) never show in a repr, info(), a log line or the CLI."""
from __future__ import annotations

import json
import logging
import socket
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError

from microagent import MicroAgent
from microagent.backends.amqp import AMQPBroker, AMQPSignalBus
from microagent.backends.amqp.link import Link
from microagent.backends.redis import RedisBroker, RedisSignalBus
from microagent.cli.main import main
from microagent.dsn import hide_password, scrub
from microagent.message import Envelope
from tests.helpers import eventually

USER_SECRET, QUERY_SECRET = 'S3cretInUserinfo', 'S3cretInQuery'
SECRETS = (USER_SECRET, QUERY_SECRET)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port: int = sock.getsockname()[1]
    return port


def redis_dsn(port: int = 6379) -> str:
    return f'redis://default:{USER_SECRET}@127.0.0.1:{port}/9?password={QUERY_SECRET}&socket_timeout=2'


def amqp_dsn(port: int = 5672) -> str:
    return f'amqp://guest:{USER_SECRET}@127.0.0.1:{port}/?heartbeat=5&auth_token={QUERY_SECRET}'


def assert_hidden(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize(('dsn', 'shown'), [
    ('redis://user:pw@host:6379/0', 'redis://user:***@host:6379/0'),
    ('redis://:pw@host/0', 'redis://:***@host/0'),
    ('redis://token@host/0', 'redis://***@host/0'),  # a username alone may be a token: hidden
    ('redis://host/0?password=pw&db=1', 'redis://host/0?password=***&db=1'),
    ('rediss://host/0?Username=u&PASSWORD=pw;ssl_cert_reqs=none', 'rediss://host/0?Username=u&PASSWORD=***;'
                                                                 'ssl_cert_reqs=none'),
    ('unix:///run/redis.sock?db=2&password=pw', 'unix:///run/redis.sock?db=2&password=***'),
    ('unix://user:pw@/run/redis.sock?db=2', 'unix://user:***@/run/redis.sock?db=2'),
    ('amqps://guest:pw@rabbit:5671/vhost?cafile=/ca.pem&heartbeat=5',
     'amqps://guest:***@rabbit:5671/vhost?cafile=/ca.pem&heartbeat=5'),
    ('amqp://rabbit/?passwd=a&pass=b&pwd=c&token=d&my_secret=e&api_key=f&apikey=g&access_token=h&auth=i',
     'amqp://rabbit/?passwd=***&pass=***&pwd=***&token=***&my_secret=***&api_key=***&apikey=***'
     '&access_token=***&auth=***'),
    ('redis://host/0?pass%77ord=pw', 'redis://host/0?pass%77ord=***'),  # the name as the client decodes it
    ('redis://host/0?password=p?w#token=t', 'redis://host/0?password=***#token=***'),
    ('redis://user:p@ss@host/0', 'redis://user:***@host/0'),
    ('memory://', 'memory://'),
    ('redis://localhost:6379/0?db=1', 'redis://localhost:6379/0?db=1'),
    ('not a url', 'not a url'),
])
def test_hide_password_hides_every_secret_and_keeps_the_rest(dsn: str, shown: str) -> None:
    assert hide_password(dsn) == shown


def test_scrub_masks_secrets_as_written_and_decoded() -> None:
    dsn = 'amqp://guest:p%40ss@host/?token=a+b'
    text = 'refused amqp://guest:p%40ss@host/ (password p@ss, token a b)'

    assert scrub(text, dsn) == 'refused amqp://guest:***@host/ (password ***, token ***)'


_NAMES = st.sampled_from(['password', 'passwd', 'Pass', 'pwd', 'TOKEN', 'secret', 'api_key', 'apikey',
                          'access_token', 'auth', 'x_auth_key', 'redis_password'])
_PLAIN = st.text(max_size=12)


@given(scheme=st.sampled_from(['redis', 'rediss', 'unix', 'amqp', 'amqps']),
       user=st.one_of(st.none(), _PLAIN), secret=_PLAIN, name=_NAMES, other=_PLAIN,
       in_userinfo=st.booleans())
def test_hide_password_never_raises_nor_shows_a_planted_secret(
        scheme: str, user: str | None, secret: str, name: str, other: str, in_userinfo: bool) -> None:
    planted = 'Zq' + secret + 'Zq'  # distinctive, so it cannot appear by chance in the rest
    quoted = quote(planted, safe='')
    userinfo = f'{quote(user or "", safe="")}:{quoted}@' if in_userinfo else ''
    dsn = f'{scheme}://{userinfo}host:1/0?a={quote(other, safe="")}&{name}={quoted}'

    shown = hide_password(dsn)

    assert planted not in shown and quoted not in shown
    assert scrub(f'failed: {dsn} ({planted})', dsn).count('Zq') == 0


@given(st.text())
def test_hide_password_never_raises_on_any_text(text: str) -> None:
    assert isinstance(hide_password(text), str)


async def test_repr_and_info_hide_secrets() -> None:
    bus, broker = RedisSignalBus(redis_dsn()), RedisBroker(redis_dsn())
    amqp_bus, amqp_broker = AMQPSignalBus(amqp_dsn()), AMQPBroker(amqp_dsn())
    try:
        agent = MicroAgent(bus=bus, broker=broker)
        amqp_agent = MicroAgent(bus=amqp_bus, broker=amqp_broker)

        for item in (bus, broker, amqp_bus, amqp_broker, bus.transport, broker.transport):
            assert_hidden(repr(item))
        assert_hidden(json.dumps(agent.info()))
        assert_hidden(json.dumps(amqp_agent.info()))
        assert '127.0.0.1' in json.dumps(agent.info())  # still says where it connects
    finally:
        for item in (bus, broker, amqp_bus, amqp_broker):
            await item.close()


async def test_a_failing_redis_connection_logs_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    bus = RedisSignalBus(redis_dsn(closed_port()))
    bus.transport.subscribe_timeout = 0.2
    caplog.set_level(logging.INFO)
    try:
        await bus.transport.subscribe(('anything',), bus.deliver)
        with pytest.raises(RedisConnectionError) as raised:
            await bus.transport.publish('anything', 'x', Envelope(b'{}'))
    finally:
        await bus.close()

    assert 'subscriber lost Redis' in caplog.text
    assert_hidden(caplog.text)
    assert_hidden(str(raised.value))


async def test_a_failing_amqp_connection_logs_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    link = Link(amqp_dsn(closed_port()), logging.getLogger('test.secrets'), 'test link')
    caplog.set_level(logging.INFO)
    with pytest.raises(ConnectionError) as raised:
        await link.connect(patience=0.5)
    await link.close()

    assert 'test link' in caplog.text and 'test link' in str(raised.value)
    assert_hidden(caplog.text)
    assert_hidden(str(raised.value))


def test_cli_output_hides_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(['dead-letters', 'list', 'mailer', '--broker', redis_dsn(closed_port())])

    out = capsys.readouterr()
    assert code == 3  # the broker is unreachable
    assert 'microagent: error: broker redis://default:***@127.0.0.1' in out.err
    assert_hidden(out.out + out.err)


SIGNING_SECRET = 'S3cretSigningKey-0123456789'


async def test_a_signing_key_shows_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    """Not in a repr (engine, wrapper, keys), info(), a rejection's log line or dead letter, nor the
    error of a bad key; only its index and length are named."""
    from microagent import Queue, consumer
    from microagent.backends.memory import MemoryBroker, MemoryHub, MemorySignalBus
    from microagent.errors import InvalidArgument

    hub = MemoryHub()
    keys = [SIGNING_SECRET, SIGNING_SECRET[::-1]]
    bus, broker = MemorySignalBus(hub=hub, signing_key=keys), MemoryBroker(hub=hub, signing_key=keys)
    queue = Queue('secret_signing_jobs')

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, **kwargs: object) -> None:
            pass

    agent = Worker(bus=bus, broker=broker)
    shown = [repr(item) for item in (bus, broker, bus.transport, broker.transport, agent)]
    shown += [repr(broker.transport.keys), str(vars(broker.transport)), json.dumps(agent.info())]  # type: ignore[attr-defined]
    async with agent:
        await MemoryBroker(hub=hub)[queue].send({})
        await eventually(lambda: _has_dead_letters(broker, queue.name))
    shown += [caplog.text, repr(await broker.dead_letters(queue.name))]
    with pytest.raises(InvalidArgument) as caught:
        MemorySignalBus(signing_key=[SIGNING_SECRET, 'S3cretShort'])
    shown.append(str(caught.value))
    assert 'unsigned' in caplog.text and 'signing_key[1]' in str(caught.value)
    assert repr(broker.transport).startswith('<signed <microagent.backends.memory.MemoryQueueTransport')
    for text in shown:
        assert SIGNING_SECRET not in text and SIGNING_SECRET[::-1] not in text and 'S3cretShort' not in text


async def _has_dead_letters(broker: Any, name: str) -> bool:
    return bool(await broker.dead_letter_count(name))
