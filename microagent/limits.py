"""Bounds on what one send may ask for, checked by the engines before anything is published, so
every backend refuses the same things with the same words, naming the signal or queue and the limit.

- ``delay`` is a finite number of seconds, ``0 <= delay <= MAX_DELAY`` (366 days): NaN, infinity,
  a negative number or a bool is a mistake the backends would each misread differently.
- an RPC ``timeout`` is a finite number of seconds > 0.
- a user header value is at most ``MAX_HEADER_VALUE`` bytes (UTF-8): headers are small metadata.
- a ``priority`` is an int from 0 to the queue's ``priorities`` - 1, on a queue declared with
  ``priorities`` only.
- the whole message (body, plus the names and values of its headers) is at most the bus's or
  broker's ``max_message_size``: headers travel inside the same frame or packet as the body.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from microagent.errors import InvalidArgument, InvalidPayload, UsageError

#: the longest ``delay`` a send takes, in seconds (366 days)
MAX_DELAY = 366 * 24 * 3600.0
#: the largest value of one user header, in bytes (UTF-8)
MAX_HEADER_VALUE = 8 * 1024


def _finite_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def check_delay(target: str, delay: object) -> float:
    """``delay`` as a float, or ``InvalidArgument`` naming ``target`` ("queue 'mailer'") and the bounds."""
    if not _finite_number(delay) or not 0 <= delay <= MAX_DELAY:  # type: ignore[operator]
        raise InvalidArgument(f'{target}: delay must be a finite number of seconds from 0 to {MAX_DELAY:.0f} '
                              f'(366 days), got {delay!r}')
    return float(delay)  # type: ignore[arg-type]


def check_timeout(target: str, timeout: object) -> float:
    """``timeout`` as a float, or ``InvalidArgument`` naming ``target`` unless it is finite and > 0."""
    if not _finite_number(timeout) or not timeout > 0:  # type: ignore[operator]
        raise InvalidArgument(f'{target}: timeout must be a finite number of seconds > 0, got {timeout!r}')
    return float(timeout)  # type: ignore[arg-type]


def check_priority(queue: str, priority: object, priorities: int | None) -> int:
    """``priority`` if the queue ``queue`` (declared with ``priorities`` levels) has that level, else
    ``InvalidArgument`` naming the queue and its levels (``UsageError``, a TypeError, for a queue
    without levels: no value would do)."""
    if priorities is None:
        raise UsageError(f"queue {queue!r}: priority={priority!r}, but the queue has no priority levels "
                         "(declare it with Queue(..., priorities=n))")
    if type(priority) is not int or not 0 <= priority < priorities:
        raise InvalidArgument(f'queue {queue!r}: priority must be an int from 0 to {priorities - 1} (the queue has '
                              f'{priorities} levels, higher first), got {priority!r}')
    return priority


def headers_size(headers: Mapping[str, str]) -> int:
    """The bytes the names and values of ``headers`` take (UTF-8)."""
    size = 0
    for name, value in headers.items():
        size += len(name) + (len(value) if value.isascii() else len(value.encode('utf-8', 'surrogatepass')))
    return size


def check_message_size(kind: str, name: str, body: bytes, headers: Mapping[str, str] | None, limit: int) -> None:
    """``InvalidPayload`` naming the ``kind`` ('queue', 'signal', 'exchange') and ``name`` when ``body``
    and ``headers`` together exceed ``limit`` bytes. Paid on every send: the common case is two sums."""
    if headers is None:
        return  # the body alone was checked when it was encoded
    chars = sum(map(len, headers)) + sum(map(len, headers.values()))
    if len(body) + 4 * chars <= limit:  # within the limit even if every character took 4 bytes
        return
    size = len(body) + headers_size(headers)
    if size > limit:
        raise InvalidPayload(f'{kind} {name!r}', [f'message of {size} bytes (body {len(body)}, headers '
                                                  f'{size - len(body)}) exceeds max_message_size of {limit} bytes'])
