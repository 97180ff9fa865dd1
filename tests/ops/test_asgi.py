"""Agents inside a web app (``microagent.ops.asgi``): a FastAPI app served by a real uvicorn, asked
over HTTP by httpx. The agents start and stop with the app, its endpoints send through their bus and
broker, and its probes answer with the agents' readiness."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import fastapi
import httpx
import msgspec
import pytest
import uvicorn
from fastapi.responses import JSONResponse
from starlette.routing import Route

from microagent import MicroAgent, Queue, Signal, UsageError, consumer, on, receiver
from microagent.ops.asgi import AppAgents
from microagent.tools.memory import MemoryBroker, MemorySignalBus
from tests.helpers import eventually


class UserCreated(msgspec.Struct, frozen=True):
    user_id: int


class Mail(msgspec.Struct, frozen=True):
    to: str


user_created = Signal('asgi_test_user_created', UserCreated)
mails = Queue('asgi_test_mails', Mail)


class Welcomer(MicroAgent):
    """Puts what it handles on ``self.seen``; says when its ``pre_stop`` hook ran."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: asyncio.Queue[UserCreated | Mail] = asyncio.Queue()
        self.events: list[str] = []

    @receiver(user_created)
    async def welcome(self, event: UserCreated) -> None:
        self.seen.put_nowait(event)

    @consumer(mails)
    async def send_mail(self, mail: Mail) -> None:
        self.seen.put_nowait(mail)

    @on('post_start')
    def started(self) -> None:
        self.events.append('post_start')

    @on('pre_stop')
    def stopping(self) -> None:
        self.events.append('pre_stop')


def make_app(agents: AppAgents) -> fastapi.FastAPI:
    app = fastapi.FastAPI(lifespan=agents.lifespan)

    @app.post('/users/{user_id}')
    async def create_user(user_id: int) -> dict[str, int]:
        await agents.bus[user_created].send('web', UserCreated(user_id=user_id))
        return {'user_id': user_id}

    @app.post('/mails')
    async def send_mail(to: str) -> dict[str, str]:
        await agents.broker[mails].send(Mail(to=to))
        return {'queued': to}

    @app.get('/app/ready')  # the app's own probe, the agents' readiness in it (docs/web.md)
    async def ready() -> JSONResponse:
        problems = await agents.problems()
        return JSONResponse({'not_ready': problems} if problems else {'status': 'ready'},
                                              status_code=503 if problems else 200)

    app.router.routes += [Route('/health', agents.endpoints), Route('/ready', agents.endpoints)]
    app.mount('/agents', agents.endpoints)
    return app


@contextlib.asynccontextmanager
async def serving(app: fastapi.FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, Callable[[], Awaitable[None]]]]:
    """uvicorn on a free loopback port in this event loop; yields a client and a function that
    shuts the server down (its lifespan ends: the agents stop)."""
    config = uvicorn.Config(app, host='127.0.0.1', port=0, lifespan='on', log_level='warning')
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def up() -> bool:
        if task.done():
            task.result()
        return bool(server.started)

    async def shutdown() -> None:
        server.should_exit = True
        await asyncio.wait_for(task, 30)

    try:
        await eventually(up, timeout=10)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f'http://127.0.0.1:{port}', timeout=10) as client:
            yield client, shutdown
    finally:
        if not task.done():
            await shutdown()


async def test_the_agents_start_with_the_app_take_what_its_endpoints_send_and_stop_with_it() -> None:
    agent = Welcomer(bus=MemorySignalBus(), broker=MemoryBroker())
    agents = AppAgents(agent, grace=1)
    assert await agents.problems() == {'Welcomer': ['<MicroAgent Welcomer> is not started']}
    async with serving(make_app(agents)) as (client, shutdown):
        assert agent.events == ['post_start']
        assert (await client.post('/users/7')).json() == {'user_id': 7}
        assert await asyncio.wait_for(agent.seen.get(), 5) == UserCreated(user_id=7)
        assert (await client.post('/mails', params={'to': 'ada@example.com'})).status_code == 200
        assert await asyncio.wait_for(agent.seen.get(), 5) == Mail(to='ada@example.com')
        await shutdown()
    assert agent.events == ['post_start', 'pre_stop']
    assert await agents.problems() == {'Welcomer': ['<MicroAgent Welcomer> is not started']}


