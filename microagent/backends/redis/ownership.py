"""Ownership of in-flight messages: what a Redis consumer holds, its heartbeat, and the return to
the queue of what nobody handles any more.

A consumer moves messages atomically into its own in-flight list (``keys.py``) and removes each one
only once it is settled, so a process killed mid-handling loses nothing: its heartbeat key expires
and any live consumer of the queue puts the messages back (``reclaim``). Every fetch also
(re)registers the consumer, so an in-flight list always has an owner others may reclaim; after a
failed fetch or settle, the consumer returns what it does not hold (orphans) before fetching again.
On a Redis Cluster, a failover of the queue's slot may lose our last writes: the same resync
follows.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from microagent.backends.redis.client import Client
from microagent.backends.redis.cluster import master_of
from microagent.backends.redis.keys import QueueKeys
from microagent.errors import BackendClosed
from microagent.queue import Queue
from microagent.retry import backoff

__all__ = ['Owned', 'Ownership']


class Owned:
    """What a consumer took from one queue and has not settled: the in-flight list's expected content."""

    def __init__(self, keys: QueueKeys) -> None:
        self.keys = keys
        self.target = f'queue {keys.queue!r}'  # how a FrameError names the queue
        self.held: Counter[bytes] = Counter()
        self.lock = asyncio.Lock()  # one fetch or resync at a time
        self.dirty = False  # a settle or fetch failed: the in-flight list may hold orphans
        self.beaten = False  # registered once: a later registration means it was taken for dead
        self.rechecks = 0  # resyncs still due after a failed fetch (see ``lost_a_fetch``)
        self.master: str | None = None  # on a cluster, the node that held the queue's slot at the last beat
        self.acks: list[bytes] = []  # acked, not sent yet
        self.flushing: asyncio.Task[None] | None = None

    def lost_a_fetch(self) -> None:
        """A fetch failed: the server may have moved messages that never reached us. Resync twice:
        the second, a full round trip later, also finds those moved by a command the server held
        (asleep, paused) and ran on the dead connection while the first resync was under way."""
        self.dirty = True
        self.rechecks = 2

    def take(self, messages: list[bytes]) -> None:
        self.held.update(messages)

    def drop(self, messages: list[bytes]) -> None:
        held = self.held
        for message in messages:
            left = held[message] - 1
            if left > 0:
                held[message] = left
            else:
                del held[message]


