"""The envelope: a message's body plus its headers, and the ``Message`` a handler may ask for.

Every message is an envelope: the body is exactly the 1.x JSON body; the headers say which message
this is, which conversation and trace it belongs to, which attempt this is and where an RPC answer
goes, beside the user's own headers. This module names the headers once, builds those of an outgoing
message (inheriting correlation and trace from the message being handled, which the engine keeps in
a context variable), reads them back into a ``Message``. The transports that carry envelopes are in ``transport``; a
backend without native headers frames them with the body (Redis: ``backends/redis/frame.py``).

Headers on the wire, every value a string, standard names in lower case:

==================  ==========================================================================
``message-id``      unique across processes and hosts; kept across retries and requeues
``correlation-id``  the conversation: inherited from the message being handled; absent: the message id
``sent-at``         unix time of sending, in seconds, to the millisecond
``attempt``         absent when sent (1); transports count deliveries themselves (``Delivery.attempt``)
``traceparent``     W3C Trace Context: a child span of the handled message's trace; absent: the message
                    starts a trace whose id is its message id (span: the id's second half, sampled)
``tracestate``      W3C Trace Context vendor state, passed on unchanged
``reply-to``        RPC request: the transport address its answers go to
``request-id``      RPC: pairs a request with its answers
``rpc-error``       RPC answer: receivers that failed, a JSON object ``{"Agent.method": "reason"}``
``signature``       with a signing key only: HMAC-SHA256 of the body and headers (``signing.py``)
==================  ==========================================================================

What a receiver can derive is not sent: a message that starts a conversation and a trace carries
only its id and time (and the RPC and user headers), which keeps frames and AMQP tables small;
``Message.from_headers`` fills the rest in the same way on every backend.

User headers travel under their own names beside these. A user header may not take a standard name,
nor a name a transport keeps for itself (``x-attempt``, RabbitMQ's ``x-death`` family, NATS's
``Nats-*``), in any letter case: ``new_headers`` raises ``InvalidHeader`` naming it. On receipt the
same rule sorts headers back: standard ones fill the ``Message`` fields, transport ones are dropped,
the rest are ``Message.headers``.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import random
import re
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import NamedTuple, Protocol

import msgspec

from microagent.backends import reserving_backend
from microagent.errors import MicroAgentError
from microagent.limits import MAX_HEADER_VALUE

__all__ = [
    'ATTEMPT', 'CORRELATION_ID', 'GROUP_SENDER', 'MESSAGE_ID', 'REPLY_TO', 'REQUEST_ID', 'RPC_ERROR', 'SENT_AT',
    'SIGNATURE', 'STANDARD_HEADERS', 'TRACEPARENT', 'TRACESTATE', 'Conversation', 'Envelope', 'Incoming',
    'InvalidHeader', 'Lazy', 'Message', 'check_user_headers', 'current_message', 'current_var', 'handling',
    'is_reserved', 'new_headers', 'new_headers_many', 'new_message_id', 'new_traceparent', 'parse_traceparent',
    'reset_current_message', 'sent_at_of', 'set_current_message',
]

MESSAGE_ID = 'message-id'
CORRELATION_ID = 'correlation-id'
SENT_AT = 'sent-at'
ATTEMPT = 'attempt'
TRACEPARENT = 'traceparent'
TRACESTATE = 'tracestate'
REPLY_TO = 'reply-to'
REQUEST_ID = 'request-id'
RPC_ERROR = 'rpc-error'
SIGNATURE = 'signature'
#: a signal's sender, where a group's store keeps it beside the headers (a stored envelope has no channel)
GROUP_SENDER = 'x-sender'
STANDARD_HEADERS = frozenset({MESSAGE_ID, CORRELATION_ID, SENT_AT, ATTEMPT, TRACEPARENT, TRACESTATE,
                              REPLY_TO, REQUEST_ID, RPC_ERROR, SIGNATURE, GROUP_SENDER})

NO_HEADERS: Mapping[str, str] = MappingProxyType({})

# printable ASCII without space and ':', at most 255 (an AMQP field name): valid on AMQP, NATS and HTTP
_HEADER_NAME = re.compile(r'[!-9;-~]{1,255}')
_TRACEPARENT = re.compile(r'([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?', re.DOTALL)
_HEX32 = re.compile(r'[0-9a-f]{32}')
_ZERO_TRACE = '0' * 32
_ZERO_SPAN = '0' * 16
_SAMPLED = '01'


class InvalidHeader(MicroAgentError, ValueError):
    """A user header given on send has a bad name or value, or takes a reserved name."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        super().__init__(f'header {name!r}: {reason}')


