"""Sending a declared signal through a bus: ``bus[user_created].send(...)``, ``.call(...)`` and
``.waiter(...)``. A ``BoundSignal`` validates the payload and the send's arguments (a sender
without ``#``, a finite RPC timeout, a message within the bus's ``max_message_size`` with its
headers) before the bus engine publishes anything."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, Protocol, TypeVar, overload

from microagent.errors import CallTimeout, InvalidArgument, UsageError
from microagent.limits import check_message_size, check_timeout
from microagent.message import Envelope, new_headers
from microagent.middleware import SendingKind
from microagent.payload import JsonDict, check_size
from microagent.rpc import Answers, Pending, RemoteError
from microagent.sends import check_send
from microagent.signal import Signal

T = TypeVar('T')
R = TypeVar('R')


class SignalBus(Protocol):
    """What a bound signal needs of its bus (``AbstractSignalBus`` is one)."""

    max_message_size: int
    _pending: dict[str, Pending]

    async def _publish(self, kind: SendingKind, name: str, sender: str, envelope: Envelope) -> None: ...

    async def _request(self, signal: Signal[Any, Any], sender: str, data: bytes,
                       headers: Mapping[str, str] | None) -> tuple[str, Pending]: ...


class BoundSignal(Generic[T, R]):
    """A signal bound to a bus: ``send``, ``call`` and ``waiter``.

    The payload is a model instance or, for a 1.x declaration (no model: its payload is a dict), the
    fields as keywords; a type checker refuses keyword fields for a signal with a model. ``headers``
    (every method) are user headers the message carries, never a 1.x payload field of that name."""

    __slots__ = ('bus', 'signal')

    def __init__(self, bus: SignalBus, signal: Signal[T, R]) -> None:
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
        if len(data) > self.bus.max_message_size:  # the name is formatted only when it raises
            check_size(f'signal {self.signal.name!r}', data, self.bus.max_message_size)
        return data

    @overload
    async def send(self: BoundSignal[JsonDict, Any], sender: str, payload: T | None = None, *,
                   headers: Mapping[str, str] | None = None, **kwargs: Any) -> None: ...
    @overload
    async def send(self, sender: str, payload: T | None = None, *,
                   headers: Mapping[str, str] | None = None) -> None: ...

    async def send(self, sender: str, payload: T | None = None, *, headers: Mapping[str, str] | None = None,
                   **kwargs: Any) -> None:
        """Publish the signal; the payload is a model instance, or 1.x style keyword fields."""
        check_send('signal', self.signal.name)
        data = self._encode(sender, payload, kwargs)
        envelope = Envelope(data, new_headers(headers))
        check_message_size('signal', self.signal.name, data, envelope.headers, self.bus.max_message_size)
        await self.bus._publish('signal', self.signal.name, sender, envelope)

    @overload
    async def call(self: BoundSignal[JsonDict, R], sender: str, payload: T | None = None, *,
                   timeout: float = 60, headers: Mapping[str, str] | None = None, **kwargs: Any) -> dict[str, R]: ...
    @overload
    async def call(self, sender: str, payload: T | None = None, *, timeout: float = 60,
                   headers: Mapping[str, str] | None = None) -> dict[str, R]: ...

    async def call(self, sender: str, payload: T | None = None, *, timeout: float = 60,
                   headers: Mapping[str, str] | None = None, **kwargs: Any) -> dict[str, R]:
        """Send as RPC and return the first answer, ``{"Agent.method": value}``. ``CallTimeout``
        when no receiver answers within ``timeout`` seconds; ``RemoteError`` when the first answer
        says only that its receivers failed."""
        request_id, pending, deadline = await self._ask(sender, payload, timeout, headers, kwargs)
        try:
            item = await pending.next(deadline)
        finally:
            del self.bus._pending[request_id]
        if item is None:
            raise CallTimeout(f'no answer to signal {self.signal.name!r} within {timeout}s')
        answers, errors = item
        if not answers:
            key, reason = next(iter(errors.items()))
            raise RemoteError(self.signal.name, key, reason)
        return answers

    @overload
    def waiter(self: BoundSignal[JsonDict, R], sender: str, payload: T | None = None, *, timeout: float = 60,
               headers: Mapping[str, str] | None = None, **kwargs: Any) -> AbstractAsyncContextManager[Answers[R]]: ...
    @overload
    def waiter(self, sender: str, payload: T | None = None, *, timeout: float = 60,
               headers: Mapping[str, str] | None = None) -> AbstractAsyncContextManager[Answers[R]]: ...

    @asynccontextmanager
    async def waiter(self, sender: str, payload: T | None = None, *, timeout: float = 60,
                     headers: Mapping[str, str] | None = None, **kwargs: Any) -> AsyncIterator[Answers[R]]:
        """Send as RPC and iterate over every successful answer that arrives within ``timeout``
        seconds; failed receivers are collected in the iterator's ``errors``."""
        request_id, pending, deadline = await self._ask(sender, payload, timeout, headers, kwargs)
        try:
            yield Answers(pending, deadline)
        finally:
            del self.bus._pending[request_id]

    async def _ask(self, sender: str, payload: T | None, timeout: float, headers: Mapping[str, str] | None,
                   kwargs: Mapping[str, Any]) -> tuple[str, Pending, float]:
        """Send the request of ``call`` and ``waiter``: (its id, where its answers gather, the deadline)."""
        timeout = check_timeout(f'signal {self.signal.name!r}', timeout)
        check_send('signal', self.signal.name)
        data = self._encode(sender, payload, kwargs)
        deadline = asyncio.get_running_loop().time() + timeout
        request_id, pending = await self.bus._request(self.signal, sender, data, headers)
        return request_id, pending, deadline
