"""The signal bus: pub/sub of declared signals, RPC answers, receivers called concurrently.

A backend implements three methods (``publish``, ``subscribe``, ``close``) and hands every
message it reads to ``dispatch``. Everything else (channel names, validation, RPC, calling
receivers) lives here once, so every backend behaves the same.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from .dsn import hide_password
from .errors import CallTimeout, InvalidPayload, SignalAttributeError, SignalNotFound, UsageError
from .payload import check_size, encode_json
from .signal import Signal

if TYPE_CHECKING:
    from .agent import Receiver

T = TypeVar('T')
R = TypeVar('R')

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
RESPONSE_SIGNAL = 'response'
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
        self.receivers: dict[str, list[Receiver]] = {}
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
        if first:
            await self.subscribe(receiver.signal.make_channel_name(self.prefix))

    async def unbind_receivers(self, receivers: list[Receiver], grace: float) -> None:
        """Stop calling ``receivers`` and wait (up to ``grace`` s) for the calls under way."""
        for receiver in receivers:
            bound = self.receivers.get(receiver.signal.name, [])
            if receiver in bound:
                bound.remove(receiver)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)

    def dispatch(self, channel: str, data: bytes) -> None:
        """Handle one message read by the backend; never blocks the reading loop."""
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
            self.log.warning('Dropped signal %s from %s: %s', name, sender, exc)
            return
        task = asyncio.create_task(self._broadcast(signal, sender, request_id, payload, list(receivers)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _parse_channel(self, channel: str) -> tuple[str | None, str, str]:
        head = self.prefix + ':'
        if not channel.startswith(head):
            return None, '', ''
        name, _, rest = channel[len(head):].partition(':')
        sender, _, request_id = rest.partition('#')
        return name, sender, request_id

    async def _broadcast(self, signal: Signal[Any, Any], sender: str, request_id: str, payload: Any,
                         receivers: list[Receiver]) -> None:
        if len(receivers) == 1:  # the common case: no gather, no extra task per message
            results = [await self._call(receivers[0], payload, sender)]
        else:
            results = await asyncio.gather(*(self._call(r, payload, sender) for r in receivers))
        if not request_id:
            return
        answers: dict[str, msgspec.Raw] = {}
        for receiver, (ok, result) in zip(receivers, results, strict=True):
            if not ok:  # a failed receiver does not answer; one that returned None answers null, as in 1.x
                continue
            try:
                encoded = signal.answer_codec.encode(result) if signal.answer_codec else encode_json(result)
            except (InvalidPayload, TypeError, msgspec.EncodeError) as exc:
                self.log.error('Answer of %s to %s is invalid: %s', receiver.key, signal.name, exc)
                continue
            answers[receiver.key] = msgspec.Raw(encoded)
        if answers:
            channel = f'{self.prefix}:{RESPONSE_SIGNAL}:{self.uid}#{request_id}'
            await self.publish(channel, encode_json(answers))

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
            raw = _answers_decoder.decode(data)
            codec = pending.signal.answer_codec
            answers = {key: codec.decode(value) if codec else msgspec.json.decode(value)
                       for key, value in raw.items()}
        except (msgspec.DecodeError, InvalidPayload) as exc:
            self.log.warning('Dropped answer to %s: %s', pending.signal.name, exc)
            return
        pending.put(answers)

    async def _request(self, signal: Signal[Any, Any], sender: str, data: bytes) -> tuple[str, _Pending]:
        """Publish an RPC request; its answers collect in the returned ``_Pending`` until the caller
        drops it from ``_pending``. Request ids are unique per bus (its uid and a counter)."""
        if not self._response_bound:
            self._response_bound = True
            await self.subscribe(f'{self.prefix}:{RESPONSE_SIGNAL}:*')
        request_id = next(self._request_ids)
        pending = self._pending[request_id] = _Pending(signal)
        try:
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

    def _encode(self, payload: T | None, kwargs: Mapping[str, Any]) -> bytes:
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
        data = self._encode(payload, kwargs)
        await self.bus.publish(self.signal.make_channel_name(self.bus.prefix, sender), data)

    async def call(self, sender: str, payload: T | None = None, *, timeout: float = 60,
                   **kwargs: Any) -> dict[str, R]:
        """Send as RPC and return the first answer, ``{"Agent.method": value}``; ``TimeoutError``
        when no receiver answers within ``timeout`` seconds."""
        data = self._encode(payload, kwargs)
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
        data = self._encode(payload, kwargs)
        deadline = asyncio.get_running_loop().time() + timeout
        request_id, pending = await self.bus._request(self.signal, sender, data)
        try:
            yield _answers(pending, deadline)
        finally:
            del self.bus._pending[request_id]


async def _answers(pending: _Pending, deadline: float) -> AsyncIterator[dict[str, Any]]:
    while (answer := await pending.next(deadline)) is not None:
        yield answer
