"""The HTTP endpoints in one process: routes, errors, readiness of agents; MIDDLEWARES settings."""
from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from microagent import MicroAgent, Middleware, Queue, consumer
from microagent.backends.memory import MemoryBroker, MemoryHub
from microagent.cli.config import ConfigError, load_group
from microagent.errors import InvalidArgument
from microagent.ops.endpoints import agent_endpoints
from microagent.ops.http import Endpoints, HttpServer, parse_address, start_http
from microagent.ops.metrics import PrometheusMiddleware
from tests.helpers import eventually
from tests.nats_support import free_port


class Job(msgspec.Struct, frozen=True):
    number: int


async def request(address: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` as it is; the status, headers and body of the answer."""
    host, port = parse_address(address)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw)
    writer.write_eof()  # a request cut short ends here, instead of at the server's deadline
    await writer.drain()
    data = await reader.read()  # Connection: close
    writer.close()
    head, _, body = data.partition(b'\r\n\r\n')
    status_line, *lines = head.decode('latin-1').split('\r\n')
    headers = {name.lower(): value for name, _, value in (line.partition(': ') for line in lines)}
    assert int(headers['content-length']) == len(body)
    return int(status_line.split(' ')[1]), headers, body


async def get(address: str, path: str) -> tuple[int, dict[str, str], bytes]:
    return await request(address, f'GET {path} HTTP/1.1\r\nHost: x\r\n\r\n'.encode())


def agent_class(unique: str) -> type[MicroAgent]:
    queue = Queue(f'http_unit_{unique}', Job)

    class Unit(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            pass

    return Unit


@pytest.fixture
async def served(unique: str) -> AsyncIterator[tuple[HttpServer, MicroAgent]]:
    agent = agent_class(unique)(broker=MemoryBroker(hub=MemoryHub()))
    server = await start_http('127.0.0.1:0', agent_endpoints({'unit': agent}))
    try:
        yield server, agent
    finally:
        await server.close()


async def test_ready_is_503_naming_the_agent_until_it_runs(served: tuple[HttpServer, MicroAgent]) -> None:
    server, agent = served
    status, headers, body = await get(server.address, '/ready')
    assert status == 503 and headers['content-type'] == 'application/json'
    assert json.loads(body) == {'status': 'not ready', 'not_ready': {'unit': ['<MicroAgent Unit> is not started']}}
    async with agent:
        status, _, body = await get(server.address, '/ready')
        assert (status, json.loads(body)) == (200, {'status': 'ready', 'agents': ['unit']})
    assert (await get(server.address, '/ready'))[0] == 503  # stopped: not ready again


async def test_health_asyncapi_docs_and_metrics(served: tuple[HttpServer, MicroAgent], unique: str) -> None:
    server, _ = served
    status, _, body = await get(server.address, '/health?probe=liveness')
    assert (status, json.loads(body)) == (200, {'status': 'alive'})
    status, _, body = await get(server.address, '/asyncapi.json')
    document = json.loads(body)
    assert status == 200 and document['asyncapi'] == '3.0.0'
    assert f'queue.http_unit_{unique}' in document['channels']
    status, headers, body = await get(server.address, '/docs')
    assert status == 200 and headers['content-type'] == 'text/html; charset=utf-8'
    assert body.startswith(b'<!DOCTYPE html>') and f'http_unit_{unique}'.encode() in body
    status, headers, body = await get(server.address, '/metrics')
    assert status == 200 and headers['content-type'].startswith('text/plain; version=')
    assert b'# TYPE ' in body


async def test_unknown_paths_other_methods_and_garbage(served: tuple[HttpServer, MicroAgent]) -> None:
    address = served[0].address
    status, _, body = await get(address, '/nothing')
    assert status == 404 and b'/nothing is not here' in body
    status, headers, _ = await request(address, b'POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n')
    assert (status, headers['allow']) == (405, 'GET')
    assert (await request(address, b'hello\r\n\r\n'))[0] == 400
    assert (await request(address, b'GET /health HTTP/1.1\r\n'))[0] == 400  # closed before the head ended
    assert (await request(address, b'GET /' + b'x' * 20_000 + b' HTTP/1.1\r\n\r\n'))[0] == 400
    assert (await get(address, '/health'))[0] == 200  # none of it hurt the server


async def test_metrics_without_prometheus_client_is_a_404_saying_why(
        served: tuple[HttpServer, MicroAgent], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, 'prometheus_client', None)  # import fails as if not installed
    status, _, body = await get(served[0].address, '/metrics')
    assert status == 404 and b'pip install "microagent[prometheus]"' in body


async def test_a_failing_endpoint_is_a_500_and_the_server_goes_on() -> None:
    def broken() -> str:
        raise RuntimeError('no page today')

    async def ready() -> dict[str, list[str]]:
        return {}

    server = await start_http('127.0.0.1:0', Endpoints(ready, lambda: {}, broken))
    try:
        status, _, body = await get(server.address, '/docs')
        assert status == 500 and b'RuntimeError: no page today' in body
        assert (await get(server.address, '/ready'))[0] == 200
    finally:
        await server.close()


@pytest.mark.parametrize('address', ['8080', 'localhost', 'host:port', ':8080', 'host:70000'])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidArgument, match='HOST:PORT'):
        parse_address(address)


def test_addresses() -> None:
    assert parse_address('0.0.0.0:8080') == ('0.0.0.0', 8080)
    assert parse_address('[::1]:0') == ('::1', 0)


async def test_serve_http_serves_while_the_agent_runs(unique: str) -> None:
    agent = agent_class(unique)(broker=MemoryBroker(hub=MemoryHub()))
    address = f'127.0.0.1:{free_port()}'
    serving = asyncio.create_task(agent.serve_http(address, grace=1))

    async def ready() -> bool:
        try:
            return (await get(address, '/ready'))[0] == 200
        except OSError:
            return False

    try:
        await eventually(ready, timeout=10)
        _, _, body = await get(address, '/ready')
        assert json.loads(body) == {'status': 'ready', 'agents': ['Unit']}
    finally:
        await agent.stop(1)
        await serving
    with pytest.raises(OSError):
        await get(address, '/health')  # closed after the stop


async def test_serve_http_fails_before_starting_on_a_port_in_use(unique: str) -> None:
    agent = agent_class(unique)(broker=MemoryBroker(hub=MemoryHub()))
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        with pytest.raises(OSError):
            await agent.serve_http(f'127.0.0.1:{taken.getsockname()[1]}')
    assert await agent.readiness() == ['<MicroAgent Unit> is not started']


# MIDDLEWARES in marun settings

class Tagging(Middleware):
    def __init__(self, tag: str = 'x') -> None:
        self.tag = tag


class NotAMiddleware:
    pass


@pytest.fixture
def settings(config_module: Any) -> Any:
    return config_module


RECORDER = 'tests.launcher_agents.agents.Recorder'
TAGGING = 'tests.ops.test_http.Tagging'


def test_middlewares_wrap_every_agent_then_its_own(settings: Any) -> None:
    module = settings(MIDDLEWARES=[TAGGING, (TAGGING, {'tag': 'module'})],
                      AGENT={'a': {'backend': RECORDER, 'middlewares': [(TAGGING, {'tag': 'a'})]},
                             'b': {'backend': RECORDER}})
    a, b = (config.build() for config in load_group([module]))
    assert [m.tag for m in a.middlewares] == ['x', 'module', 'a']  # type: ignore[attr-defined]
    assert [m.tag for m in b.middlewares] == ['x', 'module']  # type: ignore[attr-defined]
    assert a.middlewares[0] is b.middlewares[0]  # one per entry and process: metrics register once


def test_prometheus_middleware_from_settings_is_built_once_per_process(settings: Any) -> None:
    module = settings(MIDDLEWARES=['microagent.ops.metrics.PrometheusMiddleware'],
                      AGENT={'a': {'backend': RECORDER}, 'b': {'backend': RECORDER}})
    a, b = (config.build() for config in load_group([module]))
    assert isinstance(a.middlewares[0], PrometheusMiddleware) and a.middlewares == b.middlewares


@pytest.mark.parametrize(('sections', 'message'), [
    ({'MIDDLEWARES': TAGGING}, 'MIDDLEWARES: a list of middlewares (dotted paths or (path, options) pairs) is '
                               'expected, got str'),
    ({'MIDDLEWARES': [(TAGGING,)]}, 'MIDDLEWARES[0]: a middleware entry is a dotted path or a (path, options dict) '
                                    "pair, got ('tests.ops.test_http.Tagging',)"),
    ({'MIDDLEWARES': [(TAGGING, 'x')]}, 'MIDDLEWARES[0]: a middleware entry is a dotted path'),
    ({'MIDDLEWARES': ['Tagging']}, "MIDDLEWARES[0]: a middleware must be a dotted path such as"),
    ({'MIDDLEWARES': ['tests.nowhere.Tagging']}, "MIDDLEWARES[0]: cannot import middleware 'tests.nowhere.Tagging'"),
    ({'MIDDLEWARES': ['tests.ops.test_http.Missing']},
     "MIDDLEWARES[0]: cannot import middleware 'tests.ops.test_http.Missing': module 'tests.ops.test_http' has no"),
    ({'MIDDLEWARES': ['tests.ops.test_http.NotAMiddleware']},
     "MIDDLEWARES[0]: 'tests.ops.test_http.NotAMiddleware' is not a middleware: it needs async handle() and send()"),
    ({'MIDDLEWARES': ['tests.ops.test_http.RECORDER']},
     "MIDDLEWARES[0]: 'tests.ops.test_http.RECORDER' is not a class"),
    ({'MIDDLEWARES': [(TAGGING, {'colour': 'red'})]},
     "MIDDLEWARES[0]: wrong arguments for Tagging: got an unexpected keyword argument 'colour'"),
    ({'MIDDLEWARES': [], 'AGENT': {'a': {'backend': RECORDER, 'middlewares': [NotAMiddleware]}}},
     "AGENT['a']['middlewares'][0]: a middleware must be a dotted path"),
])
def test_middleware_mistakes_name_their_entry(settings: Any, sections: dict[str, Any], message: str) -> None:
    module = settings(**{'AGENT': {'a': {'backend': RECORDER}}, **sections})
    with pytest.raises(ConfigError) as caught:
        load_group([module])
    assert str(caught.value).startswith(f'{module}: {message}'), str(caught.value)


# ping on the network backends

@pytest.mark.redis
async def test_redis_ping_and_readiness(unique: str) -> None:
    from microagent.backends.redis import RedisBroker, RedisSignalBus
    from tests.conformance.backends import REDIS_TEST_DSN

    bus, broker = RedisSignalBus(REDIS_TEST_DSN), RedisBroker(REDIS_TEST_DSN)
    await bus.ping()
    assert await broker.readiness() == []
    await bus.close()
    assert await bus.readiness() == [f'{bus!r}: ping failed: BackendClosed: {bus.transport!r} is closed']
    await broker.close()
    away = RedisBroker(f'redis://127.0.0.1:{free_port()}/0')  # nobody listens there
    [reason] = await away.readiness()
    assert reason.startswith(f'{away!r}: ping failed: ConnectionError')
    await away.close()


@pytest.mark.amqp
async def test_amqp_ping_and_readiness() -> None:
    from microagent.backends.amqp import AMQPBroker, AMQPSignalBus
    from tests.amqp_support import AMQP_DSN

    bus, broker = AMQPSignalBus(AMQP_DSN), AMQPBroker(AMQP_DSN)
    try:
        await bus.ping()
        await broker.ping()
        assert await bus.readiness() == [] and await broker.readiness() == []
    finally:
        await bus.close()
        await broker.close()
    away = AMQPBroker(f'amqp://guest:secret@127.0.0.1:{free_port()}/')
    [reason] = await away.readiness()
    assert reason.startswith(f'{away!r}: no answer to ping within 2s') and 'secret' not in reason
    await away.close()