class Envelope(NamedTuple):
    """A message as transports carry it: the JSON body and its headers (None: a bare 1.x body, or a
    transport's partial view of one, e.g. only ``request-id`` and ``reply-to`` from a 1.x channel)."""

    body: bytes
    headers: Mapping[str, str] | None = None


def is_reserved(name: str) -> bool:
    """True for a header name users may not set: a standard one or one a backend keeps for itself
    (the registry lists them), in any letter case."""
    lower = name.lower()
    return lower in STANDARD_HEADERS or reserving_backend(lower) is not None


# ids and traces

_id_prefix = ''
_id_counter = itertools.count(1)


def _seed_ids() -> None:
    """64 random bits per process (fresh in a forked child) and a counter from a random start make
    ids unique across hosts and within the process, at a fraction of the cost of ``uuid4``. The
    counter half is also a unique span id: it starts in [2**62, 2**63), so it never is zero and
    keeps 16 hex digits."""
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count(2 ** 62 + (int.from_bytes(os.urandom(8)) >> 2) % 2 ** 62)


_seed_ids()
os.register_at_fork(after_in_child=_seed_ids)


def new_message_id() -> str:
    """A new message id: 32 lower-case hex digits."""
    return _id_prefix + '%016x' % next(_id_counter)  # noqa: UP031 - measured faster than f'{n:016x}'


_sent_at_until = 0.0
_sent_at_text = ''


def _sent_at_now() -> str:
    """Now, to the millisecond, formatted once per millisecond: formatting a float costs more than
    the rest of a message's headers."""
    global _sent_at_until, _sent_at_text
    now = time.time()
    if now >= _sent_at_until:
        millis = math.floor(now * 1000)
        _sent_at_text = f'{millis // 1000}.{millis % 1000:03d}'  # truncated: never after now
        _sent_at_until = (millis + 1) / 1000
    return _sent_at_text


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid W3C ``traceparent``, else None (W3C says: ignore it).
    A version above 00 is read by its first four fields, as the recommendation asks."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == 'ff' or (version == '00' and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, flags


def new_traceparent(parent: str | None = None) -> str:
    """A version-00 ``traceparent`` for a new span: in ``parent``'s trace, with its flags, when
    ``parent`` is valid; else the root of a new trace, flagged sampled so tracers downstream record it."""
    parsed = parse_traceparent(parent) if parent else None
    return _child_span(parsed) if parsed else _root_span()


def _child_span(parent: tuple[str, str, str]) -> str:
    return f'00-{parent[0]}-{random.getrandbits(64) or 1:016x}-{parent[2]}'


def _root_span() -> str:
    return f'00-{random.getrandbits(128) or 1:032x}-{random.getrandbits(64) or 1:016x}-{_SAMPLED}'


# the message being handled

class Message(msgspec.Struct, frozen=True, kw_only=True):
    """What a handler gets when it names a keyword parameter ``message: Message``.

    ``attempt`` counts deliveries from 1; ``redelivered`` is True when this delivery may already have
    been (partly) handled: it came back unsettled, after a crash, a lost connection or a stop.
    ``headers`` holds the user headers only, read-only."""

    message_id: str
    correlation_id: str
    sent_at: float
    attempt: int = 1
    redelivered: bool = False
    traceparent: str | None = None
    tracestate: str | None = None
    reply_to: str | None = None
    request_id: str | None = None
    headers: Mapping[str, str] = NO_HEADERS

    @property
    def trace_id(self) -> str | None:
        """The W3C trace id (32 hex digits), for logs; None without a valid ``traceparent``."""
        parsed = parse_traceparent(self.traceparent) if self.traceparent else None
        return parsed[0] if parsed else None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None, *, attempt: int | None = None,
                     redelivered: bool = False) -> Message:
        """The message received with ``headers``; never raises. ``attempt`` is the transport's count
        (it wins over the header). What the sender did not say (a 1.x body has no headers) or said
        wrongly is filled in: a fresh message id, the correlation id = the message id, ``sent_at`` =
        now, attempt 1, with a message id of 32 hex digits the trace it starts (as ``new_headers``
        leaves them out); an invalid ``traceparent`` is dropped with its ``tracestate``, as W3C asks."""
        if not headers:
            message_id = new_message_id()
            return cls(message_id=message_id, correlation_id=message_id, sent_at=time.time(),
                       attempt=attempt or 1, redelivered=redelivered)
        message_id = headers.get(MESSAGE_ID) or new_message_id()
        traceparent = headers.get(TRACEPARENT)
        if traceparent is None and MESSAGE_ID in headers and _HEX32.fullmatch(message_id):
            traceparent = f'00-{message_id}-{message_id[16:]}-{_SAMPLED}'  # the root the sender left out
        if traceparent is not None and parse_traceparent(traceparent) is None:
            traceparent = None
        user = {name: value for name, value in headers.items()
                if name not in STANDARD_HEADERS and not is_reserved(name)}  # the common case first, cheaply
        return cls(
            message_id=message_id,
            correlation_id=headers.get(CORRELATION_ID) or message_id,
            sent_at=_sent_at(headers.get(SENT_AT)),
            attempt=attempt or _attempt(headers.get(ATTEMPT)),
            redelivered=redelivered,
            traceparent=traceparent,
            tracestate=headers.get(TRACESTATE) if traceparent else None,
            reply_to=headers.get(REPLY_TO),
            request_id=headers.get(REQUEST_ID),
            headers=MappingProxyType(user) if user else NO_HEADERS,
        )


