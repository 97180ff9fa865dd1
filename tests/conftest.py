from __future__ import annotations

import itertools
import logging
import sys
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from tests import redis_cluster_support
from tests.amqp_support import Servers, require_rabbitmq
from tests.conformance.backends import BACKENDS, REDIS_TEST_DSN, Backend
from tests.services import REDIS_HOST, REDIS_PORT, require_nats, require_service


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``redis``, ``amqp`` or ``nats`` skips (or fails in CI) without its server, even when its
    fixtures would only find out by failing to connect."""
    if item.get_closest_marker('redis'):
        require_service('Redis', REDIS_HOST, REDIS_PORT)
    if item.get_closest_marker('amqp'):
        require_rabbitmq()
    if item.get_closest_marker('nats'):
        require_nats()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption('--reverse', action='store_true', help='run the tests in reverse order (shows order dependence)')


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption('--reverse'):
        items.reverse()


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that runs marun's ``main`` in this process leaves its log handler on the root logger,
    writing to that test's captured stderr: removed after the test (with the root level put back),
    so no later test logs to a closed stream, whatever the order."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if getattr(h, '_microagent', False)]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope='session')
def redis_cluster() -> Iterator[redis_cluster_support.Cluster]:
    """A Redis Cluster (3 masters, 3 replicas) on loopback ports 7101-7106, for the whole session."""
    redis_cluster_support.require_cluster_binaries()
    cluster = redis_cluster_support.start_cluster()
    redis_cluster_support.CURRENT.append(cluster)
    try:
        yield cluster
    finally:
        redis_cluster_support.CURRENT.clear()
        redis_cluster_support.stop_cluster(cluster)


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Every backend in turn: the conformance suite is written once and runs on each."""
    if request.param == 'redis-cluster':
        request.getfixturevalue('redis_cluster')
    async with BACKENDS[request.param]() as opened:
        yield opened


@pytest.fixture
def unique() -> str:
    """A suffix that keeps declaration names of one test apart from every other test's."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def config_module(monkeypatch: pytest.MonkeyPatch, unique: str) -> Callable[..., str]:
    """``make(BUS=..., AGENTS=...)``: the name of a new settings module holding those sections,
    importable for the test's duration."""
    numbers = itertools.count()

    def make(**sections: Any) -> str:
        name = f'config_{unique}_{next(numbers)}'
        module = types.ModuleType(name)
        for key, value in sections.items():
            setattr(module, key, value)
        monkeypatch.setitem(sys.modules, name, module)
        return name
    return make


@pytest.fixture
async def raw() -> AsyncIterator[Redis]:
    """A plain redis-py client on the test db, playing the 1.x agent (or checking what is stored)."""
    require_service('Redis', REDIS_HOST, REDIS_PORT)
    client = Redis.from_url(REDIS_TEST_DSN)
    yield client
    await client.aclose()


@pytest.fixture
async def amqp() -> AsyncIterator[Servers]:
    """RabbitMQ connections of one test, closed (and its queues deleted) afterwards."""
    require_rabbitmq()
    servers = Servers()
    try:
        yield servers
    finally:
        await servers.close()
