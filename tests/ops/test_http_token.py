"""A bearer token guards /metrics, /asyncapi.json and /docs; /health and /ready stay open for probes.
The token comes from code (``serve_http(token=)``, ``run(http_token=)``), ``$MICROAGENT_HTTP_TOKEN``
or, for marun, ``--http-token-file`` (never the command line itself, where ``ps`` shows it)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microagent.backends.memory import MemoryBroker, MemoryHub
from microagent.cli.marun import main as marun
from microagent.ops.endpoints import agent_endpoints
from microagent.ops.http import TOKEN_VARIABLE, HttpServer, start_http
from tests.helpers import eventually
from tests.nats_support import free_port
from tests.ops.test_http import agent_class, get, request

TOKEN = 's3cret-token'


@pytest.fixture
async def guarded(unique: str) -> AsyncIterator[HttpServer]:
    agent = agent_class(unique)(broker=MemoryBroker(hub=MemoryHub()))
    server = await start_http('127.0.0.1:0', agent_endpoints({'Unit': agent}, token=TOKEN))
    yield server
    await server.close()


async def authorized(address: str, path: str, header: str) -> int:
    status, _, _ = await request(address, f'GET {path} HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n'.encode())
    return status


@pytest.mark.parametrize('path', ['/metrics', '/asyncapi.json', '/docs'])
async def test_a_guarded_route_asks_for_the_token(guarded: HttpServer, path: str) -> None:
    status, headers, body = await get(guarded.address, path)
    assert status == 401
    assert headers['www-authenticate'].startswith('Bearer')
    assert b'Authorization: Bearer' in body
    assert await authorized(guarded.address, path, f'Authorization: Bearer {TOKEN}') == 200
    assert await authorized(guarded.address, path, f'authorization: bearer {TOKEN}') == 200  # names in any case
    assert await authorized(guarded.address, path, 'Authorization: Bearer wrong') == 401
    assert await authorized(guarded.address, path, f'Authorization: Basic {TOKEN}') == 401


@pytest.mark.parametrize('path', ['/health', '/ready'])
async def test_probes_stay_open(guarded: HttpServer, path: str) -> None:
    status, _, _ = await get(guarded.address, path)
    assert status in (200, 503)  # /ready: 503 while the agent is not started, never 401


async def test_the_token_may_come_from_the_environment(unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    agent = agent_class(unique)(broker=MemoryBroker(hub=MemoryHub()))
    server = await start_http('127.0.0.1:0', agent_endpoints({'Unit': agent}))
    try:
        assert (await get(server.address, '/asyncapi.json'))[0] == 401
        assert await authorized(server.address, '/asyncapi.json', f'Authorization: Bearer {TOKEN}') == 200
    finally:
        await server.close()


async def test_serve_http_takes_a_token(unique: str) -> None:
    agent = agent_class(unique)(broker=MemoryBroker(hub=MemoryHub()))
    address = f'127.0.0.1:{free_port()}'
    serving = asyncio.create_task(agent.serve_http(address, grace=1, token=TOKEN))

    async def ready() -> bool:
        try:
            return (await get(address, '/ready'))[0] == 200
        except OSError:
            return False

    try:
        await eventually(ready, timeout=10)
        assert (await get(address, '/docs'))[0] == 401
        status, _, body = await request(
            address, f'GET /asyncapi.json HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n'.encode())
        assert status == 200 and json.loads(body)['asyncapi'].startswith('3.')
    finally:
        await agent.stop(1)
        await serving


@pytest.mark.parametrize('content', [None, '', 'two words'])
def test_marun_refuses_a_token_file_it_cannot_use(tmp_path: Path, content: str | None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / 'token'
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exited:
        marun(['--http', '127.0.0.1:0', '--http-token-file', str(path), 'tests.launcher_agents.group'])
    assert exited.value.code == 2
    assert '--http-token-file' in capsys.readouterr().err
