"""What RabbitMQ can hold, checked before anything is sent, so that a message it cannot take is
refused at once with an error naming the queue or signal and the limit, instead of breaking the
connection (and every consumer on it) or a declaration.

* **Properties and headers** travel in one content-header frame, which may not exceed the
  ``frame_max`` negotiated with the server (128 KiB by default): a bigger one makes RabbitMQ close
  the whole connection (``FRAME_ERROR``). The body is split over frames and has no such limit.
* **A delay** is held by a delay queue's ``x-message-ttl`` and that queue's ``x-expires`` (the
  delay plus ``RETRY_QUEUE_IDLE``), counts of milliseconds that older RabbitMQ versions keep below
  2**32 (an Erlang timer; 3.10 takes up to ten years). Every version takes ``MAX_DELAY`` seconds,
  about 49.7 days, the bound kept here.
* **Refused anyway**: when the server closes the connection over what was sent (a frame or syntax
  error), ``refusal`` says so, and the publisher settles that message with ``MessageRefused``
  instead of sending it again.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import aiormq
from aiormq.abc import AbstractChannel
from pamqp import commands as spec
from pamqp import frame, header

from microagent.errors import InvalidArgument

#: the longest a delay queue may hold a message, and how long it lives unused after that
MAX_TIMER_MS = 2**32 - 1
RETRY_QUEUE_IDLE = 60.0
MAX_DELAY = (MAX_TIMER_MS - int(RETRY_QUEUE_IDLE * 1000)) / 1000

#: the bytes of a content-header frame besides the properties: the frame's own header (7) and end
#: (1), class id, weight and body size (12)
_FRAME_OVERHEAD = 20
#: an upper bound of the encoded size of the properties but the headers table (each short string
#: property takes at most 256 bytes)
_OTHER_PROPERTIES = 14 * 257
#: the server closes the connection with these when a frame it was sent is malformed or too large
_PROTOCOL_ERRORS = (aiormq.exceptions.ConnectionFrameError, aiormq.exceptions.ConnectionSyntaxError,
                    aiormq.exceptions.ConnectionUnexpectedFrame)


class Outgoing(Protocol):
    """What is checked of a message to publish (``link.Outgoing``)."""

    @property
    def body(self) -> bytes: ...

    @property
    def properties(self) -> spec.Basic.Properties: ...


class MessageRefused(InvalidArgument):
    """RabbitMQ cannot take this message (its headers exceed the frame size, or the server closed
    the connection over it); nothing of it was delivered."""


def check_delay(delay: float, what: str) -> int:
    """The delay in milliseconds (at least 1), or an error naming ``what`` and the maximum."""
    if not 0 <= delay <= MAX_DELAY:  # also NaN and infinities
        raise InvalidArgument(f'{what}: a delay of {delay:g}s is more than RabbitMQ holds; the maximum is '
                              f'{MAX_DELAY:.0f}s (about {MAX_DELAY / 86400:.1f} days: a delay queue\'s TTL is '
                              f'a 32-bit count of milliseconds)')
    return max(int(delay * 1000), 1)


def header_frame_size(out: Outgoing) -> int:
    """The size in bytes of the content-header frame carrying ``out``'s properties."""
    return len(frame.marshal(header.ContentHeader(0, len(out.body), out.properties), 1))


def _surely_fits(out: Outgoing, frame_max: int) -> bool:
    """A cheap bound, to encode only tables that may be large: text keys and values take at most
    4 bytes a character and 6 bytes of framing each."""
    table = out.properties.headers
    if not table:
        return True
    size = _FRAME_OVERHEAD + _OTHER_PROPERTIES
    for key, value in table.items():
        if type(value) is not str:
            return False
        size += 6 + 4 * (len(key) + len(value))
    return size <= frame_max


def check_frames(messages: Sequence[Outgoing], frame_max: int, what: str) -> None:
    """Refuse the whole batch, before anything is published, when a message's properties and
    headers do not fit in one frame of ``frame_max`` bytes (0: no limit)."""
    if not frame_max:
        return
    for position, out in enumerate(messages):
        if _surely_fits(out, frame_max):
            continue
        size = header_frame_size(out)
        if size > frame_max:
            which = f'message #{position} of {len(messages)}' if len(messages) > 1 else 'a message'
            raise MessageRefused(f'{what}: {which} has headers and properties of {size} bytes encoded; RabbitMQ '
                                 f'takes at most {frame_max} (frame_max, headers must fit in one frame); '
                                 f'nothing was sent')


def fit_reason(properties: spec.Basic.Properties, body: bytes, name: str, reason: str, frame_max: int) -> None:
    """Put ``reason`` in the headers table of ``properties`` under ``name``, cut so that the
    content-header frame stays within ``frame_max`` (0: no limit): a message that only just fitted
    must still be retried or dead-lettered when the backend adds its bookkeeping to it. With no
    room at all the reason is left out; what is left then is the frame check's to refuse."""
    table = properties.headers
    assert table is not None  # the caller's table, with the attempt at least
    table[name] = reason
    out = _Message(body, properties)
    if not frame_max or _surely_fits(out, frame_max):
        return
    table[name] = ''
    free = frame_max - header_frame_size(out)
    data = reason.encode()
    if free < 0:
        del table[name]
    elif len(data) > free:
        table[name] = data[:free].decode(errors='ignore')
    else:
        table[name] = reason


class _Message:
    __slots__ = ('body', 'properties')

    def __init__(self, body: bytes, properties: spec.Basic.Properties) -> None:
        self.body = body
        self.properties = properties


def refusal(exc: BaseException, channel: AbstractChannel) -> BaseException | None:
    """The server's error when it closed the connection over what was sent (a frame or syntax
    error), else None (a connection that merely went away)."""
    if isinstance(exc, _PROTOCOL_ERRORS):
        return exc
    if isinstance(exc, asyncio.CancelledError | aiormq.ChannelInvalidStateError) and channel.is_closed:
        closing = channel.closing
        reason = closing.exception() if closing.done() and not closing.cancelled() else None
        if isinstance(reason, _PROTOCOL_ERRORS):
            return reason
    return None