class Ownership:
    """The part of the queue transport that keeps what it took owned, or gives it back: its
    heartbeat, the registration of the consumer, reclaiming the messages of dead consumers,
    returning orphans, and giving back what it holds when it stops."""

    redis: Client
    cluster: bool
    uid: str
    heartbeat: float
    log: logging.Logger
    read_margin: float
    close_timeout: float
    _scripts: dict[str, AsyncScript]
    _owned: dict[str, Owned]
    _heartbeat_task: asyncio.Task[None] | None
    _background: set[asyncio.Task[Any]]
    _closing: bool

    def _script(self, name: str) -> AsyncScript:
        return self._scripts[name]

    def _keys(self, name: str) -> QueueKeys:
        """The keys of queue ``name``, with the lists of its priority levels if this process declares
        it with ``priorities``."""
        declared = Queue.get_all().get(name)
        return QueueKeys.of(name, self.uid, self.cluster, declared.priorities if declared is not None else None)

    async def _register(self, name: str) -> Owned:
        if self._closing:
            raise BackendClosed(f'{self!r} is closed')
        owned = self._owned.get(name)
        if owned is None:
            owned = self._owned[name] = Owned(self._keys(name))
            if self._heartbeat_task is None:  # first, so that it beats even if this beat fails
                self._start_heartbeat()
            await self._beat(owned)
        return owned

    def _start_heartbeat(self) -> None:
        task = asyncio.create_task(self._heartbeats(), name='redis-broker:heartbeat')
        task.add_done_callback(self._heartbeat_ended)
        self._heartbeat_task = task

    def _heartbeat_ended(self, task: asyncio.Task[None]) -> None:
        """Without a heartbeat others reclaim what this consumer holds: never let it stay dead."""
        if self._closing or task.cancelled():
            return
        exc = task.exception()
        self.log.error('%r: the heartbeat task ended (%s: %s); restarting it', self,
                       type(exc).__name__, exc, exc_info=exc)
        self._start_heartbeat()

    async def _beat(self, owned: Owned) -> None:
        keys = owned.keys
        added = await self._script('BEAT')(keys=[keys.heartbeat, keys.consumers],
                                           args=[int(self.heartbeat * 1000), self.uid])
        if isinstance(self.redis, RedisCluster):
            self._check_master(owned)
        if added and owned.beaten:
            self.log.warning('Queue %s: this consumer was taken for dead (no heartbeat for %.0fs) and is '
                             'registered again; what it had in flight went back to the queue and may be '
                             'handled twice', keys.queue, self.heartbeat)
        owned.beaten = True
        members = cast(set[bytes], await self.redis.smembers(keys.consumers))
        reclaimed = await self._reclaim(keys, [c.decode() for c in members if c.decode() != self.uid])
        if reclaimed:
            self.log.warning('Queue %s: %d messages of dead consumers returned to the queue',
                             keys.queue, reclaimed)
        if owned.dirty:
            await self._resync(owned)

    def _check_master(self, owned: Owned) -> None:
        """A new master of the queue's slot (a failover) may lack our last writes: an ack, a retry, a
        release acked by the old master and never replicated puts a settled message back in our
        in-flight list. Resync: whatever no handler holds goes back to the queue."""
        assert isinstance(self.redis, RedisCluster)
        node = master_of(self.redis, owned.keys.queue)
        if node is None:
            return
        master = node.name
        if owned.master is not None and master != owned.master:
            self.log.warning('Queue %s: its slot moved from %s to %s (a failover?); checking what is in flight',
                             owned.keys.queue, owned.master, master)
            owned.lost_a_fetch()
        owned.master = master

    async def _reclaim(self, keys: QueueKeys, consumers: list[str]) -> int:
        if not consumers:
            return 0
        pairs = [k for c in consumers for k in (keys.heartbeat_of(c), keys.inflight_of(c))]
        return int(await self._script('RECLAIM')(keys=[keys.consumers, keys.queue, keys.attempts, *pairs,
                                                       *keys.levels],
                                                 args=consumers))

    async def _heartbeats(self) -> None:
        """Beat for every queue until closed. Any error (lost server, OOM, a bug) is logged and
        retried with backoff: the heartbeat must outlive every episode the consumer outlives."""
        failures = 0
        while True:
            await asyncio.sleep(self.heartbeat / 3 if not failures else backoff(failures, 0.1, self.heartbeat / 3))
            failed = False
            for owned in list(self._owned.values()):
                try:
                    await self._beat(owned)
                except Exception as exc:
                    failed = True
                    self.log.warning('%r: heartbeat of queue %s failed (%s: %s); retry %d in %.1fs', self,
                                     owned.keys.queue, type(exc).__name__, exc, failures + 1,
                                     backoff(failures + 1, 0.1, self.heartbeat / 3))
            failures = failures + 1 if failed else 0

    async def _resync(self, owned: Owned) -> None:
        async with owned.lock:
            await self._return_orphans(owned)

    async def _return_orphans_on_stop(self, owned: Owned) -> None:
        try:
            await self._return_orphans(owned)
        except Exception as exc:
            self.log.warning('Queue %s: could not check the in-flight list after a cancelled fetch (%s: %s); '
                             'close returns it, or else a consumer of the queue once this heartbeat expires',
                             owned.keys.queue, type(exc).__name__, exc)

    async def _return_orphans(self, owned: Owned) -> None:
        """Return to the queue whatever sits in our in-flight list that no handler holds
        (the caller holds ``owned.lock``, so no fetch is between Redis and ``owned.held``).
        Stays ``dirty`` (tried again later) unless it completes and no recheck is due."""
        owned.dirty = True
        keys = owned.keys
        async with asyncio.timeout(self.read_margin):
            listed = cast(list[bytes], await self.redis.lrange(keys.inflight, 0, -1))
            orphans = list((Counter(listed) - owned.held).elements())
            if orphans:
                await self._script('RELEASE')(keys=[keys.inflight, keys.queue, keys.attempts, *keys.levels],
                                              args=orphans)
        if orphans:
            self.log.warning('Queue %s: %d unsettled messages returned to the queue', keys.queue, len(orphans))
        owned.rechecks = max(owned.rechecks - 1, 0)
        owned.dirty = owned.rechecks > 0

    async def _give_back(self, owned: Owned) -> None:
        keys = owned.keys
        try:
            await self.redis.delete(keys.heartbeat)
            await self._reclaim(keys, [self.uid])
        except Exception as exc:
            self.log.warning('%r: could not return the in-flight messages of queue %s (%s: %s); '
                             'a consumer of the queue returns them once this heartbeat expires '
                             '(%.0fs after the last beat)', self, keys.queue, type(exc).__name__, exc,
                             self.heartbeat)

    async def _return_held(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for owned in self._owned.values():
            await self._give_back(owned)

    def _abandon(self, owned_queues: list[Owned], what: str) -> None:
        """Giving back ran out of time: say what may stay in flight and who will return it."""
        for owned in owned_queues:
            self.log.warning('%r: %s gave up after %.1fs; queue %s: %d messages taken here are '
                             'unsettled (%d acks unsent); whatever stays in flight goes back to the queue when a '
                             'consumer of it finds this heartbeat expired (%.0fs after the last beat)', self,
                             what, self.close_timeout, owned.keys.queue, sum(owned.held.values()), len(owned.acks),
                             self.heartbeat)

