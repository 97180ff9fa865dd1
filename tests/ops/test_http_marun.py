"""``marun --http`` as it runs in production: real agent processes on real Redis, one port for the
group; /metrics scraped and parsed after a known workload, /ready following a Redis outage."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conformance.backends import REDIS_TEST_DSN
from tests.launcher_agents.support import DEADLINE, Run, Starter, starter
from tests.nats_support import free_port

pytestmark = pytest.mark.redis

SETTINGS = 'tests.http_agents.settings'


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f'http://127.0.0.1:{port}{path}', timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b''  # not listening (yet)


def poll(run: Run, port: int, path: str, wanted: int) -> bytes:
    """GET ``path`` until it answers ``wanted`` (another process's state: nothing to await)."""
    found: list[tuple[int, bytes]] = []

    def check() -> bool:
        found[:] = [get(port, path)]
        return found[0][0] == wanted
    try:
        run.wait_for(f'GET {path} to answer {wanted}', check)
    except AssertionError as error:
        raise AssertionError(f'last answer: {found}\n{error}') from None
    return found[0][1]


def counters(text: str) -> dict[str, float]:
    """``family{handler}`` -> value of the consumer's counters, parsed by prometheus-client."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith('_total') and sample.labels.get('handler') == 'Worker.work':
                values[family.name] = sample.value
    return values


def test_metrics_of_a_known_workload_across_agent_processes(start: Starter, unique: str) -> None:
    port = free_port()
    run = start('marun', SETTINGS, '--http', f'127.0.0.1:{port}',
                env={'HTTP_TEST_SUFFIX': unique, 'HTTP_TEST_REDIS': REDIS_TEST_DSN})
    try:
        assert poll(run, port, '/health', 200) == b'{\n  "status": "alive"\n}\n'
        deadline = time.monotonic() + DEADLINE
        while True:  # the workload ends with the dead letter
            status, body = get(port, '/metrics')
            found = counters(body.decode()) if status == 200 else {}
            if found.get('microagent_messages_dead_lettered') == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert found == {
            'microagent_messages_received': 5,  # ok, once twice, never twice
            'microagent_messages_handled': 2,
            'microagent_messages_failed': 3,
            'microagent_messages_retried': 2,
            'microagent_messages_dead_lettered': 1,
            'microagent_handler_timeouts': 0,
        }, run.output
        families = {family.name: family for family in text_string_to_metric_families(body.decode())}
        sent = families['microagent_messages_sent'].samples  # counted in the producer's process
        assert [(s.labels, s.value) for s in sent if s.name.endswith('_total')] == [
            ({'kind': 'queue', 'name': f'http_jobs_{unique}', 'marun_agent': 'producer'}, 3)]
        durations = families['microagent_handler_duration_seconds'].samples
        assert [(s.labels['marun_agent'], s.value) for s in durations if s.name.endswith('_count')] == [('worker', 5)]
        assert {s.labels['marun_agent'] for s in families['process_cpu_seconds'].samples} == {'producer', 'worker'}
        assert not body.startswith(b'# microagent: no PrometheusMiddleware')  # both count messages
        depths = families['microagent_queue_depth'].samples  # sampled by default, from when the worker started
        assert [s.labels for s in depths] == [{'queue': f'http_jobs_{unique}', 'marun_agent': 'worker'}]
        assert json.loads(poll(run, port, '/ready', 200)) == {'status': 'ready', 'agents': ['producer', 'worker']}

        status, body = get(port, '/asyncapi.json')
        document = json.loads(body)
        assert status == 200 and document['asyncapi'] == '3.0.0'
        assert {f'queue.http_jobs_{unique}', f'signal.http_nudge_{unique}'} <= set(document['channels'])
        status, body = get(port, '/docs')
        assert status == 200 and body.startswith(b'<!DOCTYPE html>') and b'worker' in body
        assert get(port, '/metrics.json')[0] == 404
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.output
        assert get(port, '/health')[0] == 0  # the port is closed with the group
    finally:
        _drop_queue(f'http_jobs_{unique}')


def _drop_queue(name: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_TEST_DSN)
    try:
        client.delete(name, *client.scan_iter(match=f'{name}:*'))
    finally:
        client.close()


class PrivateRedis:
    """A redis-server of this test only: own port, own directory; stopped and started at will."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ['redis-server', '--port', str(self.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
             '--dir', str(self.directory)], stdout=subprocess.DEVNULL, cwd=self.directory)
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                socket.create_connection(('127.0.0.1', self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(DEADLINE)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which('redis-server') is None:
        if os.environ.get('MICROAGENT_REQUIRE_SERVICES'):
            pytest.fail('redis-server is not installed and MICROAGENT_REQUIRE_SERVICES is set')
        pytest.skip('redis-server is not installed')
    directory = tmp_path / 'redis'
    directory.mkdir()
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_ready_is_503_while_redis_is_down_and_200_once_it_is_back(
        start: Starter, private_redis: PrivateRedis, unique: str) -> None:
    port = free_port()
    run = start('marun', SETTINGS, '--http', f'127.0.0.1:{port}',
                env={'HTTP_TEST_SUFFIX': unique, 'HTTP_TEST_REDIS': f'redis://127.0.0.1:{private_redis.port}/0'})
    poll(run, port, '/ready', 200)

    private_redis.stop()
    body = json.loads(poll(run, port, '/ready', 503))
    assert body['status'] == 'not ready' and set(body['not_ready']) == {'producer', 'worker'}, body
    reasons = ' '.join(body['not_ready']['worker'])
    assert 'RedisBroker' in reasons and 'ping failed' in reasons, reasons
    assert get(port, '/health')[0] == 200  # alive all along: a liveness probe must not restart it

    private_redis.start()
    assert json.loads(poll(run, port, '/ready', 200)) == {'status': 'ready', 'agents': ['producer', 'worker']}
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.output


def test_single_process_serves_the_group_itself(start: Starter, unique: str) -> None:
    port = free_port()
    run = start('marun', SETTINGS, '--single-process', '--http', f'127.0.0.1:{port}',
                env={'HTTP_TEST_SUFFIX': unique, 'HTTP_TEST_REDIS': REDIS_TEST_DSN})
    try:
        assert json.loads(poll(run, port, '/ready', 200)) == {'status': 'ready', 'agents': ['producer', 'worker']}
        deadline = time.monotonic() + DEADLINE
        while counters(get(port, '/metrics')[1].decode()).get('microagent_messages_dead_lettered') != 1:
            assert time.monotonic() < deadline, run.output
            time.sleep(0.05)
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.output
    finally:
        _drop_queue(f'http_jobs_{unique}')


@pytest.mark.parametrize('address', ['8080', 'localhost:http'])
def test_a_bad_http_address_is_a_usage_error(start: Starter, address: str) -> None:
    run = start('marun', SETTINGS, '--http', address)
    assert run.wait() == 2
    assert 'marun: error: --http: an HTTP address is HOST:PORT' in run.output


def test_a_port_in_use_stops_marun_before_any_agent_starts(start: Starter) -> None:
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        run = start('marun', SETTINGS, '--http', f'127.0.0.1:{taken.getsockname()[1]}')
        assert run.wait() == 2
    assert 'marun: error: --http 127.0.0.1:' in run.output and 'cannot listen there' in run.output
    assert 'Started agent' not in run.output


def test_a_token_file_guards_the_group_endpoints_but_not_its_probes(start: Starter, unique: str,
                                                                     tmp_path: Path) -> None:
    port = free_port()
    token_file = tmp_path / 'http.token'
    token_file.write_text('group-token\n')
    run = start('marun', SETTINGS, '--single-process', '--http', f'127.0.0.1:{port}',
                '--http-token-file', str(token_file),
                env={'HTTP_TEST_SUFFIX': unique, 'HTTP_TEST_REDIS': REDIS_TEST_DSN})
    try:
        poll(run, port, '/ready', 200)  # probes are open
        assert get(port, '/metrics')[0] == 401
        request = urllib.request.Request(f'http://127.0.0.1:{port}/metrics',
                                         headers={'Authorization': 'Bearer group-token'})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        assert b'group-token' not in Path(f'/proc/{run.proc.pid}/cmdline').read_bytes()  # never on the command line
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.output
    finally:
        _drop_queue(f'http_jobs_{unique}')
