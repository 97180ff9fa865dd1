"""The signal bus engine: pub/sub of declared signals, RPC, receivers called concurrently.

A backend is a ``BusTransport`` (``transport.py``): it publishes envelopes, delivers the ones it
reads to ``deliver`` and RPC answers to the bus's reply callback. Everything else (validation,
headers, RPC request ids and pending calls, answers, calling receivers) lives here once, so every
backend behaves the same, and the engine never knows which backend it drives.

No message can hurt the reader: whatever a message holds, it is handled or dropped with a
warning. Each receiver runs at most ``concurrency`` calls at once; the signals waiting for it sit
in its lane (a deque), and a transport's reading loop, which awaits ``deliver``, stops reading while
the bus holds ``max_backlog`` of them, so a flood costs queued messages, never tasks.

RPC answers: the receivers of one bus answer a request together, ``{"Agent.method": value}``, once
all have run. A receiver that raised, timed out or returned an invalid value is named in the
answer's ``rpc-error`` header with the reason, so an envelope-wire caller learns it at once: ``call``
raises ``RemoteError`` when the first answer holds only failures; ``waiter`` yields the successful
answers and keeps the failures in ``answers.errors``. A 1.x caller (a request without a
``message-id`` header) gets no answer from a failed receiver, as in 1.x.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from functools import partial
from typing import Any, Self, TypeVar, cast, overload

import msgspec

from microagent.bound_signal import BoundSignal
from microagent.dsn import hide_password
from microagent.errors import (
    InvalidPayload,
    SignalAttributeError,
    SignalNotFound,
    UsageError,
)
from microagent.groups import GroupOptions, SignalGroups
from microagent.handlers import Receiver
from microagent.lanes import Lane
from microagent.limits import check_message_size
from microagent.logs import FAILED, LogLimiter, dropped_fields, set_handler, shown
from microagent.message import (
    MESSAGE_ID,
    REPLY_TO,
    REQUEST_ID,
    RPC_ERROR,
    Envelope,
    Incoming,
    current_var,
    new_headers,
)
from microagent.middleware import (
    Handling,
    MiddlewareLike,
    Outcome,
    Sending,
    SendingKind,
    Site,
    active,
    added,
    backend_name,
    wrap,
)
from microagent.payload import DEFAULT_MAX_MESSAGE_SIZE, check_size, encode_json
from microagent.readiness import PING_TIMEOUT, pinged
from microagent.rpc import Answers, Expiry, Pending, RemoteError, Reply
from microagent.sends import set_sender
from microagent.signal import RESPONSE_SIGNAL, Signal
from microagent.signing import SignedBrokerTransport, SignedBusTransport, SigningKey
from microagent.transport import BrokerTransport, BusTransport

T = TypeVar('T')
R = TypeVar('R')

DEFAULT_MAX_BACKLOG = 10_000
__all__ = ['DEFAULT_MAX_BACKLOG', 'DEFAULT_MAX_MESSAGE_SIZE', 'RESPONSE_SIGNAL', 'AbstractSignalBus', 'Answers',
           'BoundSignal', 'RemoteError', 'shown']
_answers_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_errors_decoder = msgspec.json.Decoder(dict[str, str])


class AbstractSignalBus:
    """The bus engine over a ``BusTransport``: ``bus.user_created`` (1.x) or ``bus[user_created]``
    (typed) is a bound signal. Backends subclass it only to build their transport in ``__init__``."""

    def __init__(self, transport: BusTransport, *, dsn: str = '', prefix: str = 'PUBSUB',
                 log: logging.Logger | None = None, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 group_options: GroupOptions | None = None, signing_key: SigningKey | None = None) -> None:
        self.transport = transport
        self.dsn = dsn
        self.prefix = prefix
        self.uid = uuid.uuid4().hex
        # 32 hex digits like 1.x's uuid4().hex, unique per bus, without the cost of a uuid per call
        self._request_ids = (f'{self.uid[:16]}{n:016x}' for n in itertools.count())
        self.log = log or logging.getLogger('microagent.bus')
        self.max_message_size = max_message_size
        self.backend = backend_name(transport)
        #: wrap every send through this bus (``use``); an agent adds its own
        self.middlewares: tuple[MiddlewareLike, ...] = ()
        #: signals waiting for their receivers beyond which ``deliver`` holds the reading loop
        self.max_backlog = DEFAULT_MAX_BACKLOG
        self.receivers: dict[str, list[Receiver]] = {}
        self._lanes: dict[Receiver, Lane] = {}
        self._backlog = 0
        self._room = asyncio.Event()
        self._pending: dict[str, Pending] = {}
        self._expiry = Expiry()  # one timer for the deadlines of the calls waiting for answers
        self._tasks: set[asyncio.Task[None]] = set()
        self._replies_bound = False
        #: a flood of stray or undecodable messages logs a few lines, each saying how many it stands for
        self.limited = LogLimiter()
        #: retention and visibility timeout of the stores of this bus's groups
        self.group_options = group_options or GroupOptions()
        self._groups: SignalGroups | None = None
        self.signing_key = signing_key
        if signing_key is not None:  # every message sent signed, every one received checked
            self.transport = SignedBusTransport(transport, signing_key, self.log)

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {hide_password(self.dsn)} {self.prefix}>'

    async def close(self) -> None:
        """Release the transport's connections; the bus may not be used afterwards."""
        if self._groups is not None:
            await self._groups.close()
        for lane in self._lanes.values():
            lane.retire()
        await self.transport.close()

    @property
    def groups(self) -> SignalGroups:
        """The engine of this bus's grouped receivers; its dead-letter, depth and requeue methods
        take a group's store name, ``signal@group``. A UsageError if the backend has no groups."""
        if self._groups is None:
            groups: Callable[[], BrokerTransport[Any]] | None = getattr(self.transport, 'groups', None)
            if groups is None:
                raise UsageError(f'{self!r}: the {self.backend} backend has no signal groups')
            stores = groups()
            if self.signing_key is not None:  # a grouped receiver checks signatures as the bus does
                stores = SignedBrokerTransport(stores, self.signing_key, self.log)
            self._groups = SignalGroups(stores, self.group_options, self, dsn=self.dsn, log=self.log,
                                        max_message_size=self.max_message_size)
        return self._groups

    async def ping(self) -> None:
        """One round trip to the server (``transport.ping``); raises when it is unreachable."""
        await self.transport.ping()

    async def readiness(self, timeout: float = PING_TIMEOUT) -> list[str]:
        """Why this bus is not ready, empty when it is: its server does not answer ``ping`` (or
        its subscriptions are down) within ``timeout`` seconds, or a group's reading loop fails."""
        problems = await pinged(repr(self), self.ping, timeout)
        if self._groups is not None and self._groups.consumers:
            problems += [problem for problem in await self._groups.readiness(timeout) if problem not in problems]
        return problems

    def use(self, *middlewares: MiddlewareLike) -> Self:
        """Wrap every send through this bus in ``middlewares`` too (after those it has)."""
        self.middlewares = added(self.middlewares, middlewares)
        return self

    async def _publish(self, kind: SendingKind, name: str, sender: str, envelope: Envelope) -> None:
        """``transport.publish``, through the send middlewares."""
        middlewares = active(self.middlewares)
        if not middlewares:
            return await self.transport.publish(name, sender, envelope)
        sending = Sending(kind, name, self.backend, [cast(dict[str, str], envelope.headers)], sender)
        await wrap(middlewares, 'send', sending, partial(self.transport.publish, name, sender, envelope))()

    # bound signals

    def __getattr__(self, name: str) -> BoundSignal[Any, Any]:
        if name.startswith('_'):
            raise AttributeError(name)
        try:
            signal = Signal.get(name)
        except SignalNotFound as exc:  # also an AttributeError: hasattr(bus, name) is False
            raise SignalAttributeError(str(exc), name, self) from None
        return BoundSignal(self, signal)

    @overload
    def __getitem__(self, signal: Signal[T, R]) -> BoundSignal[T, R]: ...
    @overload
    def __getitem__(self, signal: str) -> BoundSignal[Any, Any]: ...

    def __getitem__(self, signal: Signal[Any, Any] | str) -> BoundSignal[Any, Any]:
        """``bus[user_created]``, typed by the declaration; ``bus['user_created']`` by name, as untyped as
        ``bus.user_created``. ``SignalNotFound`` (a ``LookupError``) names a signal nobody declared."""
        if isinstance(signal, str):
            return BoundSignal(self, Signal.get(signal))
        if not isinstance(signal, Signal):
            raise UsageError(f'bus[...] takes a Signal or the name of one, got {signal!r}')
        return BoundSignal(self, signal)

    # receiving

    async def bind_receiver(self, receiver: Receiver) -> None:
        """Deliver ``receiver.signal`` to ``receiver`` (subscribing on first use of the signal); a
        grouped receiver joins its group instead."""
        if receiver.grouping is not None:
            return await self.groups.bind(receiver, receiver.grouping)
        name = receiver.signal.name
        first = name not in self.receivers
        self.receivers.setdefault(name, []).append(receiver)
        self._lanes[receiver] = Lane(receiver)
        if first:
            await self.transport.subscribe((name,), self.deliver)

    async def unbind_receivers(self, receivers: list[Receiver], grace: float) -> None:
        """Stop calling ``receivers`` (dropping what waits for them) and wait up to ``grace`` s
        for the calls under way; grouped receivers hand back what they hold to their group."""
        grouped = [receiver for receiver in receivers if receiver.grouping is not None]
        if grouped and self._groups is not None:
            await self._groups.unbind(grouped, grace)
        for receiver in receivers:
            bound = self.receivers.get(receiver.signal.name, [])
            if receiver in bound:
                bound.remove(receiver)
            lane = self._lanes.pop(receiver, None)
            if lane is not None:
                lane.retire()
                self._taken(len(lane.backlog))
                for _, _, reply, _ in lane.backlog:
                    if reply is not None:
                        self._spawn(self._answered(receiver.signal, reply))
                lane.backlog.clear()
        idle = set().union(*(lane.idle_tasks() for lane in self._lanes.values()))
        if busy := [task for task in self._tasks if task not in idle]:  # not the idle workers of others
            await asyncio.wait(busy, timeout=grace)

    async def deliver(self, name: str, sender: str, envelope: Envelope) -> None:
        """The transport's callback: ``dispatch``, then wait while the backlog is full, so a
        reading loop reads no faster than the receivers handle. Not while an RPC call of this bus
        waits: its answer (or the request a receiver here must answer) may be behind, so holding
        the loop would deadlock; the backlog then grows by queued messages, never by tasks."""
        self.dispatch(name, sender, envelope)
        while self._backlog >= self.max_backlog and not self._pending:
            self._room.clear()
            await self._room.wait()

    def dispatch(self, name: str, sender: str, envelope: Envelope) -> None:
        """Queue one signal for its receivers; never raises, never blocks the reading loop."""
        try:
            self._dispatch(name, sender, envelope)
        except Exception as exc:  # whatever a message holds, the reader goes on
            self.limited.warning(self.log, 'dropped', 'Dropped signal %s from %s: %s: %s', shown(name),
                                 shown(sender), type(exc).__name__, exc)

    def _dispatch(self, name: str, sender: str, envelope: Envelope) -> None:
        receivers = self.receivers.get(name)
        if not receivers:
            return
        signal = receivers[0].signal
        try:
            if len(envelope.body) > self.max_message_size:  # the name is formatted only when it raises
                check_size(f'signal {name!r}', envelope.body, self.max_message_size)
            payload = signal.codec.decode(envelope.body)
        except InvalidPayload as exc:
            self.limited.warning(self.log, f'invalid {name}:{sender}', 'Dropped signal %s from %s: %s', name,
                                 shown(sender), exc, extra=dropped_fields(envelope))
            return
        except Exception as exc:  # what a codec should not let through (RecursionError, UnicodeDecodeError)
            self.limited.warning(self.log, f'invalid {name}:{sender}', 'Dropped signal %s from %s: %s: %s', name,
                                 shown(sender), type(exc).__name__, exc, extra=dropped_fields(envelope))
            return
        headers = envelope.headers
        reply = None
        if headers is not None:
            request_id = headers.get(REQUEST_ID)
            reply_to = headers.get(REPLY_TO)
            if request_id and reply_to:
                reply = Reply(request_id, reply_to, len(receivers), MESSAGE_ID in headers)
        item = (payload, sender, reply, Incoming(headers))  # one Message for every receiver, if read
        for receiver in receivers:
            lane = self._lanes[receiver]
            lane.backlog.append(item)
            self._backlog += 1
            if not lane.wake() and lane.workers < receiver.concurrency:
                lane.workers += 1
                self._spawn(self._work(lane))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _taken(self, count: int = 1) -> None:
        self._backlog -= count
        if self._backlog < self.max_backlog:
            self._room.set()

    async def _work(self, lane: Lane) -> None:
        """A worker of one receiver: handle its signals one by one, then wait a while for more
        (``lanes.py``) and end when none comes. The signal
        is the current message while its receiver runs (and answers), so what it sends inherits
        the conversation; its headers are read only if something asks."""
        receiver, backlog = lane.receiver, lane.backlog
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        set_sender(receiver.agent)  # this task's own context: what the receiver sends is checked as its
        set_handler(receiver.agent, receiver.name)  # and what it logs names the handler
        try:
            while True:
                while backlog:
                    payload, sender, reply, incoming = backlog.popleft()
                    self._taken()
                    token = current_var.set(incoming)
                    try:
                        ok, result = await self._call(receiver, payload, sender, incoming, reply is not None)
                        if reply is not None:
                            if ok:  # one that returned None answers null, as in 1.x
                                self._add_answer(receiver, reply, result)
                            elif reply.errors is not None:
                                reply.errors[receiver.key] = result
                            await self._answered(receiver.signal, reply)
                    finally:
                        current_var.reset(token)
                if not await lane.wait(loop, task):
                    return
        finally:
            lane.workers -= 1

    def replies_to(self, reply_to: str) -> bool:
        """Whether a request's ``reply_to`` is of this backend's RPC answer form (a backend that
        cannot tell decides in ``reply``)."""
        check = getattr(self.transport, 'is_reply_address', None)
        return True if check is None else bool(check(reply_to))

    async def answer_for_group(self, receiver: Receiver, request_id: str, reply_to: str, result: Any) -> None:
        """A grouped receiver handled a request: its group's answer, alone (other receivers answer
        for their own group or process)."""
        reply = Reply(request_id, reply_to, 1, True)
        self._add_answer(receiver, reply, result)
        await self._answered(receiver.signal, reply)

    def _add_answer(self, receiver: Receiver, reply: Reply, result: Any) -> None:
        signal = receiver.signal
        try:
            encoded = signal.answer_codec.encode(result) if signal.answer_codec else encode_json(result)
        except (InvalidPayload, TypeError, msgspec.EncodeError) as exc:
            self.log.error('Answer of %s to %s is invalid: %s', receiver.key, signal.name, exc)
            if reply.errors is not None:
                reply.errors[receiver.key] = f'invalid answer: {exc}'
            return
        reply.answers[receiver.key] = msgspec.Raw(encoded)

    async def _answered(self, signal: Signal[Any, Any], reply: Reply) -> None:
        """One receiver is done with the request; the last one sends ``{"Class.method": value}``
        (and the failures, to a caller that reads them)."""
        reply.left -= 1
        if reply.left or not (reply.answers or reply.errors):
            return
        headers = new_headers(request_id=reply.request_id)
        if reply.errors:
            headers[RPC_ERROR] = encode_json(reply.errors).decode()
        envelope = Envelope(encode_json(reply.answers), headers)
        try:
            if middlewares := active(self.middlewares):
                sending = Sending('answer', signal.name, self.backend, [headers])
                await wrap(middlewares, 'send', sending, partial(self.transport.reply, reply.reply_to, envelope))()
            else:
                await self.transport.reply(reply.reply_to, envelope)
        except Exception as exc:
            self.log.warning('Answers to %s not sent: %s: %s', signal.name, type(exc).__name__, exc)

    async def _call(self, receiver: Receiver, payload: Any, sender: str, incoming: Incoming,
                    rpc: bool = False) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, reason)`` when the receiver failed (logged here, with
        what follows: a signal is handled once; an RPC caller gets the reason)."""
        after = 'not retried, the caller gets the error' if rpc else 'not retried (a signal is handled once)'
        try:
            if middlewares := active(receiver.agent.middlewares):
                return True, await self._call_through(receiver, payload, sender, incoming, middlewares)
            return True, await receiver(payload, sender)
        except TimeoutError:
            self.log.error('Receiver %s of %s timed out after %.1fs; %s', receiver.key, receiver.signal.name,
                           receiver.timeout, after, extra=FAILED)
            return False, f'timed out after {receiver.timeout}s'
        except Exception as exc:
            self.log.exception('Receiver %s of %s failed; %s', receiver.key, receiver.signal.name, after,
                               extra=FAILED)
            return False, f'{type(exc).__name__}: {exc}'

    def _call_through(self, receiver: Receiver, payload: Any, sender: str, incoming: Incoming,
                      middlewares: tuple[MiddlewareLike, ...]) -> Awaitable[Any]:
        """The receiver behind its agent's middlewares, which see how it ended."""
        if receiver.site is None:
            receiver.site = Site('receiver', type(receiver.agent).__name__, receiver.name, receiver.signal.name,
                                 self.backend)
        handling = Handling(receiver.site, incoming)

        async def call() -> Any:
            try:
                return await receiver(payload, sender)
            except TimeoutError as exc:
                handling.failed(exc, Outcome.FAILED, timed_out=True)
                raise
            except Exception as exc:
                handling.failed(exc, Outcome.FAILED)
                raise

        return wrap(middlewares, 'handle', handling, call)()

    # RPC

    async def _on_reply(self, envelope: Envelope) -> None:
        """The transport's callback for RPC answers; never raises."""
        try:
            self._on_answer(envelope)
        except Exception as exc:
            self.limited.warning(self.log, 'answer', 'Dropped an RPC answer: %s: %s', type(exc).__name__, exc)

    def _on_answer(self, envelope: Envelope) -> None:
        headers = envelope.headers
        request_id = headers.get(REQUEST_ID) if headers is not None else None
        pending = self._pending.get(request_id) if request_id else None
        if pending is None or headers is None:
            if not request_id:  # not an answer at all
                self.limited.warning(self.log, 'stray', 'Dropped a stray message on the RPC answers of '
                                     'this bus: it names no request')
            else:  # an answer after its call returned (its first answer, or its timeout)
                self.limited.log(self.log, logging.DEBUG, 'late', 'Dropped a late answer to request %s: '
                                 'its call no longer waits', shown(request_id))
            return
        try:
            raw = _answers_decoder.decode(check_size(f'answer of signal {pending.signal.name!r}', envelope.body,
                                                     self.max_message_size))
            codec = pending.signal.answer_codec
            # bytes: msgspec decodes a Raw in place, pydantic takes bytes only
            answers = {key: codec.decode(bytes(value)) if codec else msgspec.json.decode(value)
                       for key, value in raw.items()}
            failed = headers.get(RPC_ERROR)
            errors = _errors_decoder.decode(failed) if failed else {}
        except Exception as exc:  # InvalidPayload, or anything a codec lets through (RecursionError)
            self.limited.warning(self.log, f'answer {pending.signal.name}', 'Dropped answer to %s: %s: %s',
                                 pending.signal.name, type(exc).__name__, exc)
            return
        if answers or errors:  # an empty answer names no receiver: nothing to hand the caller
            pending.put(answers, errors)

    async def _request(self, signal: Signal[Any, Any], sender: str, data: bytes,
                       headers: Mapping[str, str] | None) -> tuple[str, Pending]:
        """Publish an RPC request; its answers collect in the returned ``Pending`` until the caller
        drops it from ``_pending``. Request ids are unique per bus (its uid and a counter)."""
        request_id = next(self._request_ids)
        pending = self._pending[request_id] = Pending(signal, self._expiry)
        self._room.set()  # a reading loop held by a full backlog reads on while an answer is awaited
        try:
            if not self._replies_bound:
                self._replies_bound = True
                try:
                    await self.transport.receive_replies(self._on_reply)
                except BaseException:
                    self._replies_bound = False  # the next call tries again
                    raise
            envelope = Envelope(data, new_headers(headers, reply_to=self.transport.reply_to, request_id=request_id))
            check_message_size('signal', signal.name, data, envelope.headers, self.max_message_size)
            await self._publish('call', signal.name, sender, envelope)
        except BaseException:
            del self._pending[request_id]
            raise
        return request_id, pending
