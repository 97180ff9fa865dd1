"""The signal bus: pub/sub of declared signals, RPC answers, receivers called concurrently.

A backend implements three methods (``publish``, ``subscribe``, ``close``) and hands every
message it reads to ``dispatch`` (or awaits ``deliver``, which also waits while the backlog is
full). Everything else (channel names, validation, RPC, calling receivers) lives here once, so
every backend behaves the same.

No message can hurt the reader: whatever a message holds, it is handled or dropped with a
warning. Each receiver runs at most ``concurrency`` calls at once; the signals waiting for it sit
in its lane (a deque), and a reading loop that awaits ``deliver`` stops reading while the bus holds
``max_backlog`` of them, so a flood costs queued messages, never tasks.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from .dsn import hide_password
from .errors import CallTimeout, InvalidArgument, InvalidPayload, SignalAttributeError, SignalNotFound, UsageError
from .payload import check_size, encode_json
from .signal import RESPONSE_SIGNAL, Signal

if TYPE_CHECKING:
    from .agent import Receiver

T = TypeVar('T')
R = TypeVar('R')

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
DEFAULT_MAX_BACKLOG = 10_000
__all__ = ['DEFAULT_MAX_BACKLOG', 'DEFAULT_MAX_MESSAGE_SIZE', 'RESPONSE_SIGNAL', 'AbstractSignalBus', 'BoundSignal',
           'shown']
_answers_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


class _Pending:
    """Answers to one RPC request, collected until the caller stops waiting."""

    __slots__ = ('answers', 'signal', 'wakeup')

    def __init__(self, signal: Signal[Any, Any]) -> None:
        self.signal = signal
        self.answers: deque[dict[str, Any]] = deque()
        self.wakeup: asyncio.Future[None] | None = None

    def put(self, answer: dict[str, Any]) -> None:
        self.answers.append(answer)
        _wake(self.wakeup)

    async def next(self, deadline: float) -> dict[str, Any] | None:
        """The next answer, or None once the loop's clock passes ``deadline``."""
        if not self.answers:
            loop = asyncio.get_running_loop()
            wakeup = self.wakeup = loop.create_future()
            timer = loop.call_at(deadline, _wake, wakeup)
            try:
                await wakeup
            finally:
                timer.cancel()
                self.wakeup = None
        return self.answers.popleft() if self.answers else None


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class _Reply:
    """The answers of this bus's receivers to one RPC request, sent together once all have run."""

    __slots__ = ('answers', 'left', 'request_id')

    def __init__(self, request_id: str, left: int) -> None:
        self.request_id = request_id
        self.answers: dict[str, msgspec.Raw] = {}
        self.left = left


class _Lane:
    """The signals one receiver has yet to handle, drained by at most ``concurrency`` workers."""

    __slots__ = ('backlog', 'receiver', 'workers')

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.backlog: deque[tuple[Any, str, _Reply | None]] = deque()  # (payload, sender, reply)
        self.workers = 0


def shown(text: str | bytes, limit: int = 200) -> str:
    """A channel or sender from the wire, safe for a log line (no control characters, bounded)."""
    if isinstance(text, str) and text.isprintable() and len(text) <= limit:
        return text
    return repr(text[:limit])


