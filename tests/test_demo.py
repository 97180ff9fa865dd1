"""The README's demo runs to completion, on the memory backend and on Redis, and shows each feature."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_agents.support import Starter, starter
from tests.services import REDIS_HOST, REDIS_PORT, require_service

REDIS_DSN = f'redis://{REDIS_HOST}:{REDIS_PORT}/5'
DEMO_KEYS = ('mailer*', 'push_android*', 'push_ios*')

# What a newcomer should see, in the demo's words: sent, received, answered, queued, retried, consumed.
EVENTS = [
    'users[{users}]: SENT signal user_created: user 1 Ada <ada1@example.com>',
    'mailer[{mailer}]: RECEIVED user_created: user ',
    'comments[{comments}]: ANSWERED comments_count for user ',
    'users[{users}]: GOT answer to comments_count for user ',
    'mailer[{mailer}]: QUEUED a welcome mail to ',
    'mailer[{mailer}]: PUBLISHED a push to the push exchange with routing key ',
    'mailer[{mailer}]: FAILED to send mail to ',
    'mailer[{mailer}] agent.mailer.broker: Queue mailer: MailerAgent.send_mail failed on attempt 1',
    ' on the retry\n',
    'push[{push}]: PUSHED to ',
    'mailer[{mailer}]: SUMMARY: mailed ',
]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


def _pids(output: str) -> dict[str, str]:
    """The pid each agent logged its start under."""
    pids = {}
    for line in output.splitlines():
        if ']: Started ' in line:  # the agent's own line, not the supervisor's
            agent, _, rest = line.split()[3].partition('[')
            pids[agent] = rest.split(']')[0]
    return pids


def test_the_demo_on_the_memory_backend(start: Starter) -> None:
    demo = start('python', '--duration', '5.5', module='examples')  # 5.5 s always holds a 5 s cron tick

    assert demo.wait() == 0, demo.output
    output = demo.output
    pids = _pids(output)
    assert set(pids) == {'users', 'comments', 'mailer', 'push'} and len(set(pids.values())) == 1
    for event in EVENTS:
        assert event.format(**pids) in output, event
    assert f'users[{pids["users"]}]: CRON report: ' in output
    assert output.count('failed on attempt') == 1  # one retry, then success
    assert 'PUSHED to android, user 1: Hi Ada!' in output and 'PUSHED to iOS, user 2: Hi Grace!' in output
    assert 'Ran for 5.5s: stopping the group' in output
    assert 'ERROR' not in output and 'Traceback' not in output


async def _delete_demo_keys() -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_DSN)
    try:
        for pattern in DEMO_KEYS:
            keys = [key async for key in redis.scan_iter(match=pattern)]
            if keys:
                await redis.delete(*keys)
    finally:
        await redis.aclose()


@pytest.mark.redis
def test_the_demo_on_redis(start: Starter) -> None:
    require_service('Redis', REDIS_HOST, REDIS_PORT)
    asyncio.run(_delete_demo_keys())
    try:
        demo = start('python', '--redis', REDIS_DSN, '--duration', '6', module='examples')

        assert demo.wait() == 0, demo.output
    finally:
        asyncio.run(_delete_demo_keys())
    output = demo.output
    pids = _pids(output)
    assert set(pids) == {'users', 'comments', 'mailer', 'push'} and len(set(pids.values())) == 4
    for event in EVENTS:
        assert event.format(**pids) in output, event
    assert 'ERROR' not in output and 'Traceback' not in output