async def test_the_probes_answer_with_the_agents_readiness_wherever_they_are_mounted() -> None:
    agents = AppAgents(Welcomer(bus=MemorySignalBus(), broker=MemoryBroker()))
    async with serving(make_app(agents)) as (client, _):
        for path in ('/ready', '/agents/ready'):
            answer = await client.get(path)
            assert (answer.status_code, answer.json()) == (200, {'status': 'ready', 'agents': ['Welcomer']}), path
        assert (await client.get('/app/ready')).json() == {'status': 'ready'}
        assert (await client.get('/health')).json() == {'status': 'alive'}
        assert (await client.get('/agents/asyncapi.json')).json()['asyncapi'].startswith('3.')
        assert (await client.get('/agents/nothing')).status_code == 404
        refused = await client.post('/agents/ready')
        assert (refused.status_code, refused.headers['allow']) == (405, 'GET')


async def test_a_token_guards_all_but_the_probes() -> None:
    agents = AppAgents(Welcomer(bus=MemorySignalBus(), broker=MemoryBroker()), token='s3cret')
    async with serving(make_app(agents)) as (client, _):
        assert (await client.get('/agents/ready')).status_code == 200
        assert (await client.get('/agents/asyncapi.json')).status_code == 401
        allowed = await client.get('/agents/asyncapi.json', headers={'Authorization': 'Bearer s3cret'})
        assert allowed.status_code == 200


@pytest.mark.redis
async def test_ready_says_what_is_wrong_while_the_bus_server_is_unreachable(unique: str) -> None:
    from microagent.tools.redis import RedisSignalBus
    from tests.services import REDIS_HOST, REDIS_PORT
    from tests.tcp_proxy import Proxy

    proxy = await Proxy(REDIS_HOST, REDIS_PORT).start()
    bus = RedisSignalBus(f'redis://127.0.0.1:{proxy.port}/9', prefix=f'T{unique}')
    agents = AppAgents(Welcomer(bus=bus, broker=MemoryBroker()), grace=0.5)
    try:
        async with serving(make_app(agents)) as (client, _):
            assert (await client.get('/ready')).status_code == 200
            await proxy.kill()   # the server goes away

            async def refused() -> bool:
                return (await client.get('/ready')).status_code == 503
            await eventually(refused, timeout=10)
            body = (await client.get('/ready')).json()
            assert body['status'] == 'not ready' and list(body['not_ready']) == ['Welcomer'], body
            assert 'ping' in ' '.join(body['not_ready']['Welcomer']), body
            assert (await client.get('/app/ready')).status_code == 503

            await proxy.start()  # back on the same port: the bus reconnects by itself

            async def ready() -> bool:
                return (await client.get('/ready')).status_code == 200
            await eventually(ready, timeout=15)
    finally:
        await proxy.kill()


async def test_a_failed_start_stops_the_agents_started_and_fails_the_app() -> None:
    class Broken(MicroAgent):
        @on('pre_start')
        def fail(self) -> None:
            raise RuntimeError('no database')

    first = Welcomer(bus=MemorySignalBus(), broker=MemoryBroker())
    agents = AppAgents(first, Broken())
    with pytest.raises(RuntimeError, match='no database'):
        async with agents:
            pass
    assert first.events == ['post_start', 'pre_stop']


async def test_agents_start_once_at_a_time() -> None:
    agent = Welcomer(bus=MemorySignalBus(), broker=MemoryBroker())
    agents = AppAgents(agent)
    async with agents:
        with pytest.raises(UsageError, match='already started'):
            await agents.start()
    async with agents:  # again after a stop, as an app restarted in the same process
        assert await agents.problems() == {}
    assert agent.events == ['post_start', 'pre_stop', 'post_start', 'pre_stop']


def test_typed_access_and_names() -> None:
    bus, broker = MemorySignalBus(), MemoryBroker()
    one, two = Welcomer(bus=bus, broker=broker), Welcomer(bus=bus, broker=broker, name='second')
    agents = AppAgents(one, two, Welcomer(bus=bus, broker=broker))
    assert list(agents.agents) == ['Welcomer.1', 'second', 'Welcomer.2']
    assert agents.bus is bus and agents.broker is broker
    with pytest.raises(UsageError, match='3 agents of class Welcomer'):
        agents.get(Welcomer)
    assert AppAgents(one).get(Welcomer) is one
    with pytest.raises(UsageError, match='no agent has a broker'):
        _ = AppAgents(MicroAgent(bus=bus)).broker
    with pytest.raises(UsageError):
        AppAgents()
