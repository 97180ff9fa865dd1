"""Message signing, opt-in: a fleet key proves that a message comes from the fleet.

Without it anyone who may publish on the server can forge a signal, a queue message, an RPC answer
or an ``rpc-error`` header (the request id of a call is seen by every subscriber of the request).
With ``signing_key=`` on a bus or broker, every message it sends carries ``signature``: an
HMAC-SHA256, with the first key, over the body and the headers, and every message it receives must
carry one that some key of the list gives. Several keys rotate a key without a stop: add the new one
second everywhere, then first, then remove the old one.

The signature covers the body and every header the engine and the user set, in name order; not
``attempt`` (transports count deliveries) nor the names a backend keeps for itself on its wire
(``x-attempt``, ``x-reason``, ``Nats-*`` ...), which transports add or rewrite on retries and dead
letters. It proves who sent a message, not when: a message captured on the wire can be sent again
for as long as its key is accepted.

It is a wrapper around the transport, so the engine and the backends are unchanged: signing on
``publish``/``put``/``reply``, checking on delivery. A bad signal or answer is dropped, a bad queue
message dead-lettered (through the wrapped transport, never handed to a consumer), each with one
rate-limited warning and a count in ``rejected`` (``microagent_messages_rejected_total``).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec

from microagent.backends import reserving_backend
from microagent.errors import InvalidArgument
from microagent.logs import LogLimiter
from microagent.message import ATTEMPT, GROUP_SENDER, SIGNATURE, Envelope
from microagent.transport import (
    BrokerTransport,
    BusTransport,
    DeadLetter,
    Deliver,
    DeliverReply,
    Delivery,
    QueueDepth,
    SelectDeadLetter,
)

if TYPE_CHECKING:
    from microagent.queue import Queue

__all__ = ['MIN_KEY_BYTES', 'SignedBrokerTransport', 'SignedBusTransport', 'SigningKey', 'SigningKeys',
           'rejected', 'unwrapped']

#: a key shorter than this is refused: a guessable fleet key signs nothing
MIN_KEY_BYTES = 16
UNSIGNED, BAD_SIGNATURE = 'unsigned', 'bad signature'

#: messages refused for their signature in this process: ``(kind, name, reason) -> count``, kind being
#: ``signal``, ``answer`` (name '') or ``queue``; labels from the code, never from the traffic
rejected: dict[tuple[str, str, str], int] = {}

_encode = msgspec.json.encode


class SigningKeys:
    """The keys of a bus or broker: the first signs, any of them verifies. Never shown."""

    __slots__ = ('_keys',)

    def __init__(self, keys: str | bytes | Sequence[str | bytes]) -> None:
        given = [keys] if isinstance(keys, str | bytes) else list(keys) if isinstance(keys, Sequence) else None
        if not given:
            raise InvalidArgument(f'signing_key: a key (str or bytes) or a non-empty list of keys is expected, '
                             f'got {type(keys).__name__}')
        found: list[bytes] = []
        for index, key in enumerate(given):
            if not isinstance(key, str | bytes):
                raise InvalidArgument(f'signing_key[{index}]: a key is a str or bytes, got {type(key).__name__}')
            raw = key.encode() if isinstance(key, str) else bytes(key)
            if len(raw) < MIN_KEY_BYTES:
                raise InvalidArgument(f'signing_key[{index}]: a key must be at least {MIN_KEY_BYTES} bytes long, '
                                 f'this one has {len(raw)}')
            found.append(raw)
        self._keys = tuple(_Mac(key) for key in found)

    @classmethod
    def of(cls, keys: SigningKey) -> SigningKeys:
        return keys if isinstance(keys, SigningKeys) else cls(keys)

    def __repr__(self) -> str:
        return f'<SigningKeys: {len(self._keys)} key(s), hidden>'

    def sign(self, envelope: Envelope) -> Envelope:
        """The envelope with its ``signature`` header, by the first key."""
        headers = envelope.headers or {}
        return Envelope(envelope.body, {**headers, SIGNATURE: self._keys[0].hex(_content(envelope.body, headers))})

    def check(self, envelope: Envelope) -> str | None:
        """Why the envelope's signature is not one of these keys', or None when it is."""
        headers = envelope.headers
        given = headers.get(SIGNATURE) if headers is not None else None
        if headers is None or not given:
            return UNSIGNED
        content = _content(envelope.body, headers)
        for key in self._keys:
            if hmac.compare_digest(key.hex(content), given):
                return None
        return BAD_SIGNATURE


class _Mac:
    """HMAC-SHA256 (RFC 2104) of one key, its inner and outer hash states computed once: a message
    then costs two state copies (0.7 us) where ``hmac.digest`` keys both hashes again (1.6 us)."""

    __slots__ = ('_inner', '_outer')

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b'\0')
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))

    def __repr__(self) -> str:
        return '<hidden key>'

    def hex(self, content: bytes) -> str:
        inner = self._inner.copy()
        inner.update(content)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


_BLOCK = 64  # SHA-256's block size


SigningKey: TypeAlias = str | bytes | Sequence[str | bytes] | SigningKeys


#: rewritten on the way (the attempt on a retry) or added by a transport after the sender signed
#: (the sender a group's store keeps), so never part of the signature
_UNSIGNED = frozenset({ATTEMPT, SIGNATURE, GROUP_SENDER})


@functools.lru_cache(maxsize=1024)
def _signed_name(name: str) -> bool:
    lower = name.lower()
    return lower not in _UNSIGNED and reserving_backend(lower) is None


def _content(body: bytes, headers: Mapping[str, str]) -> bytes:
    """What is signed: the signed headers as a JSON list of pairs in name order, then the body (the
    list is self-delimiting, so no two messages share a content)."""
    items = sorted(headers.items())
    left_out = [name for name in headers if not _signed_name(name)]
    if left_out == [SIGNATURE]:  # a received message, as sent
        items.remove((SIGNATURE, headers[SIGNATURE]))
    elif left_out:  # a transport's bookkeeping, ``attempt``
        items = [item for item in items if _signed_name(item[0])]
    return _encode(items) + body


def _count(kind: str, name: str, reason: str) -> None:
    key = (kind, name, reason)
    rejected[key] = rejected.get(key, 0) + 1


class _Wrapper:
    """Attributes the wrapper does not have are the wrapped transport's (``bus.transport.redis``)."""

    inner: Any

    def __repr__(self) -> str:
        return f'<signed {self.inner!r}>'

    def __getattr__(self, name: str) -> Any:
        if name == 'inner':
            raise AttributeError(name)
        return getattr(self.inner, name)


