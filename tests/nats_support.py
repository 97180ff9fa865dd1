"""A private nats-server for fault tests: its own port and store dir, stopped and started at will."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import eventually

NATS_SERVER = shutil.which('nats-server') or '/usr/sbin/nats-server'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return int(probe.getsockname()[1])


async def _answers(port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection('127.0.0.1', port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


@dataclass
class PrivateNATS:
    """nats-server with JetStream on ``port``, storing in ``store`` (kept across restarts)."""

    port: int
    store: Path
    process: asyncio.subprocess.Process | None = None
    started: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return f'nats://127.0.0.1:{self.port}'

    async def start(self, *options: str) -> None:
        self.process = await asyncio.create_subprocess_exec(
            NATS_SERVER, '-a', '127.0.0.1', '-p', str(self.port), '-js', '-sd', str(self.store), *options,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        self.started.append(self.process)
        await eventually(lambda: _answers(self.port), timeout=10, every=0.05)

    async def stop(self) -> None:
        """A clean shutdown (SIGTERM): what the server acknowledged is on disk."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        self.process = None


@asynccontextmanager
async def private_nats() -> AsyncIterator[PrivateNATS]:
    if not os.access(NATS_SERVER, os.X_OK):
        if os.environ.get('MICROAGENT_REQUIRE_SERVICES'):
            pytest.fail('nats-server is not installed and MICROAGENT_REQUIRE_SERVICES is set')
        pytest.skip('nats-server is not installed')
    with tempfile.TemporaryDirectory(prefix='microagent-nats-') as store:
        server = PrivateNATS(free_port(), Path(store))
        try:
            yield server
        finally:
            for process in server.started:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
