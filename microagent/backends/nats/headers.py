"""The NATS headers of a stored JetStream message: the envelope's headers, beside this backend's
bookkeeping and the server's own, which are never shown to users as headers. Every such name is
spelled here, once.

A first send carries ``Nats-Msg-Id`` = ``message-id`` (the server stores a repeated send once);
moves (retries, releases, requeued dead letters) carry none. The attempt count travels in
``x-attempt``, a delayed message's due time in ``x-due``, a dead letter's reason and time in
``x-reason`` and ``x-dead-at``, and a released message is marked ``x-redelivered``; a dead letter
requeued to one signal group is marked ``x-group`` (see ``groups``); a message of a priority level
above 0 carries it in ``x-priority`` (see ``levels``).
"""
from __future__ import annotations

from collections.abc import Mapping

from microagent.message import MESSAGE_ID, Envelope
from microagent.transport import DeadLetter

#: this backend's own bookkeeping
ATTEMPT_HEADER = 'x-attempt'
REASON_HEADER = 'x-reason'
DEAD_AT_HEADER = 'x-dead-at'
DUE_HEADER = 'x-due'
REDELIVERED_HEADER = 'x-redelivered'
#: a dead letter requeued to one signal group: the signal's other groups skip it
GROUP_HEADER = 'x-group'
#: the priority level of a message sent with one above 0 (``levels``): kept through every move
PRIORITY_HEADER = 'x-priority'
OWN_HEADERS = frozenset((ATTEMPT_HEADER, REASON_HEADER, DEAD_AT_HEADER, DUE_HEADER, REDELIVERED_HEADER,
                         GROUP_HEADER, PRIORITY_HEADER))
#: the server's: every header whose name starts with ``Nats-`` (in any case), among them the
#: deduplication id of a send
SERVER_PREFIX = 'nats-'
MSG_ID_HEADER = 'Nats-Msg-Id'
#: the status of a message without data from the server (no responders, a timeout)
STATUS_HEADER = 'Status'

Headers = dict[str, str]


def server_header(name: str) -> bool:
    """Whether ``name`` is one of the server's headers (``Nats-`` in any case)."""
    return name[:5].lower() == SERVER_PREFIX


def envelope_headers(headers: Mapping[str, str] | None) -> Headers:
    """The envelope's headers in a stored message: without this backend's and the server's own."""
    if not headers:
        return {}
    return {k: v for k, v in headers.items() if k not in OWN_HEADERS and not server_header(k)}


def attempt(headers: Mapping[str, str] | None) -> int:
    try:
        return max(int((headers or {}).get(ATTEMPT_HEADER, 1)), 1)
    except ValueError:
        return 1


def with_id(headers: Mapping[str, str] | None) -> Headers | None:
    """The headers of a first send: with ``Nats-Msg-Id`` = ``message-id``, for deduplication."""
    if not headers:
        return None
    message_id = headers.get(MESSAGE_ID)
    return {**headers, MSG_ID_HEADER: message_id} if message_id else dict(headers)


def stored(headers: Mapping[str, str] | None) -> Headers:
    """A taken message's headers, for storing it again: the attempt kept, no ``Nats-`` ones."""
    return {k: v for k, v in (headers or {}).items() if not server_header(k)
            and k not in (REASON_HEADER, DEAD_AT_HEADER, DUE_HEADER, REDELIVERED_HEADER)}


def one_line(text: str) -> str:
    """A header value: NATS headers are lines, so line breaks become spaces."""
    return ' '.join(text.splitlines())


def dead_letter(name: str, body: bytes, headers: Mapping[str, str] | None) -> DeadLetter:
    """The ``DeadLetter`` of a stored dead message of queue (or group store) ``name``: its envelope,
    and the reason, attempts and time this backend kept beside it (bad values read as none)."""
    table = headers or {}
    try:
        died = float(table.get(DEAD_AT_HEADER, 0.0))
    except ValueError:
        died = 0.0
    return DeadLetter(name, Envelope(body, envelope_headers(headers) or None), table.get(REASON_HEADER, ''),
                      attempt(headers), died)