class AbstractSignalBus(ABC):
    """Signal bus: ``bus.user_created`` (1.x) or ``bus[user_created]`` (typed) is a bound signal."""

    def __init__(self, dsn: str, prefix: str = 'PUBSUB', log: logging.Logger | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.dsn = dsn
        self.prefix = prefix
        self.uid = uuid.uuid4().hex
        # 32 hex digits like 1.x's uuid4().hex, unique per bus, without the cost of a uuid per call
        self._request_ids = (f'{self.uid[:16]}{n:016x}' for n in itertools.count())
        self.log = log or logging.getLogger('microagent.bus')
        self.max_message_size = max_message_size
        #: signals waiting for their receivers beyond which ``deliver`` holds the reading loop
        self.max_backlog = DEFAULT_MAX_BACKLOG
        self.receivers: dict[str, list[Receiver]] = {}
        self._lanes: dict[Receiver, _Lane] = {}
        self._backlog = 0
        self._room = asyncio.Event()
        self._pending: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._response_bound = False

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {hide_password(self.dsn)} {self.prefix}>'

    # backend interface

    @abstractmethod
    async def publish(self, channel: str, data: bytes) -> None:
        """Publish raw bytes on a channel."""

    @abstractmethod
    async def subscribe(self, pattern: str) -> None:
        """Start delivering messages of channels matching the glob ``pattern`` to ``dispatch``."""

    async def close(self) -> None:
        """Release connections; the bus may not be used afterwards."""

    # bound signals

    def __getattr__(self, name: str) -> BoundSignal[Any, Any]:
        if name.startswith('_'):
            raise AttributeError(name)
        try:
            signal = Signal.get(name)
        except SignalNotFound as exc:  # also an AttributeError: hasattr(bus, name) is False
            raise SignalAttributeError(str(exc), name, self) from None
        return BoundSignal(self, signal)

    def __getitem__(self, signal: Signal[T, R]) -> BoundSignal[T, R]:
        return BoundSignal(self, signal)

    # receiving

    async def bind_receiver(self, receiver: Receiver) -> None:
        """Deliver ``receiver.signal`` to ``receiver`` (subscribing on first use of the signal)."""
        name = receiver.signal.name
        first = name not in self.receivers
        self.receivers.setdefault(name, []).append(receiver)
        self._lanes[receiver] = _Lane(receiver)
        if first:
            await self.subscribe(receiver.signal.make_channel_name(self.prefix))

    async def unbind_receivers(self, receivers: list[Receiver], grace: float) -> None:
        """Stop calling ``receivers`` (dropping what waits for them) and wait up to ``grace`` s
        for the calls under way."""
        for receiver in receivers:
            bound = self.receivers.get(receiver.signal.name, [])
            if receiver in bound:
                bound.remove(receiver)
            lane = self._lanes.pop(receiver, None)
            if lane is not None:
                self._taken(len(lane.backlog))
                for _, _, reply in lane.backlog:
                    if reply is not None:
                        self._spawn(self._answered(receiver.signal, reply))
                lane.backlog.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)

    async def deliver(self, channel: str | bytes, data: bytes) -> None:
        """``dispatch``, then wait while the backlog is full: a reading loop that awaits this
        reads no faster than the receivers handle. Not while an RPC call of this bus waits: its
        answer (or the request a receiver here must answer) may be behind, so holding the loop
        would deadlock; the backlog then grows by queued messages, never by tasks."""
        self.dispatch(channel, data)
        while self._backlog >= self.max_backlog and not self._pending:
            self._room.clear()
            await self._room.wait()

    def dispatch(self, channel: str | bytes, data: bytes) -> None:
        """Handle one message read by the backend; never raises, never blocks the reading loop."""
        try:
            self._dispatch(channel, data)
        except Exception as exc:  # whatever a message holds, the reader goes on
            self.log.warning('Dropped message on channel %s: %s: %s', shown(channel), type(exc).__name__, exc)

    def _dispatch(self, channel: str | bytes, data: bytes) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode()  # invalid UTF-8: the caller logs it, channel shown escaped
        name, sender, request_id = self._parse_channel(channel)
        if name is None:
            return
        if name == RESPONSE_SIGNAL:
            if request_id:
                self._on_answer(request_id, data)
            return
        receivers = self.receivers.get(name)
        if not receivers:
            return
        signal = receivers[0].signal
        try:
            payload = signal.codec.decode(check_size(f'signal {name!r}', data, self.max_message_size))
        except InvalidPayload as exc:
            self.log.warning('Dropped signal %s from %s: %s', name, shown(sender), exc)
            return
        except Exception as exc:  # what a codec should not let through (RecursionError, UnicodeDecodeError)
            self.log.warning('Dropped signal %s from %s: %s: %s', name, shown(sender), type(exc).__name__, exc)
            return
        item = (payload, sender, _Reply(request_id, len(receivers)) if request_id else None)
        for receiver in receivers:
            lane = self._lanes[receiver]
            lane.backlog.append(item)
            self._backlog += 1
            if lane.workers < receiver.concurrency:
                lane.workers += 1
                self._spawn(self._work(lane))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _parse_channel(self, channel: str) -> tuple[str | None, str, str]:
        head = self.prefix + ':'
        if not channel.startswith(head):
            return None, '', ''
        name, _, rest = channel[len(head):].partition(':')
        sender, _, request_id = rest.partition('#')
        return name, sender, request_id

    def _taken(self, count: int = 1) -> None:
        self._backlog -= count
        if self._backlog < self.max_backlog:
            self._room.set()

    async def _work(self, lane: _Lane) -> None:
        """A worker of one receiver: handle its signals one by one until none is left."""
        receiver, backlog = lane.receiver, lane.backlog
        try:
            while backlog:
                payload, sender, reply = backlog.popleft()
                self._taken()
                ok, result = await self._call(receiver, payload, sender)
                if reply is not None:
                    if ok:  # a failed receiver does not answer; one that returned None answers null, as in 1.x
                        self._add_answer(receiver, reply, result)
                    await self._answered(receiver.signal, reply)
        finally:
            lane.workers -= 1

    def _add_answer(self, receiver: Receiver, reply: _Reply, result: Any) -> None:
        signal = receiver.signal
        try:
            encoded = signal.answer_codec.encode(result) if signal.answer_codec else encode_json(result)
        except (InvalidPayload, TypeError, msgspec.EncodeError) as exc:
            self.log.error('Answer of %s to %s is invalid: %s', receiver.key, signal.name, exc)
            return
        reply.answers[receiver.key] = msgspec.Raw(encoded)

    async def _answered(self, signal: Signal[Any, Any], reply: _Reply) -> None:
        """One receiver is done with the request; the last one publishes ``{"Class.method": value}``."""
        reply.left -= 1
        if reply.left or not reply.answers:
            return
        channel = f'{self.prefix}:{RESPONSE_SIGNAL}:{self.uid}#{reply.request_id}'
        try:
            await self.publish(channel, encode_json(reply.answers))
        except Exception as exc:
            self.log.warning('Answers to %s not sent: %s: %s', signal.name, type(exc).__name__, exc)

    async def _call(self, receiver: Receiver, payload: Any, sender: str) -> tuple[bool, Any]:
        try:
            return True, await receiver(payload, sender)
        except TimeoutError:
            self.log.error('Receiver %s of %s timed out after %.1fs', receiver.key, receiver.signal.name,
                           receiver.timeout)
        except Exception:
            self.log.exception('Receiver %s of %s failed', receiver.key, receiver.signal.name)
        return False, None

    # RPC

    def _on_answer(self, request_id: str, data: bytes) -> None:
        pending = self._pending.get(request_id)
        if pending is None:
            return
        try:
            raw = _answers_decoder.decode(check_size(f'answer of signal {pending.signal.name!r}', data,
                                                      self.max_message_size))
            codec = pending.signal.answer_codec
            # bytes: msgspec decodes a Raw in place, pydantic takes bytes only
            answers = {key: codec.decode(bytes(value)) if codec else msgspec.json.decode(value)
                       for key, value in raw.items()}
        except Exception as exc:  # InvalidPayload, or anything a codec lets through (RecursionError)
            self.log.warning('Dropped answer to %s: %s: %s', pending.signal.name, type(exc).__name__, exc)
            return
        if answers:  # an empty answer names no receiver: nothing to hand the caller
            pending.put(answers)

    async def _request(self, signal: Signal[Any, Any], sender: str, data: bytes) -> tuple[str, _Pending]:
        """Publish an RPC request; its answers collect in the returned ``_Pending`` until the caller
        drops it from ``_pending``. Request ids are unique per bus (its uid and a counter)."""
        request_id = next(self._request_ids)
        pending = self._pending[request_id] = _Pending(signal)
        self._room.set()  # a reading loop held by a full backlog reads on while an answer is awaited
        try:
            if not self._response_bound:
                self._response_bound = True
                await self.subscribe(f'{self.prefix}:{RESPONSE_SIGNAL}:*')
            await self.publish(f'{signal.make_channel_name(self.prefix, sender)}#{request_id}', data)
        except BaseException:
            del self._pending[request_id]
            raise
        return request_id, pending