class SignedBusTransport(_Wrapper):
    """A ``BusTransport`` that signs what it sends and drops what it receives unsigned or forged."""

    inner: BusTransport

    def __init__(self, inner: BusTransport, keys: SigningKey, log: logging.Logger) -> None:
        self.inner = inner
        self.keys = SigningKeys.of(keys)
        self.log = log
        self.limited = LogLimiter()
        self._delivers: dict[Deliver, Deliver] = {}

    @property
    def reply_to(self) -> str:
        return self.inner.reply_to

    async def publish(self, name: str, sender: str, envelope: Envelope) -> None:
        await self.inner.publish(name, sender, self.keys.sign(envelope))

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        await self.inner.reply(reply_to, self.keys.sign(envelope))

    async def subscribe(self, names: Collection[str], deliver: Deliver) -> None:
        checked = self._delivers.get(deliver)  # the same callback on every call, as the protocol says
        if checked is None:
            checked = self._delivers[deliver] = self._checked(deliver)
        await self.inner.subscribe(names, checked)

    def _checked(self, deliver: Deliver) -> Deliver:
        async def checked(name: str, sender: str, envelope: Envelope) -> None:
            reason = self.keys.check(envelope)
            if reason is None:
                return await deliver(name, sender, envelope)
            _count('signal', name, reason)
            self.limited.warning(self.log, f'signature {name} {sender}',
                                 'Dropped signal %s from %s: %s (this bus checks signatures)', name, sender, reason)
        return checked

    async def receive_replies(self, deliver: DeliverReply) -> None:
        async def checked(envelope: Envelope) -> None:
            reason = self.keys.check(envelope)
            if reason is None:
                return await deliver(envelope)
            _count('answer', '', reason)
            self.limited.warning(self.log, 'signature answer', 'Dropped an RPC answer: %s (this bus checks '
                                 'signatures)', reason)
        await self.inner.receive_replies(checked)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