def _sent_at(value: str | None) -> float:
    sent_at = sent_at_of(value)
    return time.time() if sent_at is None else sent_at


def sent_at_of(value: str | None) -> float | None:
    """A ``sent_at`` header's time, or None when it is missing or not a finite number."""
    try:
        sent_at = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return sent_at if math.isfinite(sent_at) else None


def _attempt(value: str | None) -> int:
    try:
        attempt = int(value) if value is not None else 1
    except ValueError:
        attempt = 1
    return max(attempt, 1)


class Incoming:
    """The message being handled, as the engine sets it: the received headers, read into a
    ``Message`` only on first use (a handler that asks for ``message`` or sends while handling), so
    a handler that does neither costs no header parsing."""

    __slots__ = ('_message', 'attempt', 'headers', 'redelivered')

    def __init__(self, headers: Mapping[str, str] | None, attempt: int = 1, redelivered: bool = False) -> None:
        self.headers = headers
        self.attempt = attempt
        self.redelivered = redelivered
        self._message: Message | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name) if self.headers else None

    @property
    def message(self) -> Message:
        message = self._message
        if message is None:
            message = self._message = Message.from_headers(self.headers, attempt=self.attempt,
                                                           redelivered=self.redelivered)
        return message


class Conversation(Incoming):
    """What is current while a periodic or cron run goes: no message, but a conversation (and,
    read on first use, its id) that the messages the run sends share; logs show no message id."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(None)


class Lazy(Protocol):
    """Anything that reads into the ``Message`` being handled on first use and keeps it (``Incoming``,
    a broker transport's ``Delivery``), so setting it current costs nothing but the set."""

    @property
    def message(self) -> Message: ...

    def header(self, name: str) -> str | None:
        """One header as received, without reading the whole message."""


_current: ContextVar[Message | Lazy | None] = ContextVar('microagent_message', default=None)
#: the engines' handle on the current message: ``token = current_var.set(...)``, ``current_var.reset(token)``
current_var = _current


def current_message() -> Message | None:
    """The message whose handler is running in this context, if any."""
    current = _current.get()
    return current if current is None or isinstance(current, Message) else current.message


def set_current_message(message: Message | Lazy | None) -> Token[Message | Lazy | None]:
    """Make ``message`` the current one (the engine does, around a handler); undo with the token."""
    return _current.set(message)


def reset_current_message(token: Token[Message | Lazy | None]) -> None:
    _current.reset(token)


class _Handling:
    __slots__ = ('message', 'token')

    def __init__(self, message: Message) -> None:
        self.message = message
        self.token: Token[Message | Lazy | None] | None = None

    def __enter__(self) -> Message:
        self.token = _current.set(self.message)
        return self.message

    def __exit__(self, *exc_info: object) -> None:
        if self.token is not None:
            _current.reset(self.token)


def handling(message: Message) -> _Handling:
    """``with handling(message): await handler(...)``: messages sent inside inherit its correlation
    id and trace. Tasks the handler starts copy the context, so they inherit it too."""
    return _Handling(message)


# outgoing headers

def new_headers(user_headers: Mapping[str, str] | None = None, *, reply_to: str | None = None,
                request_id: str | None = None, checked: bool = False) -> dict[str, str]:
    """The headers of a message about to be sent: a new id, now, attempt 1, the correlation id and a
    child span of the current message's trace (or a new conversation and trace root), the RPC
    addresses given, then the user headers (checked first, unless ``checked`` says the caller did:
    ``InvalidHeader`` on a bad one).

    This runs on every send, so it is kept cheap: no random numbers, the span id is the counter
    half of the message id, and a new trace's id is the message id (both unique, never zero)."""
    if user_headers and not checked:
        check_user_headers(user_headers)
    message_id = _id_prefix + '%016x' % next(_id_counter)  # noqa: UP031 - new_message_id(), inline (hot path)
    current = _current.get()
    if current is None:  # a new conversation and trace, both named by the message id: nothing to send
        headers = {MESSAGE_ID: message_id, SENT_AT: _sent_at_now()}
    else:
        headers = _inherited(current if isinstance(current, Message) else current.message, message_id)
    if reply_to is not None:
        headers[REPLY_TO] = reply_to
    if request_id is not None:
        headers[REQUEST_ID] = request_id
    if user_headers:
        headers.update(user_headers)
    return headers


def _inherited(current: Message, message_id: str) -> dict[str, str]:
    """The headers of a message sent while ``current`` is handled: its conversation, a child span."""
    headers = {MESSAGE_ID: message_id, CORRELATION_ID: current.correlation_id, SENT_AT: _sent_at_now()}
    parent = _parse_cached(current.traceparent) if current.traceparent else None
    if parent is not None:  # else this message starts a trace, named by its id: nothing to send
        headers[TRACEPARENT] = f'00-{parent[0]}-{message_id[16:]}-{parent[2]}'
        if current.tracestate:
            headers[TRACESTATE] = current.tracestate
    return headers


def new_headers_many(count: int, user_headers: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """``count`` times ``new_headers(user_headers)`` for a batch sent at once (``user_headers``
    already checked), at about two thirds of the cost: what the messages share (the time, the
    conversation, the trace, the user headers) is worked out once."""
    sent_at = _sent_at_now()
    current = current_message()
    prefix, counter = _id_prefix, _id_counter
    extra: dict[str, str] = dict(user_headers) if user_headers else {}
    parent = _parse_cached(current.traceparent) if current is not None and current.traceparent else None
    if current is None:
        batch = [{MESSAGE_ID: prefix + '%016x' % next(counter), SENT_AT: sent_at}  # noqa: UP031 - as new_headers
                 for _ in range(count)]
    elif parent is None:
        correlation_id = current.correlation_id
        batch = [{MESSAGE_ID: prefix + '%016x' % next(counter),  # noqa: UP031 - as new_headers
                  CORRELATION_ID: correlation_id, SENT_AT: sent_at} for _ in range(count)]
    else:
        trace, flags, correlation_id = parent[0], parent[2], current.correlation_id
        batch = [{MESSAGE_ID: (mid := prefix + '%016x' % next(counter)),  # noqa: UP031 - as new_headers
                  CORRELATION_ID: correlation_id, SENT_AT: sent_at,
                  TRACEPARENT: f'00-{trace}-{mid[16:]}-{flags}'} for _ in range(count)]
        if current.tracestate:
            extra = {TRACESTATE: current.tracestate, **extra}
    if extra:
        for headers in batch:
            headers.update(extra)
    return batch


_parse_cached = functools.lru_cache(maxsize=1024)(parse_traceparent)


def check_user_headers(headers: Mapping[str, str]) -> None:
    """Raise ``InvalidHeader`` for the first user header with a bad or reserved name or a bad value."""
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise InvalidHeader(str(name), 'a header name is 1 to 255 printable ASCII characters, '
                                           'without spaces or ":"')
        if name.lower() in STANDARD_HEADERS:
            raise InvalidHeader(name, 'is a standard header that microagent sets itself; '
                                      'a user header may not override it')
        if (backend := reserving_backend(name.lower())) is not None:
            raise InvalidHeader(name, f'is reserved for transports: the {backend.name} backend writes it itself')
        if not isinstance(value, str):
            raise InvalidHeader(name, f'a header value is a str, not {type(value).__name__}')
        if '\r' in value or '\n' in value:
            raise InvalidHeader(name, 'a header value may not contain a line break')
        if len(value) * 4 > MAX_HEADER_VALUE and (size := len(value.encode('utf-8', 'surrogatepass'))) \
                > MAX_HEADER_VALUE:
            raise InvalidHeader(name, f'a header value is at most {MAX_HEADER_VALUE} bytes (UTF-8), '
                                      f'this one has {size}')