class BoundSignal(Generic[T, R]):
    """A signal bound to a bus: ``send``, ``call`` and ``waiter``."""

    __slots__ = ('bus', 'signal')

    def __init__(self, bus: AbstractSignalBus, signal: Signal[T, R]) -> None:
        self.bus = bus
        self.signal = signal

    def __repr__(self) -> str:
        return f'<BoundSignal {self.signal.name} on {self.bus!r}>'

    def _encode(self, sender: str, payload: T | None, kwargs: Mapping[str, Any]) -> bytes:
        if not isinstance(sender, str) or '#' in sender:  # the 1.x wire would read it as an RPC request
            raise InvalidArgument(f'signal {self.signal.name!r}: sender {sender!r} may not contain "#"')
        codec = self.signal.codec
        if payload is None:
            data = codec.encode(codec.from_kwargs(kwargs))
        elif kwargs:
            raise UsageError(f'signal {self.signal.name!r}: give the payload or keywords, not both')
        else:
            data = codec.encode(payload)
        return check_size(f'signal {self.signal.name!r}', data, self.bus.max_message_size)

    async def send(self, sender: str, payload: T | None = None, **kwargs: Any) -> None:
        """Publish the signal; the payload is a model instance, or 1.x style keyword fields."""
        data = self._encode(sender, payload, kwargs)
        await self.bus.publish(self.signal.make_channel_name(self.bus.prefix, sender), data)

    async def call(self, sender: str, payload: T | None = None, *, timeout: float = 60,
                   **kwargs: Any) -> dict[str, R]:
        """Send as RPC and return the first answer, ``{"Agent.method": value}``; ``TimeoutError``
        when no receiver answers within ``timeout`` seconds."""
        data = self._encode(sender, payload, kwargs)
        deadline = asyncio.get_running_loop().time() + timeout
        request_id, pending = await self.bus._request(self.signal, sender, data)
        try:
            answer = await pending.next(deadline)
        finally:
            del self.bus._pending[request_id]
        if answer is None:
            raise CallTimeout(f'no answer to signal {self.signal.name!r} within {timeout}s')
        return answer

    @asynccontextmanager
    async def waiter(self, sender: str, payload: T | None = None, *, timeout: float = 60,
                     **kwargs: Any) -> AsyncIterator[AsyncIterator[dict[str, R]]]:
        """Send as RPC and iterate over every answer that arrives within ``timeout`` seconds."""
        data = self._encode(sender, payload, kwargs)
        deadline = asyncio.get_running_loop().time() + timeout
        request_id, pending = await self.bus._request(self.signal, sender, data)
        try:
            yield _answers(pending, deadline)
        finally:
            del self.bus._pending[request_id]


async def _answers(pending: _Pending, deadline: float) -> AsyncIterator[dict[str, Any]]:
    while (answer := await pending.next(deadline)) is not None:
        yield answer
