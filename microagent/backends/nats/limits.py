"""Message sizes on NATS: a whole message (body and encoded header block) must fit the server's
``max_payload`` (from the server's INFO at connect, 1 MiB by default). The server answers a larger
one with a protocol error and closes the connection, so a message is measured before it is sent and
refused at once with ``InvalidPayload`` naming its queue or signal and the limits (the engine
holds the body alone to ``max_message_size``, before the transport sees it).

A send to a queue keeps ``ROOM`` bytes free under ``max_payload`` for this backend's own headers
(``x-attempt``, ``x-due``, ``x-redelivered``, ``x-dead-at``; a dead letter's ``x-reason`` is cut to
what is left), so a message that was accepted can always be retried, released and dead-lettered.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from microagent.errors import InvalidPayload

__all__ = ['ROOM', 'check_sizes', 'fits', 'fitting_reason', 'wire_size']

ROOM = 512
_BLOCK = len(b'NATS/1.0\r\n\r\n')  # the first line of a header block and the blank line ending it
_LINE = len(b': \r\n')


def wire_size(body: bytes, headers: Mapping[str, str] | None) -> int:
    """The bytes the server counts against ``max_payload``: the body and the header block."""
    if not headers:
        return len(body)
    return len(body) + _BLOCK + sum(len(k.encode()) + len(v.encode()) + _LINE for k, v in headers.items())


def fits(body: bytes, headers: Mapping[str, str] | None, limit: int) -> bool:
    """True when the message is surely within ``limit``: even if every header character took 4 bytes
    (UTF-8's most). Every send pays this, so it encodes nothing; ``wire_size`` measures the rest."""
    if not headers:
        return len(body) <= limit
    chars = sum(map(len, headers)) + sum(map(len, headers.values()))
    return len(body) + _BLOCK + _LINE * len(headers) + 4 * chars <= limit


def check_sizes(what: str, items: Iterable[tuple[bytes, Mapping[str, str] | None]], max_message_size: int | None,
                max_payload: int, room: int = 0) -> None:
    """Raise ``InvalidPayload`` naming ``what`` and the limits when a message of ``items`` with its
    headers is larger than ``max_payload - room``; nothing is sent then. The body alone is held to
    ``max_message_size`` by the engine (named in the error too, as the limit a user sets)."""
    limit = max_payload - room
    for body, headers in items:
        if fits(body, headers, limit):
            continue
        size = wire_size(body, headers)
        if size > limit:
            kept = f' less {room} bytes kept for the queue\'s own headers' if room else ''
            raise InvalidPayload(what, [
                f'message of {size} bytes (body {len(body)}, headers {size - len(body)}) exceeds the limit of '
                f'{limit} bytes (server max_payload {max_payload}{kept}; max_message_size {max_message_size} '
                f'holds the body)'])


def fitting_reason(reason: str, body: bytes, headers: Mapping[str, str], name: str, max_payload: int) -> str:
    """``reason`` cut so that ``headers`` with it under ``name`` still fit ``max_payload``."""
    free = max_payload - wire_size(body, headers) - len(name) - _LINE - (0 if headers else _BLOCK)
    data = reason.encode()
    return reason if len(data) <= free else data[:max(free, 0)].decode(errors='ignore')
