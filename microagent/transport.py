"""The transport protocols: all a backend implements, and all the engines may ask of one.

The bus and broker engines (validation, RPC, fan-out, retries with backoff, dead letters,
concurrency, graceful stop, middlewares) are written once against these two protocols. A backend is
one module that moves envelopes (``message.Envelope``: the 1.x JSON body plus headers) on its wire;
it never imports the engine, and the engine never knows which backend it drives. Every method below
is one that a Redis, a RabbitMQ, a NATS and an in-memory backend can implement without knowing the
engine. Common rules:

* Transports reconnect by themselves; subscriptions and consumers resume after a reconnection.
  A method that cannot reach its server raises (``ConnectionError``, ``OSError`` or the client's
  error); the engine logs it and backs off. Nothing is dropped silently.
* ``deliver`` callbacks are the engine's. The transport awaits each one before it reads on, which is
  how the engine applies backpressure. They do not raise; should one ever do, the transport logs it
  and reads on (its reading loop never dies of it).
* Headers are carried unchanged (``message-id`` is kept across retries and requeues). A transport's
  own bookkeeping beside them uses names ``message.is_reserved`` reserves (``x-attempt``, ...), which
  ``Message.from_headers`` leaves out of the user's headers.
* A bare 1.x body, with no headers, arrives as ``Envelope(body, None)``, or with the headers the
  transport can tell from its wire (``request-id`` and ``reply-to`` of a 1.x RPC channel).

How the backends map onto them (the 1.x constructors stay, as thin classes building a transport):

memory (``backends/memory.py``, the smallest example of both protocols)
    Bus: the hub maps signal names to subscribed transports; ``publish`` puts the envelope in each
    one's inbox (a deque) and a reader task, running while the inbox holds messages, awaits
    ``deliver``. ``reply_to`` is the transport's address in the hub; ``reply`` puts the answer in
    that transport's inbox.
    Broker: the hub's deques hold (envelope, attempt, redelivered); ``put(delay=)`` and ``retry`` use
    ``call_later``; ``release`` pushes to the front with ``redelivered``. ``declare`` records the
    exchange binding in the hub; ``publish`` routes by those bindings.

redis (``backends/redis/``)
    Bus: ``publish`` sends ``frame(body, headers)`` (with ``wire='1.x'`` the bare body) on
    ``{prefix}:{name}:{sender}``, ``#{request-id}`` appended for a request. ``subscribe``
    psubscribes ``{prefix}:{name}:*``; the reading loop ``unframe``s (a ``FrameError`` is logged with
    the channel) and awaits ``deliver``; a bare request gets ``request-id`` from the channel and
    ``reply-to`` = ``reply_to``. ``reply_to`` is ``{prefix}:response``: ``reply`` publishes on
    ``{reply_to}:{bus uid}#{request-id}`` as 1.x does, and ``receive_replies`` psubscribes ``{reply_to}:*``.
    Broker: ``put`` RPUSHes frames (1.x wire: bodies); ``put(delay=)`` adds to ``Q:delayed`` with a
    fresh attempt count. ``fetch`` unframes each message and dead-letters a ``FrameError`` at once with
    its reason. Attempts stay in ``Q:attempts`` (keyed by the stored bytes, unique per message now that
    a frame holds its id); ``redelivered`` marks messages put back by ``RELEASE`` or the orphan
    reclaim. ``Q:dead`` keeps the stored bytes, so a dead letter keeps its headers.

amqp (``backends/amqp/``)
    Bus: ``publish`` to the topic exchange ``{prefix}``, key ``{name}.{sender}``, the headers in the
    AMQP headers table (``message-id`` also as the ``message_id`` property); a request also sets the
    properties ``reply_to`` = ``reply_to`` (the bus's exclusive queue) and ``correlation_id`` =
    ``request-id``, as today, so 1.x peers answer it; incoming properties fill those two headers when
    a 1.x sender's table lacks them. ``reply`` publishes to the default exchange, key ``reply_to``.
    Broker: ``put`` publishes to the default exchange with the headers table; ``put(delay=)`` and
    ``retry`` go through the ``{q}.retry.{ms}`` TTL queues; the attempt stays in ``x-attempt``;
    ``redelivered`` is RabbitMQ's flag; ``dead_letter`` publishes to ``{q}.dead`` with ``x-reason``;
    ``release`` is ``basic.nack(requeue)``; the ``context`` is ``{'amqp': AMQPMeta}`` as today.

nats (``backends/nats/``)
    Bus: core NATS subjects ``{prefix}.{name}.{sender}`` with native headers; ``subscribe`` listens
    on ``{prefix}.{name}.>``; ``reply_to`` is an inbox subject of the transport, listened to by
    ``receive_replies``; ``reply`` publishes there.
    Broker: a JetStream work-queue stream per queue; ``put`` publishes with the headers and
    ``Nats-Msg-Id`` = ``message-id`` (server-side deduplication); ``fetch`` is a pull-consumer batch,
    the attempt and ``redelivered`` come from the message metadata (``num_delivered``);
    ``retry`` is ``nak(delay)``, ``release`` ``nak()``, ``ack`` ``ack()``; ``dead_letter`` publishes
    to a ``{q}.dead`` stream, then ``term()``; ``put(delay=)`` needs a holding stream the transport
    moves due messages from, where the server has no per-message delay.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from microagent.message import Envelope, Message

if TYPE_CHECKING:
    from microagent.queue import Queue

__all__ = ['BrokerTransport', 'BusTransport', 'DeadLetter', 'Deliver', 'DeliverReply', 'Delivery', 'QueueDepth']

TokenT = TypeVar('TokenT')

NO_CONTEXT: Mapping[str, object] = MappingProxyType({})

#: the bus engine's callback for one signal: ``(signal name, sender, envelope)``
Deliver = Callable[[str, str, Envelope], Awaitable[None]]
#: the bus engine's callback for one RPC answer; its headers hold ``request-id``
DeliverReply = Callable[[Envelope], Awaitable[None]]
#: picks dead letters: ``(position, 0 the oldest; the letter) -> take it``
SelectDeadLetter = Callable[[int, 'DeadLetter'], bool]


class Delivery(Generic[TokenT]):
    """One message fetched from a queue, owned by the transport that fetched it until it is settled,
    exactly once: acked, retried, dead-lettered or released.

    ``attempt`` counts deliveries from 1 (a retry adds one, a release does not); ``redelivered`` is
    True when the message came back unsettled (a crash, a lost connection, a release), so it may have
    been partly handled. ``token`` is the transport's own handle; ``context`` holds backend extras a
    handler may ask for by name (``amqp`` on RabbitMQ, as in 1.x)."""

    __slots__ = ('_message', 'attempt', 'context', 'envelope', 'redelivered', 'token')
    _message: Message | None

    def __init__(self, envelope: Envelope, token: TokenT, attempt: int = 1, redelivered: bool = False,
                 context: Mapping[str, object] = NO_CONTEXT) -> None:
        self.envelope = envelope
        self.token = token
        self.attempt = attempt
        self.redelivered = redelivered
        self.context = context

    def __repr__(self) -> str:
        again = ', redelivered' if self.redelivered else ''
        return f'<Delivery attempt {self.attempt}{again}: {self.envelope.body[:60]!r}>'

    def header(self, name: str) -> str | None:
        """One header as received, without reading the whole message."""
        headers = self.envelope.headers
        return headers.get(name) if headers else None

    @property
    def message(self) -> Message:
        """The ``Message`` of this delivery, read from its headers on first use (the engine makes
        the delivery the current message while its handler runs; most handlers never read it)."""
        try:
            message: Message | None = self._message
        except AttributeError:  # not set by __init__: it costs a store per message that few read
            message = None
        if message is None:
            message = self._message = Message.from_headers(self.envelope.headers, attempt=self.attempt,
                                                           redelivered=self.redelivered)
        return message


@dataclass(frozen=True)
class DeadLetter:
    """A message that was not handled: the envelope as it was sent, why, after how many attempts, when."""

    queue: str
    envelope: Envelope
    reason: str
    attempts: int
    time: float = field(default_factory=time.time)

    @property
    def body(self) -> bytes:
        return self.envelope.body

    def to_dict(self) -> dict[str, object]:
        headers = self.envelope.headers
        return {'queue': self.queue, 'body': self.body.decode('utf-8', 'replace'),
                'headers': dict(headers) if headers is not None else None,
                'reason': self.reason, 'attempts': self.attempts, 'time': self.time}


@dataclass(frozen=True)
class QueueDepth:
    """How much work a queue holds: ``ready`` to fetch now, ``delayed`` (retries and delayed sends
    not yet due) and ``in_flight`` (taken by a consumer, not settled yet).

    The queue's depth is ``ready + delayed``: what is still to be handled. A queue is settled when
    ``total`` is 0: nothing waits, nothing will come back from a retry, nothing is being handled."""

    ready: int
    delayed: int
    in_flight: int

    @property
    def depth(self) -> int:
        """Messages still to be handled: ready and delayed."""
        return self.ready + self.delayed

    @property
    def total(self) -> int:
        """Every message of the queue but its dead letters: 0 when the queue is settled."""
        return self.ready + self.delayed + self.in_flight

    def __str__(self) -> str:
        return f'{self.ready} ready, {self.delayed} delayed, {self.in_flight} in flight'


class BusTransport(Protocol):
    """Pub/sub of signals: at most once, to every subscriber, nothing kept for absent ones."""

    @property
    def reply_to(self) -> str:
        """This transport's address for RPC answers, which the engine puts in a request's
        ``reply-to`` header; the same for the transport's whole life."""
        ...

    async def publish(self, name: str, sender: str, envelope: Envelope) -> None:
        """Send the envelope to every subscriber of signal ``name``. A request carries the
        ``reply-to`` and ``request-id`` headers; a wire that addresses requests apart (1.x Redis
        channels, AMQP properties) reads them there."""
        ...

    async def subscribe(self, names: Collection[str], deliver: Deliver) -> None:
        """Deliver signals of ``names``, from any sender, to ``deliver`` (the same callback on every
        call; each call adds names). Returns once the server has the subscription, or raises."""
        ...

    async def receive_replies(self, deliver: DeliverReply) -> None:
        """Deliver RPC answers sent to ``reply_to`` to ``deliver``. The engine calls it once, before
        its first request; the transport may then start listening."""
        ...

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        """Send an RPC answer (a body ``{"Agent.method": value}``, headers with the request's
        ``request-id``) to the ``reply-to`` address of a request, which may be another bus's."""
        ...

    async def ping(self) -> None:
        """One cheap round trip to the server (a readiness probe); raises (``ConnectionError``,
        ``OSError`` or the client's error) when it does not answer or the subscriptions are not
        live at the moment. The engine bounds it with a timeout."""
        ...

    async def close(self) -> None:
        """Stop delivering and release connections; the transport may not be used afterwards."""
        ...


