"""/metrics under marun: a scrape says why it holds process metrics only when no PrometheusMiddleware
counts messages, and the middleware samples the depth of the queues its agents consume by itself."""
from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from microagent.backends.memory import MemoryBroker
from microagent.cli.config import load_group
from microagent.ops.http import Endpoints
from microagent.ops.metrics import PrometheusMiddleware
from tests.helpers import eventually
from tests.launcher_agents.agents import Ping, jobs
from tests.launcher_agents.support import Starter, starter
from tests.nats_support import free_port
from tests.ops.test_http_marun import get, poll

NOTE = b'# microagent: no PrometheusMiddleware counts messages in '
METRICS = 'microagent.ops.metrics.PrometheusMiddleware'


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


def endpoints(registry: CollectorRegistry) -> Endpoints:
    async def ready() -> dict[str, list[str]]:
        return {}
    return Endpoints(ready, dict, str, registry)


async def test_a_scrape_without_the_middleware_says_why_it_holds_process_metrics_only() -> None:
    page = await endpoints(CollectorRegistry()).metrics()

    assert page.status == 200
    first = page.body.splitlines()[0]
    assert first.startswith(NOTE + b'this process, so these are process and runtime metrics only: add '
                                   b"'microagent.ops.metrics.PrometheusMiddleware' to MIDDLEWARES")
    assert list(text_string_to_metric_families(page.body.decode())) == []  # a comment: scrapers skip it


async def test_a_scrape_with_the_middleware_has_no_such_line() -> None:
    registry = CollectorRegistry()
    PrometheusMiddleware(registry)

    page = await endpoints(registry).metrics()

    assert NOTE not in page.body and b'microagent_messages_handled_total' in page.body


def test_marun_http_names_the_agents_without_the_middleware(start: Starter) -> None:
    port = free_port()
    run = start('marun', 'tests.launcher_agents.group', '--http', f'127.0.0.1:{port}')
    run.pid_of('alpha')
    run.pid_of('beta')

    body = poll(run, port, '/metrics', 200)

    assert body.splitlines()[0].startswith(NOTE + b'agents alpha, beta, so these are process and runtime')
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    assert {s.labels['marun_agent'] for s in families['process_cpu_seconds'].samples} == {'alpha', 'beta'}
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.output
    assert get(port, '/health')[0] == 0


def worker_settings(config_module: Any, registry: CollectorRegistry, dsn: str, **options: Any) -> str:
    module: str = config_module(
        MIDDLEWARES=[(METRICS, {'registry': registry, **options})], BROKER={'default': {'dsn': dsn}},
        AGENT={'worker': {'backend': 'tests.launcher_agents.agents.Worker', 'broker': 'default',
                          'events': {'enable_consuming_messages': False},  # the backlog stays
                          'settings': {'dir': '.', 'name': 'worker'}}})
    return module


async def test_marun_samples_the_depth_of_the_queues_its_agents_consume(
        config_module: Any, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the Recorder's files
    registry, dsn = CollectorRegistry(), f'memory://depth-{unique}'
    (config,) = load_group([worker_settings(config_module, registry, dsn, depth_interval=0.01)])
    producer = MemoryBroker(dsn)
    await producer[jobs].send_many([Ping(number=n) for n in range(3)])
    agent = config.build()

    def depth() -> float | None:
        return registry.get_sample_value('microagent_queue_depth', {'queue': jobs.name})

    await agent.start(**config.events)
    try:
        assert depth() == 3  # sampled as the agent started, no code of the user's
        await producer[jobs].send_many([Ping(number=n) for n in range(2)])

        async def five() -> bool:
            return depth() == 5
        await eventually(five)  # and again every depth_interval
    finally:
        await agent.stop(1)
    assert [task for task in asyncio.all_tasks() if task.get_name() == 'queue-depths'] == []  # stopped with it
