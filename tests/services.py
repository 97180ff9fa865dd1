"""Real servers for integration tests: skip with a reason on a laptop without them, fail in CI.

CI sets MICROAGENT_REQUIRE_SERVICES=1, which turns a missing server into a test failure.
"""
from __future__ import annotations

import os
import socket

import pytest

REDIS_HOST, REDIS_PORT = '127.0.0.1', 6379
AMQP_HOST, AMQP_PORT = '127.0.0.1', 5672
NATS_HOST, NATS_PORT = '127.0.0.1', 4222
NATS_DSN = f'nats://{NATS_HOST}:{NATS_PORT}'


def require_service(name: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=1):
            return
    except OSError as exc:
        message = f'{name} is not reachable at {host}:{port} ({exc})'
    if os.environ.get('MICROAGENT_REQUIRE_SERVICES'):
        pytest.fail(message + ' and MICROAGENT_REQUIRE_SERVICES is set')
    pytest.skip(message)


def require_nats() -> None:
    require_service('NATS', NATS_HOST, NATS_PORT)
