"""A real Redis Cluster for the tests: 3 masters with a replica each, on loopback ports 7101-7106,
in a temporary directory, started once per session and torn down after.

Nodes use ``cluster-node-timeout 1000`` so that a master killed with ``kill -9`` is replaced by its
replica within a few seconds. A fault test that kills a node starts it again afterwards
(``restart``): it rejoins as a replica, and the next test finds 3 masters with 3 replicas again.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

BASE_PORT = 7101
NODES = 6
NODE_TIMEOUT_MS = 1000


def require_cluster_binaries() -> None:
    """redis-server and redis-cli, which the cluster needs: a skip on a laptop, a failure in CI."""
    missing = [name for name in ('redis-server', 'redis-cli') if shutil.which(name) is None]
    if not missing:
        return
    message = f'{" and ".join(missing)} not installed: the Redis Cluster tests need them'
    if os.environ.get('MICROAGENT_REQUIRE_SERVICES'):
        pytest.fail(message + ' and MICROAGENT_REQUIRE_SERVICES is set')
    pytest.skip(message)


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server: TIME_WAIT is no owner
        try:
            probe.bind(('127.0.0.1', port))
        except OSError:
            return True
    return False


@dataclass
class Cluster:
    """The running cluster: its nodes' ports, processes and directory."""

    ports: list[int]
    directory: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        return 'redis+cluster://' + ','.join(f'127.0.0.1:{port}' for port in self.ports[:3]) + '/'

    def start(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            ['redis-server', '--port', str(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes',
             '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', str(NODE_TIMEOUT_MS),
             '--dir', str(node_dir), '--save', '', '--appendonly', 'no', '--daemonize', 'no',
             '--logfile', str(node_dir / 'redis.log')],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        process = self.processes[port]
        process.send_signal(sig)
        if sig == signal.SIGKILL:
            process.wait()

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    def client(self, port: int) -> Redis:
        return Redis(host='127.0.0.1', port=port, socket_timeout=5)

    async def restart(self, port: int) -> None:
        """Start a killed node again and wait until the cluster is whole: 3 masters, each with a
        synced replica that acknowledges writes, every node saying ``cluster_state:ok``."""
        if self.processes[port].poll() is None:
            return
        self.start(port)
        await self.wait_healthy()

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f'the Redis Cluster in {self.directory} is not healthy after {timeout}s')
            await asyncio.sleep(0.1)

    async def _healthy(self) -> bool:
        masters = replicas = 0
        for port in self.ports:
            client = self.client(port)
            try:
                info = (await client.execute_command('CLUSTER', 'INFO')).decode()  # type: ignore[no-untyped-call]
                if 'cluster_state:ok' not in info:
                    return False
                role = await client.execute_command('ROLE')  # type: ignore[no-untyped-call]
                if role[0] == b'master':
                    # its replica has finished syncing and acks: WAIT on a fresh connection says so
                    if int(await client.execute_command('WAIT', 1, 100)) < 1:  # type: ignore[no-untyped-call]
                        return False
                    masters += 1
                elif role[3] == b'connected':
                    replicas += 1
            except Exception:
                return False
            finally:
                await client.aclose()
        return masters == NODES // 2 and replicas == NODES // 2

    async def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot, as the cluster says now."""
        slot = key_slot(key.encode())
        for master, ranges in (await self.masters()).items():
            if any(start <= slot <= end for start, end in ranges):
                return master
        raise RuntimeError(f'no master serves the slot of {key!r} now')

    async def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Every master's port and its slot ranges, as a live node says now."""
        for port in self.ports:
            if self.processes[port].poll() is not None:
                continue
            client = self.client(port)
            try:
                table: dict[int, list[tuple[int, int]]] = {}
                for start, end, master, *_ in await client.execute_command('CLUSTER', 'SLOTS'):  # type: ignore[no-untyped-call]
                    table.setdefault(int(master[1]), []).append((int(start), int(end)))
                return table
            except Exception:
                continue
            finally:
                await client.aclose()
        raise RuntimeError('no live node answers CLUSTER SLOTS')

    async def name_on(self, master: int, prefix: str) -> str:
        """A key name starting with ``prefix`` whose slot ``master`` serves."""
        ranges = (await self.masters())[master]
        for i in range(10_000):
            name = f'{prefix}_{i}'
            slot = key_slot(name.encode())
            if any(start <= slot <= end for start, end in ranges):
                return name
        raise RuntimeError(f'no name for master {master}')

    async def replica_of(self, master: int) -> int:
        client = self.client(master)
        try:
            role = await client.execute_command('ROLE')  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()
        assert role[0] == b'master' and role[2], f'node {master} is not a master with a replica: {role}'
        return int(role[2][0][1])


def start_cluster() -> Cluster:
    """Start the 6 nodes and join them; fail clearly if a port (or its bus port, +10000) is taken."""
    ports = list(range(BASE_PORT, BASE_PORT + NODES))
    taken = [p for port in ports for p in (port, port + 10000) if _port_taken(p)]
    if taken:
        pytest.fail(f'cannot start the test Redis Cluster: port(s) {taken} on 127.0.0.1 are taken '
                    f'(a cluster left over by another run? stop it, or free the ports)')
    cluster = Cluster(ports, Path(tempfile.mkdtemp(prefix='microagent-cluster-')))
    try:
        for port in ports:
            cluster.start(port)
        for port in ports:
            _wait_ping(port)
        subprocess.run(['redis-cli', '--cluster', 'create', *(f'127.0.0.1:{p}' for p in ports),
                        '--cluster-replicas', '1', '--cluster-yes'],
                       check=True, capture_output=True, timeout=60)
        with ThreadPoolExecutor(1) as thread:  # the fixture may be set up while a test's loop runs
            thread.submit(asyncio.run, cluster.wait_healthy()).result()
    except BaseException:
        cluster.stop_all()
        shutil.rmtree(cluster.directory, ignore_errors=True)
        raise
    return cluster


def _wait_ping(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(['redis-cli', '-p', str(port), 'ping'], capture_output=True).stdout.strip() != b'PONG':
        if time.monotonic() > deadline:
            raise RuntimeError(f'redis-server on port {port} does not answer')
        time.sleep(0.05)


def stop_cluster(cluster: Cluster) -> None:
    cluster.stop_all()
    shutil.rmtree(cluster.directory, ignore_errors=True)


#: the session's cluster, set by the ``redis_cluster`` fixture (the conformance backend reads it)
CURRENT: list[Cluster] = []


def current() -> Cluster:
    if not CURRENT:
        raise RuntimeError('the Redis Cluster is not started: request the redis_cluster fixture')
    return CURRENT[0]
