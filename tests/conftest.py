from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.backends import BACKENDS, Backend


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Every backend in turn: the conformance suite is written once and runs on each."""
    async with BACKENDS[request.param]() as opened:
        yield opened


@pytest.fixture
def unique() -> str:
    """A suffix that keeps declaration names of one test apart from every other test's."""
    return uuid.uuid4().hex[:10]
