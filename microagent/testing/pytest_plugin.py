"""pytest fixtures of the test kit, registered by the package (entry point ``pytest11``).

``agent_group`` builds a ``TestGroup`` on the backend ``--microagent-dsn`` (or the environment's
``MICROAGENT_TEST_DSN``) names, a private in-memory one by default, so one test suite runs on
memory on a laptop and on Redis or RabbitMQ in CI::

    async def test_billing(agent_group: GroupFactory) -> None:
        async with agent_group(Shop, Billing) as group:
            ...
"""
from __future__ import annotations

import os

import pytest

from microagent.testing.group import GroupFactory

DSN_VARIABLE = 'MICROAGENT_TEST_DSN'


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption('--microagent-dsn', default=None,
                     help=f'run agent_group on this backend (default: ${DSN_VARIABLE}, else a private memory hub)')


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
