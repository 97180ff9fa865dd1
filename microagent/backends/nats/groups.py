"""Signal groups on JetStream: ``NATSGroupTransport``, the ``BrokerTransport`` over the stores of a
NATS bus's groups (the send side, ``GroupIndex``, is in ``groupindex``).

Layout on the server, for bus prefix ``P`` and signal ``n`` (``tp``, ``tn``, ``tg`` = ``name_token``
of the prefix, the signal's name and the group's name: ``[A-Za-z0-9_]`` only, injective):

* stream ``SG-tp-tn`` on the one subject ``sg.tp.tn`` (limits retention, file storage, discard old,
  ``max_msgs`` = ``GroupOptions.max_length``, ``max_age`` = ``GroupOptions.max_age``): what the
  signal's groups share. It is created by the first member of the first group of the signal and
  never shrunk by a later one (a member asking for more raises the limits);
* one durable pull consumer ``tg`` on it per group (explicit acks, ``ack_wait`` =
  ``visibility_timeout``, deliver policy ``new`` for a group that starts from 'now', ``all`` for
  'first': everything the stream retains). The members of a group share it, so each signal goes to
  one of them. A live member sends ``+WPI`` (in progress) for what it holds every third of the
  visibility timeout; what a dead member held comes back after ``ack_wait``;
* stream ``SG-tp-tn-dead`` on ``sg.tp.tn.dead.*``: dead letters, ``sg.tp.tn.dead.tg`` per group.

Retries are NAKs with the backoff as delay, so the server holds them; ``attempt`` is the
consumer's delivery count (``num_delivered``: a release or a member's death counts as a delivery
too). A dead letter is stored with its reason, then the delivery is terminated (``+TERM``). A
requeued letter goes back to the signal's stream with ``x-group`` = its group: the other groups'
consumers see it too and ack it unseen (one stream serves every group; NATS 2.9 has no consumers
with several filter subjects).

Sends: a bus publishes a signal on core NATS as always (broadcast receivers, plain subscribers), and
also to ``sg.tp.tn`` through JetStream, with ``x-sender`` and ``Nats-Msg-Id`` = ``message-id``,
awaiting the stream's acknowledgement, but only while the signal has a group. The bus knows that
without a round trip per send: at its first send on a connection (and after a reconnection) it
lists the streams ``SG-tp-*`` once, and it follows ``$JS.EVENT.ADVISORY.STREAM.CREATED/DELETED``.
A send of a grouped signal that returned was stored (the "no loss of acknowledged sends" of a
restart); a send the stream could not acknowledge raises (the broadcast copy went out; a repeated
send is stored once within the stream's duplicate window).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError

from microagent.backends.nats.acks import Acks
from microagent.backends.nats.groupindex import GroupIndex, GroupLayout
from microagent.backends.nats.headers import (
    ATTEMPT_HEADER,
    DEAD_AT_HEADER,
    GROUP_HEADER,
    OWN_HEADERS,
    REASON_HEADER,
    dead_letter,
    one_line,
    server_header,
    stored,
)
from microagent.backends.nats.limits import fitting_reason
from microagent.backends.nats.link import Link
from microagent.backends.nats.pull import Puller, times_delivered
from microagent.errors import ConnectionFailed, QueueNotFound
from microagent.groups import SENDER, GroupQueue, split_store_name
from microagent.message import GROUP_SENDER, Envelope
from microagent.queue import Queue
from microagent.transport import DeadLetter, Delivery, QueueDepth, SelectDeadLetter

__all__ = ['NATSGroupTransport']

MAX_SENDER = 1024  # characters of a stored sender shown to a handler
_HIDDEN = OWN_HEADERS | {GROUP_SENDER}  # headers of a stored signal that are not the envelope's
MAX_REASON = 4096
_STREAM_EXISTS = 10058
_CONSUMER_EXISTS = (10013, 10148)


@dataclass(eq=False)
class _Token:
    """A fetched message until it is settled, once."""

    msg: Msg
    store: str
    settled: bool = False


class NATSGroupTransport:
    """The stores of a NATS bus's signal groups: a stream per signal, a durable pull consumer per
    group (see the module docstring). It shares the bus's connection."""

    fetch_cancel_safe = True
    send_options: frozenset[str] = frozenset()
    unsettled_fate = 'it stays unacknowledged; JetStream gives it to another member after the visibility timeout'

    def __init__(self, link: Link, prefix: str, index: GroupIndex, log: logging.Logger) -> None:
        self.prefix = prefix
        self.log = log
        self.index = index  # the bus's: a store declared here makes the bus's sends reach it at once
        self._link = link
        self._acks = Acks(self._link)
        self._stores: dict[str, GroupQueue] = {}
        self._pulls: dict[str, Puller] = {}
        self._pulls_generation = 0
        self._taken: set[_Token] = set()
        self._delayed: Counter[str] = Counter()  # retries this process NAKed with a delay, not yet due
        self._timers: set[asyncio.TimerHandle] = set()
        self._keeper: asyncio.Task[None] | None = None
        self._keep_every = 20.0

    def _layout(self, name: str) -> GroupLayout:
        signal, group = split_store_name(name)
        return GroupLayout.of(self.prefix, signal, group)

    # declarations

    async def declare(self, queue: Queue[Any]) -> None:
        assert isinstance(queue, GroupQueue)
        if queue.name in self._stores:
            return
        layout = GroupLayout.of(self.prefix, queue.signal.name, queue.group)
        options = queue.options
        js = await self._link.jetstream()
        config = StreamConfig(name=layout.stream, subjects=[layout.subject], retention=RetentionPolicy.LIMITS,
                              storage=StorageType.FILE, discard=DiscardPolicy.OLD, max_msgs=options.max_length,
                              max_age=options.max_age, duplicate_window=min(120.0, options.max_age))
        try:
            await js.add_stream(config)
        except APIError as exc:
            if exc.err_code != _STREAM_EXISTS:
                raise
            await self._raise_limits(js, config)
        try:
            await js.add_stream(StreamConfig(name=layout.dead_stream, subjects=[layout.dead_subjects],
                                             retention=RetentionPolicy.LIMITS, storage=StorageType.FILE))
        except APIError as exc:
            if exc.err_code != _STREAM_EXISTS:
                raise
        policy = DeliverPolicy.ALL if queue.start == 'first' else DeliverPolicy.NEW
        consumer = ConsumerConfig(durable_name=layout.consumer, ack_policy=AckPolicy.EXPLICIT,
                                  ack_wait=options.visibility_timeout, max_deliver=-1, max_ack_pending=-1,
                                  deliver_policy=policy, filter_subject=layout.subject)
        try:
            info = await js.add_consumer(layout.stream, consumer)
        except APIError as exc:  # the group exists (its start and visibility timeout stay as made)
            if exc.err_code not in _CONSUMER_EXISTS:
                raise
            info = await js.consumer_info(layout.stream, layout.consumer)
        self.index.streams.add(layout.stream)
        self._stores[queue.name] = queue
        # what this member holds is kept within the group's own visibility timeout
        ack_wait = info.config.ack_wait or options.visibility_timeout
        self._keep_every = min(self._keep_every, max(ack_wait / 3, 0.05))

    async def _raise_limits(self, js: JetStreamContext, config: StreamConfig) -> None:
        """The stream exists with other settings: raise its limits to these where they are lower."""
        current = (await js.stream_info(config.name or '')).config
        wanted_msgs, wanted_age = config.max_msgs or 0, config.max_age or 0.0
        have_msgs, have_age = current.max_msgs or -1, current.max_age or 0.0
        more_msgs = have_msgs != -1 and have_msgs < wanted_msgs
        more_age = have_age > 0 and have_age < wanted_age
        if more_msgs or more_age:
            current.max_msgs = max(have_msgs, wanted_msgs) if have_msgs != -1 else -1
            current.max_age = max(have_age, wanted_age) if have_age > 0 else 0.0
            await js.update_stream(current)

    # consuming

    async def _pull(self, queue: Queue[Any]) -> Puller:
        if self._pulls_generation != self._link.generation:
            self._pulls_generation = self._link.generation
            self._pulls.clear()
        pull = self._pulls.get(queue.name)
        if pull is None:
            await self.declare(queue)
            layout = self._layout(queue.name)
            pull = Puller(await self._link.client(), layout.stream, layout.consumer)
            await pull.start()
            self._pulls[queue.name] = pull
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_taken(), name='nats-groups-in-progress')
        return pull

    async def consume(self, queue: Queue[Any], concurrency: int) -> None:
        await self._pull(queue)

    async def stop_consuming(self, queue: Queue[Any]) -> None:
        pull = self._pulls.pop(queue.name, None)
        if pull is not None:  # what it fetched ahead and never handed out: back to the group now
            with contextlib.suppress(nats.errors.Error):  # the connection is gone: the server redelivers
                await pull.close()

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery[_Token]]:
        pull = await self._pull(queue)
        msgs = await pull.fetch(batch=max(count, 1), timeout=max(timeout, 0.01))
        if not msgs and not (await self._link.client()).is_connected:
            raise ConnectionFailed(f'{self._link.name}: not connected to NATS')
        assert isinstance(queue, GroupQueue)
        deliveries = []
        for msg in msgs:
            target = (msg.headers or {}).get(GROUP_HEADER)
            if target is not None and target != queue.group:  # a letter requeued to another group
                await (await self._link.client()).publish(msg.reply, b'+ACK')
            else:
                deliveries.append(self._delivery(queue, msg))
        return deliveries

    def _delivery(self, queue: GroupQueue, msg: Msg) -> Delivery[_Token]:
        headers = msg.headers
        delivered = times_delivered(msg)
        token = _Token(msg, queue.name)
        self._taken.add(token)
        if headers:
            sender = headers.get(GROUP_SENDER, '')[:MAX_SENDER]
            shown = {k: v for k, v in headers.items() if k not in _HIDDEN and not server_header(k)}
        else:
            sender, shown = '', None
        return Delivery(Envelope(msg.data, shown or None), token, delivered, delivered > 1, {SENDER: sender})

    async def _keep_taken(self) -> None:
        """A live member keeps what it holds: ``+WPI`` for each, every third of the visibility timeout."""
        while True:
            await asyncio.sleep(self._keep_every)
            client = await self._link.client()
            for token in list(self._taken):
                if not token.settled:
                    try:
                        await client.publish(token.msg.reply, b'+WPI')
                    except Exception:  # the connection is gone: the server redelivers after ack_wait
                        break

    # settling

    async def _settle(self, token: _Token, payload: bytes) -> None:
        if not token.settled:
            token.settled = True
            self._taken.discard(token)
            await (await self._link.client()).publish(token.msg.reply, payload)

    async def ack(self, queue: Queue[Any], delivery: Delivery[_Token]) -> None:
        await self._settle(delivery.token, b'+ACK')

    async def retry(self, queue: Queue[Any], delivery: Delivery[_Token], delay: float, reason: str) -> None:
        if delivery.token.settled:
            return
        if delay > 0:
            await self._settle(delivery.token, b'-NAK ' + json.dumps({'delay': int(delay * 1e9)}).encode())
            self._delayed[queue.name] += 1
            loop = asyncio.get_running_loop()

            def due() -> None:
                self._timers.discard(handle)
                self._delayed[queue.name] -= 1
            handle = loop.call_later(delay, due)
            self._timers.add(handle)
        else:
            await self._settle(delivery.token, b'-NAK')

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery[_Token], reason: str) -> None:
        token = delivery.token
        if token.settled:
            return
        layout = self._layout(queue.name)
        headers = {k: v for k, v in stored(token.msg.headers).items() if k != GROUP_HEADER}
        headers.update({ATTEMPT_HEADER: str(delivery.attempt), DEAD_AT_HEADER: repr(time.time())})
        max_payload = (await self._link.client()).max_payload
        headers[REASON_HEADER] = fitting_reason(one_line(reason[:MAX_REASON]), delivery.envelope.body, headers,
                                                REASON_HEADER, max_payload)
        await self._acks.publish([(layout.dead_subject, delivery.envelope.body, headers)],
                                 f'dead letters of group {queue.name!r}')
        await self._settle(token, b'+TERM')

    async def release(self, queue: Queue[Any], deliveries: Sequence[Delivery[_Token]]) -> None:
        for delivery in deliveries:
            await self._settle(delivery.token, b'-NAK')

    # inspecting

    async def _consumer(self, name: str) -> Any:
        layout = self._layout(name)
        js = await self._link.jetstream()
        try:
            return await js.consumer_info(layout.stream, layout.consumer)
        except NotFoundError:
            return None

    async def length(self, name: str) -> int:
        """Signals the group has not taken yet: its consumer's pending count (its lag)."""
        info = await self._consumer(name)
        return int(info.num_pending) if info is not None else 0

    async def depth(self, name: str) -> QueueDepth:
        """Ready: the consumer's pending count (the group's lag); in flight: its unacknowledged
        deliveries, less the retries this process NAKed with a delay, which are ``delayed`` (the
        server counts them unacknowledged too; other members' delayed retries count as in flight)."""
        info = await self._consumer(name)
        if info is None:
            return QueueDepth(0, 0, 0)
        delayed = min(self._delayed[name], int(info.num_ack_pending))
        return QueueDepth(int(info.num_pending), delayed, int(info.num_ack_pending) - delayed)

    async def _letters(self, name: str, limit: int | None = None) -> list[tuple[int, DeadLetter]]:
        layout = self._layout(name)
        js = await self._link.jetstream()
        letters: list[tuple[int, DeadLetter]] = []
        seq = 1
        while limit is None or len(letters) < limit:
            try:
                msg = await js.get_msg(layout.dead_stream, seq=seq, subject=layout.dead_subject, next=True)
            except NotFoundError:
                break
            letters.append((msg.seq or seq, dead_letter(name, msg.data or b'', msg.headers)))
            seq = (msg.seq or seq) + 1
        return letters

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        return [letter for _, letter in await self._letters(name, limit)]

    async def dead_letter_count(self, name: str) -> int:
        layout = self._layout(name)
        js = await self._link.jetstream()
        try:
            info = await js.stream_info(layout.dead_stream, subjects_filter=layout.dead_subject)
        except NotFoundError:
            return 0
        return int((info.state.subjects or {}).get(layout.dead_subject, 0))

    async def requeue_dead_letters(self, name: str) -> int:
        return await self.remove_dead_letters(name, lambda position, letter: True, requeue=True)

    async def remove_dead_letters(self, name: str, select: SelectDeadLetter, *, requeue: bool) -> int:
        """Requeue (when asked) the picked letters to their group alone, as attempt 1, then delete them."""
        layout = self._layout(name)
        _, group = split_store_name(name)
        picked = [(seq, letter) for position, (seq, letter) in enumerate(await self._letters(name))
                  if select(position, letter)]
        if requeue and picked:
            items = [(layout.subject, letter.body, {**(letter.envelope.headers or {}), GROUP_HEADER: group})
                     for _, letter in picked]
            await self._acks.publish(items, f'group {name!r}')
        js = await self._link.jetstream()
        for seq, _ in picked:
            await js.delete_msg(layout.dead_stream, seq)
        return len(picked)

    async def exists(self, name: str) -> bool:
        """The group's consumer is on the server, or it has dead letters."""
        return await self._consumer(name) is not None or await self.dead_letter_count(name) > 0

    async def put(self, queue: Queue[Any], envelopes: Sequence[Envelope], *, delay: float = 0.0,
                  **options: Any) -> None:
        raise QueueNotFound(f'{queue.name!r} is a signal group: signals reach it through the bus')

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        raise QueueNotFound('signal groups are bound to no exchange')

    async def ping(self) -> None:
        await self._link.ping()

    async def close(self) -> None:
        """Hand back what this process holds (NAK: another member takes it now); the bus closes the connection."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        for timer in list(self._timers):
            timer.cancel()
        self._timers.clear()
        for token in list(self._taken):
            try:
                await self._settle(token, b'-NAK')
            except Exception:
                break  # the connection is gone: the server redelivers after ack_wait
        self._taken.clear()
        self._pulls.clear()
        self._stores.clear()
        self._acks.reset()

