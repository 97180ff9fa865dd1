"""pytest fixtures of the test kit, registered by the package (entry point ``pytest11``).

``agent_group`` builds a ``TestGroup`` on the backend ``--microagent-dsn`` (or the environment's
``MICROAGENT_TEST_DSN``) names, a private in-memory one by default, so one test suite runs on
memory on a laptop and on Redis or RabbitMQ in CI::

    async def test_billing(agent_group: GroupFactory) -> None:
        async with agent_group(Shop, Billing) as group:
            ...

The kit is used from ``async def`` tests. So that they run with no configuration of the user's
(pytest-asyncio's default *strict* mode wants a marker on each), an ``async def`` test that asks for
one of the kit's fixtures (itself or through another fixture), or lives in a module that imports
from ``microagent.testing`` (``TestGroup``, ``check_contract``), gets pytest-asyncio's documented
``@pytest.mark.asyncio`` marker when pytest-asyncio is installed, unless it has an ``asyncio`` or
``anyio`` marker or asks for ``anyio_backend`` (an explicit marker, its loop scope included, wins).
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Generator
from typing import TypeGuard

import pytest

from microagent.testing.group import GroupFactory

DSN_VARIABLE = 'MICROAGENT_TEST_DSN'
#: the fixtures of the kit: an async test asking for one of them runs on pytest-asyncio's loop
KIT_FIXTURES = frozenset(('agent_group', 'microagent_dsn'))
#: markers of async test runners that take the test already
RUNNER_MARKERS = ('asyncio', 'anyio')
KIT_PACKAGE = 'microagent.testing'


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption('--microagent-dsn', default=None,
                     help=f'run agent_group on this backend (default: ${DSN_VARIABLE}, else a private memory hub)')


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector: pytest.Module | pytest.Class, name: str,
                              obj: object) -> Generator[None, object, object]:
    """Mark the kit's async tests for pytest-asyncio. ``trylast``: this wrapper is inside
    pytest-asyncio's, which turns marked coroutine items into its own when they come out."""
    collected = yield
    if collector.config.pluginmanager.hasplugin('asyncio'):
        module = collector.getparent(pytest.Module)
        in_kit_module = module is not None and _imports_kit(module.obj)
        items = collected if isinstance(collected, list) else [collected]
        for item in items:
            if _needs_asyncio(item, in_kit_module):
                item.add_marker(pytest.mark.asyncio)
    return collected


def _imports_kit(module: object) -> bool:
    """Whether a test module holds a name imported from the kit (its module, a class, a function)."""
    names = (getattr(value, '__name__' if inspect.ismodule(value) else '__module__', None)
             for value in vars(module).values())
    return any(isinstance(name, str) and name.startswith(KIT_PACKAGE) for name in names)


def _needs_asyncio(item: object, in_kit_module: bool) -> TypeGuard[pytest.Function]:
    return (isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj)
            and (in_kit_module or not KIT_FIXTURES.isdisjoint(item.fixturenames))
            and 'anyio_backend' not in item.fixturenames
            and not any(item.get_closest_marker(marker) for marker in RUNNER_MARKERS))


@pytest.fixture
def microagent_dsn(request: pytest.FixtureRequest) -> str | None:
    """The backend the kit's groups run on: None for a private in-memory hub."""
    dsn: str | None = request.config.getoption('--microagent-dsn') or os.environ.get(DSN_VARIABLE) or None
    return dsn


@pytest.fixture
def agent_group(microagent_dsn: str | None) -> GroupFactory:
    """``agent_group(AgentA, AgentB, settings=...)``: a ``TestGroup`` on ``microagent_dsn``, to use
    as ``async with``; it stops its agents when the block ends."""
    return GroupFactory(microagent_dsn)