class SignedBrokerTransport(_Wrapper):
    """A ``BrokerTransport`` that signs what it puts and dead-letters what it fetches unsigned or forged."""

    inner: BrokerTransport[Any]

    def __init__(self, inner: BrokerTransport[Any], keys: SigningKey, log: logging.Logger) -> None:
        self.inner = inner
        self.keys = SigningKeys.of(keys)
        self.log = log
        self.limited = LogLimiter()
        self.fetch_cancel_safe = inner.fetch_cancel_safe
        self.send_options = inner.send_options
        self.unsettled_fate = inner.unsettled_fate

    async def put(self, queue: Queue[Any], envelopes: Sequence[Envelope], *, delay: float = 0.0,
                  **options: Any) -> None:
        sign = self.keys.sign
        await self.inner.put(queue, [sign(envelope) for envelope in envelopes], delay=delay, **options)

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        return await self.inner.publish(exchange, routing_key, self.keys.sign(envelope))

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery[Any]]:
        deliveries = await self.inner.fetch(queue, count, timeout)
        check = self.keys.check
        good = []
        for delivery in deliveries:
            reason = check(delivery.envelope)
            if reason is None:
                good.append(delivery)
            else:
                await self._refuse(queue, delivery, reason)
        return good

    async def _refuse(self, queue: Queue[Any], delivery: Delivery[Any], reason: str) -> None:
        _count('queue', queue.name, reason)
        self.limited.warning(self.log, f'signature {queue.name}', 'Queue %s: dead-lettered a message: %s '
                             '(this broker checks signatures)', queue.name, reason)
        try:
            await self.inner.dead_letter(queue, delivery, f'{reason}: this broker checks message signatures')
        except Exception as exc:  # left unsettled: it comes back, and is refused again
            self.log.warning('Queue %s: a message refused for its signature was not dead-lettered: %s: %s',
                             queue.name, type(exc).__name__, exc)

    async def ack(self, queue: Queue[Any], delivery: Delivery[Any]) -> None:
        await self.inner.ack(queue, delivery)

    async def retry(self, queue: Queue[Any], delivery: Delivery[Any], delay: float, reason: str) -> None:
        await self.inner.retry(queue, delivery, delay, reason)

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery[Any], reason: str) -> None:
        await self.inner.dead_letter(queue, delivery, reason)

    async def release(self, queue: Queue[Any], deliveries: Sequence[Delivery[Any]]) -> None:
        await self.inner.release(queue, deliveries)

    async def declare(self, queue: Queue[Any]) -> None:
        await self.inner.declare(queue)

    async def consume(self, queue: Queue[Any], concurrency: int) -> None:
        await self.inner.consume(queue, concurrency)

    async def stop_consuming(self, queue: Queue[Any]) -> None:
        await self.inner.stop_consuming(queue)

    async def length(self, name: str) -> int:
        return await self.inner.length(name)

    async def depth(self, name: str) -> QueueDepth:
        return await self.inner.depth(name)

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        return await self.inner.dead_letters(name, limit)

    async def dead_letter_count(self, name: str) -> int:
        return await self.inner.dead_letter_count(name)

    async def requeue_dead_letters(self, name: str) -> int:
        return await self.inner.requeue_dead_letters(name)

    async def remove_dead_letters(self, name: str, select: SelectDeadLetter, *, requeue: bool) -> int:
        return await self.inner.remove_dead_letters(name, select, requeue=requeue)

    async def exists(self, name: str) -> bool:
        return await self.inner.exists(name)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


def unwrapped(transport: object) -> Any:
    """The backend's own transport under a signing wrapper (or ``transport`` itself)."""
    return transport.inner if isinstance(transport, _Wrapper) else transport

