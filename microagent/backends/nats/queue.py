"""JetStream work queues: ``NATSQueueTransport``, the ``BrokerTransport`` of the NATS backend.

Layout on the server, for a queue ``mail.out`` (``t`` = ``subject_token(name)``, here ``mail_Dout``;
the names are in ``layout``):

* stream ``MQ-t`` on subject ``mq.t``, work-queue retention, file storage: the queue. One durable
  pull consumer ``microagent`` shared by every process consuming it (so they share the work), with
  explicit acks and ``ack_wait`` (a message a process took and never settled, because it was
  killed, comes back after that long, marked ``redelivered``);
* stream ``MQ-t-later`` on ``mq.t.later``: delayed sends and retries, each with its due time in
  ``x-due``. A consumer of the queue moves due messages to ``mq.t`` and NAKs the others with the
  time left as delay, so the server holds them, not a timer of ours (see ``later``); the attempt
  count travels in ``x-attempt``, so a release or a crash never counts as an attempt;
* stream ``MQ-t-dead`` on ``mq.t.dead`` (limits retention): dead letters with ``x-reason``,
  ``x-attempt`` and ``x-dead-at``, read by sequence, deleted one by one when requeued or purged;
* stream ``MQ-bindings`` (one per server, one message per subject ``mq.bindings.{exchange}.{t}``):
  exchange bindings. ``publish`` reads them and routes with ``queue.topics_match``, the matching
  the memory and Redis backends use (``#`` matches zero words too, which NATS ``>`` never does),
  then publishes to each matched queue.

A first ``put`` publishes with ``Nats-Msg-Id`` = ``message-id``, so a send repeated after a lost
acknowledgement is stored once. Moves (retries, releases, requeued dead letters) carry no
``Nats-Msg-Id``: within the server's duplicate window a message that comes back with its id must
not be dropped as a duplicate of itself. A release publishes the message again with
``x-redelivered`` and acks the taken copy (JetStream cannot put it back at the head; a NAK would
leave it counted among the taken ones), so a released message goes to the tail. The headers are
in ``headers``; the pipelined publishes in ``acks``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from microagent.backends.nats.acks import Acks
from microagent.backends.nats.headers import (
    ATTEMPT_HEADER,
    DEAD_AT_HEADER,
    PRIORITY_HEADER,
    REASON_HEADER,
    REDELIVERED_HEADER,
    Headers,
    attempt,
    dead_letter,
    envelope_headers,
    one_line,
    stored,
    with_id,
)
from microagent.backends.nats.later import due, move, move_once
from microagent.backends.nats.layout import BINDINGS_STREAM, BINDINGS_SUBJECT, CONSUMER, Layout, binding_subject
from microagent.backends.nats.levels import counts, fetch_levels, pending, priorities_of, subject_of
from microagent.backends.nats.limits import ROOM, check_sizes, fitting_reason
from microagent.backends.nats.link import Link
from microagent.backends.nats.pull import Puller, times_delivered
from microagent.errors import ConnectionFailed, QueueNotFound
from microagent.message import Envelope
from microagent.queue import Queue, topics_match
from microagent.transport import DeadLetter, Delivery, QueueDepth, SelectDeadLetter

__all__ = ['NATSQueueTransport']

MAX_REASON = 4096
_STREAM_EXISTS = 10058  # "stream name already in use"
_CONSUMER_EXISTS = (10013, 10148)  # "consumer name already in use", "consumer already exists"


@dataclass(eq=False)
class _Token:
    """A fetched message until it is settled, once."""

    msg: Msg
    settled: bool = False



class NATSQueueTransport:
    """Durable JetStream work queues with pull consumers, a holding stream for delays and retries,
    and a dead-letter stream per queue (see the module docstring for the layout)."""

    #: what a cancelled fetch received later waits in the subscription: the next fetch takes it, and
    #: ``stop_consuming`` gives it back
    fetch_cancel_safe = True
    #: priority levels: a stream per level above 0 (``levels``), fetched highest first
    send_options: frozenset[str] = frozenset(('priority',))
    unsettled_fate = 'it stays unacknowledged; JetStream delivers it again after ack_wait'

    def __init__(self, dsn: str, log: logging.Logger | None = None, *, ack_wait: float = 30.0,
                 name: str = '', connect_timeout: float = 5.0) -> None:
        self.uid = uuid.uuid4().hex
        self.log = log or logging.getLogger('microagent.broker')
        self.ack_wait = ack_wait
        self._link = Link(dsn, self.log, name or f'microagent broker {self.uid[:8]}',
                          connect_timeout=connect_timeout)
        self._acks = Acks(self._link)
        self._declared: set[str] = set()
        self._pulls: dict[str, Puller] = {}
        self._level_pulls: dict[str, list[Puller]] = {}  # 0 first
        self._pulls_generation = 0  # the link's client the pull subscriptions are bound on
        #: the engine's limit on a whole message (the NATSBroker sets it); the server's max_payload too
        self.max_message_size: int | None = None
        self._movers: dict[str, asyncio.Task[None]] = {}
        self._taken: set[_Token] = set()
        self._keeper: asyncio.Task[None] | None = None
        self.created_streams: set[str] = set()  # every stream this transport declared, for teardown
        self.binding_subjects: set[str] = set()  # and every binding it stored

    def rename(self, name: str) -> None:
        """Name the connection as the server shows it (the engine's id, so operators find it)."""
        self._link.name = name

    # declarations

    async def _stream(self, js: JetStreamContext, name: str, subject: str, retention: RetentionPolicy,
                      per_subject: int = -1) -> None:
        config = StreamConfig(name=name, subjects=[subject], retention=retention, storage=StorageType.FILE,
                              max_msgs_per_subject=per_subject)
        try:
            await js.add_stream(config)
        except APIError as exc:
            if exc.err_code != _STREAM_EXISTS:
                raise
        self.created_streams.add(name)

    async def _consumer(self, js: JetStreamContext, stream: str) -> None:
        config = ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
                                max_deliver=-1, max_ack_pending=-1)
        try:
            await js.add_consumer(stream, config)
        except APIError as exc:  # another process made it, maybe with another ack_wait: use it
            if exc.err_code not in _CONSUMER_EXISTS:
                raise

    async def declare(self, queue: Queue[Any]) -> None:
        if queue.name in self._declared:
            return
        js = await self._link.jetstream()
        layout = Layout.of(queue.name)
        await self._stream(js, layout.stream, layout.subject, RetentionPolicy.WORK_QUEUE)
        await self._stream(js, layout.later_stream, layout.later_subject, RetentionPolicy.WORK_QUEUE)
        await self._stream(js, layout.dead_stream, layout.dead_subject, RetentionPolicy.LIMITS)
        for level in range(1, queue.priorities or 1):
            await self._stream(js, layout.level_stream(level), layout.level_subject(level), RetentionPolicy.WORK_QUEUE)
        exchange = queue.exchange_declaration
        if exchange is not None:
            await self._stream(js, BINDINGS_STREAM, f'{BINDINGS_SUBJECT}.>', RetentionPolicy.LIMITS, per_subject=1)
            topics = list(queue.topics) if exchange.type == 'topic' else []
            binding = json.dumps({'queue': queue.name, 'type': exchange.type, 'topics': topics}).encode()
            subject = binding_subject(exchange.name, queue.name)
            await self._acks.publish([(subject, binding, None)],
                                     f'binding of queue {queue.name!r} to exchange {exchange.name!r}')
            self.binding_subjects.add(subject)
        self._declared.add(queue.name)

    # sending

    async def _check_sizes(self, what: str, items: Sequence[tuple[str, bytes, Headers | None]]) -> None:
        """Refuse, before anything is sent, a message the server would not take whole (see ``limits``)."""
        client = await self._link.client()
        check_sizes(what, ((body, headers) for _, body, headers in items), self.max_message_size,
                    client.max_payload, ROOM)

    async def put(self, queue: Queue[Any], envelopes: Sequence[Envelope], *, delay: float = 0.0,
                  **options: Any) -> None:
        await self.declare(queue)
        layout = Layout.of(queue.name)
        level: int = options.get('priority', 0)
        mark = {PRIORITY_HEADER: str(level)} if level else {}
        if delay > 0:
            due_at = due(delay)
            items = [(layout.later_subject, body, with_id({**(headers or {}), **due_at, **mark}))
                     for body, headers in envelopes]
        else:
            subject = layout.level_subject(level)
            items = [(subject, body, with_id({**headers, **mark} if headers and mark else headers or mark or None))
                     for body, headers in envelopes]
        await self._check_sizes(f'queue {queue.name!r}', items)
        await self._acks.publish(items, f'queue {queue.name!r}')

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        """Route by the bindings on the server; publish to each matched queue. Not atomic across
        queues, but a repeated publish (the same ``message-id``) is stored once per queue."""
        targets = [name for name, topics in await self._bindings(exchange) if topics_match(topics, routing_key)]
        if not targets:
            raise QueueNotFound(f'No queue is bound to exchange {exchange!r} for key {routing_key!r}')
        headers = with_id(envelope.headers)
        await self._check_sizes(f'exchange {exchange!r}', [('', envelope.body, headers)])
        await self._acks.publish([(Layout.of(name).subject, envelope.body, headers) for name in targets],
                                 f'exchange {exchange!r}')
        return len(targets)

    async def _bindings(self, exchange: str) -> list[tuple[str, tuple[str, ...]]]:
        js = await self._link.jetstream()
        try:
            info = await js.stream_info(BINDINGS_STREAM, subjects_filter=binding_subject(exchange))
        except NotFoundError:
            return []
        bound: list[tuple[str, tuple[str, ...]]] = []
        for subject in info.state.subjects or {}:
            stored = await js.get_msg(BINDINGS_STREAM, subject=subject)
            binding = json.loads(stored.data or b'{}')
            bound.append((str(binding['queue']), tuple(binding['topics'])))
        return bound

    # consuming

    async def _puller(self, stream: str) -> Puller:
        puller = Puller(await self._link.client(), stream, CONSUMER)
        await puller.start()
        return puller

    async def _pull(self, queue: Queue[Any]) -> Puller:
        if self._pulls_generation != self._link.generation:  # a new client: bound on the old one, gone
            self._pulls_generation = self._link.generation
            self._pulls.clear()
        pull = self._pulls.get(queue.name)
        if pull is None:
            await self.declare(queue)
            js = await self._link.jetstream()
            layout = Layout.of(queue.name)
            await self._consumer(js, layout.stream)
            await self._consumer(js, layout.later_stream)
            pull = self._pulls[queue.name] = await self._puller(layout.stream)
            levels = [pull]
            for level in range(1, queue.priorities or 1):
                await self._consumer(js, layout.level_stream(level))
                levels.append(await self._puller(layout.level_stream(level)))
            self._level_pulls[queue.name] = levels
        if queue.name not in self._movers:
            self._movers[queue.name] = asyncio.create_task(
                move(self._link, self._acks, self.log, queue.name, queue.priorities), name=f'nats-mover:{queue.name}')
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_taken(), name='nats-in-progress')
        return pull

    async def consume(self, queue: Queue[Any], concurrency: int) -> None:
        if queue.name not in self._movers:  # what came due while nobody consumed, before the first fetch
            await self.declare(queue)
            layout = Layout.of(queue.name)
            await self._consumer(await self._link.jetstream(), layout.later_stream)
            await move_once(self._link, self._acks, layout, queue.priorities)
        await self._pull(queue)

    async def stop_consuming(self, queue: Queue[Any]) -> None:
        mover = self._movers.pop(queue.name, None)
        if mover is not None:
            mover.cancel()
            await asyncio.gather(mover, return_exceptions=True)
        first = self._pulls.pop(queue.name, None)
        for pull in self._level_pulls.pop(queue.name, None) or ([first] if first is not None else []):
            try:
                await pull.stop()
                # released like deliveries: stored again at the tail, so ``length`` counts them
                await self.release(queue, [self._delivery(msg) for msg in pull.left()])
            except nats.errors.Error:
                pass  # the connection is gone: the server delivers them again after ack_wait

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery[_Token]]:
        pull = await self._pull(queue)
        if queue.priorities:
            msgs = await fetch_levels(await self._link.jetstream(), Layout.of(queue.name),
                                      self._level_pulls[queue.name], count, timeout)
        else:
            msgs = await pull.fetch(batch=max(count, 1), timeout=max(timeout, 0.01))
        if not msgs and not (await self._link.client()).is_connected:  # a failure, for the engine to log
            raise ConnectionFailed(f'{self._link.name}: not connected to NATS')
        return [self._delivery(msg) for msg in msgs]

    def _delivery(self, msg: Msg) -> Delivery[_Token]:
        headers = msg.headers
        token = _Token(msg)
        self._taken.add(token)
        redelivered = times_delivered(msg) > 1 or bool(headers and REDELIVERED_HEADER in headers)
        return Delivery(Envelope(msg.data, envelope_headers(headers) or None), token, attempt(headers),
                        redelivered)

    async def _keep_taken(self) -> None:
        """Tell the server that taken messages are still being handled, so a long handler keeps its
        message; only a process that stopped (killed, cut off) lets ``ack_wait`` run out."""
        while True:
            await asyncio.sleep(max(self.ack_wait / 3, 0.05))
            for token in list(self._taken):
                if not token.settled:
                    try:
                        await token.msg.in_progress()
                    except Exception:  # the connection is gone: the server redelivers after ack_wait
                        break

    # settling

    async def _settle(self, token: _Token) -> None:
        if not token.settled:
            token.settled = True
            self._taken.discard(token)
            # on the current client: the one that fetched it may be gone (the ack subject stays valid)
            await (await self._link.client()).publish(token.msg.reply)

    async def ack(self, queue: Queue[Any], delivery: Delivery[_Token]) -> None:
        await self._settle(delivery.token)

    async def _resend(self, queue: Queue[Any], delivery: Delivery[_Token], subject: str, extra: Headers) -> None:
        """Store the message again (``extra`` over its headers), then ack the taken copy; a failure
        leaves it taken, for the engine to try again or release."""
        if delivery.token.settled:
            return
        headers = {**stored(delivery.token.msg.headers), **extra}
        await self._acks.publish([(subject, delivery.envelope.body, headers)], f'queue {queue.name!r}')
        await self._settle(delivery.token)

    async def retry(self, queue: Queue[Any], delivery: Delivery[_Token], delay: float, reason: str) -> None:
        layout = Layout.of(queue.name)
        extra = {ATTEMPT_HEADER: str(delivery.attempt + 1)}
        if delay > 0:
            await self._resend(queue, delivery, layout.later_subject, {**extra, **due(delay)})
        else:
            await self._resend(queue, delivery, subject_of(layout, delivery.token.msg.headers, queue.priorities),
                               extra)

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery[_Token], reason: str) -> None:
        await self.declare(queue)
        extra = {ATTEMPT_HEADER: str(delivery.attempt), DEAD_AT_HEADER: repr(time.time())}
        max_payload = (await self._link.client()).max_payload
        extra[REASON_HEADER] = fitting_reason(one_line(reason[:MAX_REASON]), delivery.envelope.body,
                                              {**stored(delivery.token.msg.headers), **extra}, REASON_HEADER,
                                              max_payload)
        await self._resend(queue, delivery, Layout.of(queue.name).dead_subject, extra)

    async def release(self, queue: Queue[Any], deliveries: Sequence[Delivery[_Token]]) -> None:
        layout = Layout.of(queue.name)
        for delivery in deliveries:
            subject = subject_of(layout, delivery.token.msg.headers, queue.priorities)
            await self._resend(queue, delivery, subject, {REDELIVERED_HEADER: '1'})

    # inspecting

    async def _info_messages(self, stream: str) -> int | None:
        js = await self._link.jetstream()
        try:
            return int((await js.stream_info(stream)).state.messages)
        except NotFoundError:
            return None

    async def length(self, name: str) -> int:
        """Stored in the queue's stream and not yet delivered to a consumer: the consumer's own
        count, since the server drops an acked message from the stream a moment after the ack."""
        layout = Layout.of(name)
        if priorities := priorities_of(name):
            return sum(await pending(await self._link.jetstream(), layout, priorities))
        stored = await self._info_messages(layout.stream)
        if not stored:
            return 0
        js = await self._link.jetstream()
        try:
            return int((await js.consumer_info(layout.stream, CONSUMER)).num_pending)
        except NotFoundError:
            return stored

    async def depth(self, name: str) -> QueueDepth:
        """All from the server: ready is the shared consumer's pending count, in flight its
        ack-pending count (taken by any process, not settled), delayed what the ``later`` stream
        holds (retries and delayed sends, due or not, until moved to the queue)."""
        layout = Layout.of(name)
        js = await self._link.jetstream()
        delayed = await self._info_messages(layout.later_stream) or 0
        if priorities := priorities_of(name):
            levels = await counts(js, layout, priorities)
            return QueueDepth(sum(ready for ready, _ in levels), delayed, sum(taken for _, taken in levels))
        stored = await self._info_messages(layout.stream)
        if not stored:
            return QueueDepth(0, delayed, 0)
        try:
            info = await js.consumer_info(layout.stream, CONSUMER)
        except NotFoundError:
            return QueueDepth(stored, delayed, 0)
        return QueueDepth(int(info.num_pending), delayed, int(info.num_ack_pending))

    async def dead_letter_count(self, name: str) -> int:
        return await self._info_messages(Layout.of(name).dead_stream) or 0

    async def _letters(self, name: str, limit: int | None = None) -> list[tuple[int, DeadLetter, str]]:
        """(sequence, letter, the subject of its level) of the oldest ``limit`` dead letters (all when None)."""
        layout, priorities = Layout.of(name), priorities_of(name)
        js = await self._link.jetstream()
        letters: list[tuple[int, DeadLetter, str]] = []
        seq = 1
        while limit is None or len(letters) < limit:
            try:
                stored = await js.get_msg(layout.dead_stream, seq=seq, subject=layout.dead_subject, next=True)
            except NotFoundError:
                break
            letters.append((stored.seq or seq, dead_letter(name, stored.data or b'', stored.headers),
                            subject_of(layout, stored.headers, priorities)))

            seq = (stored.seq or seq) + 1
        return letters

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        return [letter for _, letter, _ in await self._letters(name, limit)]

    async def requeue_dead_letters(self, name: str) -> int:
        return await self.remove_dead_letters(name, lambda position, letter: True, requeue=True)

    async def remove_dead_letters(self, name: str, select: SelectDeadLetter, *, requeue: bool) -> int:
        """Requeue (when asked) the picked letters as attempt 1 with their headers, then delete them."""
        layout = Layout.of(name)
        picked = [(seq, letter, subject) for position, (seq, letter, subject) in enumerate(await self._letters(name))
                  if select(position, letter)]
        if requeue and picked:
            items = [(subject, letter.body, _level_mark(letter.envelope.headers, subject, layout) or None)
                     for _, letter, subject in picked]
            await self._acks.publish(items, f'queue {name!r}')
        js = await self._link.jetstream()
        for seq, _, _ in picked:
            await js.delete_msg(layout.dead_stream, seq)
        return len(picked)

    async def exists(self, name: str) -> bool:
        """Declared on the server: the queue's stream or its dead letters."""
        layout = Layout.of(name)
        return (await self._info_messages(layout.stream) is not None
                or await self._info_messages(layout.dead_stream) is not None)

    async def ping(self) -> None:
        """One round trip to the server; raises when it is unreachable."""
        await self._link.ping()

    async def close(self) -> None:
        tasks = [*self._movers.values(), *([self._keeper] if self._keeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._movers.clear()
        self._keeper = None
        for token in list(self._taken):  # taken and not settled: back to the queue now
            token.settled = True
            try:
                await token.msg.nak()
            except Exception:
                break  # the connection is gone: the server redelivers after ack_wait
        self._taken.clear()
        self._pulls.clear()
        self._acks.reset()
        self._declared.clear()
        await self._link.close()


def _level_mark(headers: Mapping[str, str] | None, subject: str, layout: Layout) -> dict[str, str]:
    """A requeued letter's headers, with ``x-priority`` again when it goes back to a level above 0."""
    level = subject.removeprefix(f'{layout.subject}.p')
    return {**(headers or {}), PRIORITY_HEADER: level} if subject != layout.subject else dict(headers or {})