class BrokerTransport(Protocol[TokenT]):
    """Work queues with at-least-once delivery: a fetched message stays the transport's until it is
    settled, and a process that dies holding messages loses none (they return to the queue)."""

    #: True when cancelling ``fetch`` can never lose a message, so ``stop`` need not wait for it
    fetch_cancel_safe: bool
    #: send keywords ``put`` honours in ``options`` (AMQP: the 1.x ``properties``, ``exchange``,
    #: ``topic``); the engine refuses any other with a TypeError naming the queue, before ``put``.
    #: ``priority`` (an int the engine checked against ``queue.priorities``; passed only when the
    #: sender gives one, 0 otherwise) is one: the transport keeps the message at that level through
    #: retries, delays, releases and requeues, and ``fetch`` takes the highest level first
    send_options: frozenset[str]
    #: what becomes of a message the transport could neither settle nor release, for the engine's log
    unsettled_fate: str

    async def declare(self, queue: Queue[Any]) -> None:
        """Create the queue and bind it to its exchange where the backend needs to; idempotent.
        The binding is kept where every process routing through it sees it (the server, the hub)."""
        ...

    async def put(self, queue: Queue[Any], envelopes: Sequence[Envelope], *, delay: float = 0.0,
                  **options: Any) -> None:
        """Append envelopes to a queue, in order, in as few round trips as possible, as attempt 1;
        with ``delay`` > 0 none is fetched before ``delay`` seconds. ``options`` are the backend's
        own send keywords (names of ``send_options`` only; none for a plain send)."""
        ...

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        """Put the envelope on every queue bound to ``exchange`` (on the server or hub, whoever
        declared it) whose binding matches ``routing_key``, all or none; return how many queues got
        it (1 when the server only says "at least one"). None bound: raise ``errors.QueueNotFound``
        (a ``LookupError``) naming the exchange and the key."""
        ...

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery[TokenT]]:
        """Take up to ``count`` messages, waiting up to ``timeout`` seconds for the first; an empty
        list when none came. Due retries and delayed messages are fetched like the others."""
        ...

    async def ack(self, queue: Queue[Any], delivery: Delivery[TokenT]) -> None:
        """Forget a handled message."""
        ...

    async def retry(self, queue: Queue[Any], delivery: Delivery[TokenT], delay: float, reason: str) -> None:
        """Deliver the same envelope again after ``delay`` seconds, as attempt ``delivery.attempt + 1``."""
        ...

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery[TokenT], reason: str) -> None:
        """Move the message to the queue's dead letters, with ``reason``, the attempt and the time."""
        ...

    async def release(self, queue: Queue[Any], deliveries: Sequence[Delivery[TokenT]]) -> None:
        """Return unhandled messages to the head of the queue (on stop), marked ``redelivered``,
        without counting an attempt."""
        ...

    async def consume(self, queue: Queue[Any], concurrency: int) -> None:
        """The engine starts consuming ``queue`` with ``concurrency`` handlers, before its first
        ``fetch`` (a push-based server sets its prefetch here; others need do nothing)."""
        ...

    async def stop_consuming(self, queue: Queue[Any]) -> None:
        """The engine stopped consuming ``queue``: every delivery it took is settled or released.
        Messages the transport prefetched and never handed out go back to the queue now."""
        ...

    async def length(self, name: str) -> int:
        """How many messages wait in the queue (delayed ones and retries not yet due excluded)."""
        ...

    async def depth(self, name: str) -> QueueDepth:
        """The queue's ready, delayed and in-flight counts (dead letters excluded). A figure the
        server cannot give is what this transport knows of it (its backend's docstring says which)."""
        ...

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of a queue, left in place."""
        ...

    async def dead_letter_count(self, name: str) -> int:
        """How many dead letters a queue has."""
        ...

    async def requeue_dead_letters(self, name: str) -> int:
        """Put every dead letter back on its queue as attempt 1, headers unchanged (the message id
        is kept); return how many."""
        ...

    async def remove_dead_letters(self, name: str, select: SelectDeadLetter, *, requeue: bool) -> int:
        """Remove the dead letters ``select`` picks, the others left in place and in order; with
        ``requeue`` put them back on the queue as ``requeue_dead_letters`` does; return how many."""
        ...

    async def exists(self, name: str) -> bool:
        """Whether the queue is declared on the server or holds anything (messages, retries, dead
        letters): a tool tells a mistyped name from an empty queue."""
        ...

    async def ping(self) -> None:
        """One cheap round trip to the server (a readiness probe); raises when it does not answer.
        The engine bounds it with a timeout."""
        ...

    async def close(self) -> None:
        """Release connections; messages fetched and not settled return to the queue. The transport
        may not be used afterwards."""
        ...

    # Optional: ``def limiter(self) -> ratelimit.Limiter``, rate limits shared through the server
    # (Redis: a GCRA script). The engine keeps them in its process when a transport has none.
