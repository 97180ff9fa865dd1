"""The wire mapping of the RabbitMQ backend: AMQP basic properties and headers table <-> the
envelope's headers, shared by the queue and the bus transports.

The envelope's headers are the AMQP headers table; ``message-id`` is also the ``message_id``
property (and on queues ``correlation-id`` the ``correlation_id`` one), so plain AMQP clients see
them where they look. The backend's own bookkeeping sits beside them in ``x-attempt``, ``x-reason``
and ``x-dead-at``, and RabbitMQ's dead-lettering adds ``x-death`` and the like: none of them is ever
shown to users as a header. Every such name is spelled here, once.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pamqp import commands as spec

from microagent.errors import UsageError
from microagent.message import CORRELATION_ID, MESSAGE_ID

#: this backend's own bookkeeping: the attempt a delivery is (1 on a first delivery), why a message
#: was retried or dead-lettered, and when (epoch seconds) it was dead-lettered
ATTEMPT_HEADER = 'x-attempt'
REASON_HEADER = 'x-reason'
DEAD_AT_HEADER = 'x-dead-at'
BACKEND_HEADERS = frozenset((ATTEMPT_HEADER, REASON_HEADER, DEAD_AT_HEADER))
#: RabbitMQ's own: its dead-lettering history (read for a quorum queue's delivery limit)
DEATH_HEADER = 'x-death'
#: what RabbitMQ and its plugins add to a table (the delayed-message exchange, quorum queue
#: redelivery counts, the first and last dead-lettering)
SERVER_HEADERS = frozenset((DEATH_HEADER, 'x-delay', 'x-delivery-count',
                            'x-first-death-exchange', 'x-first-death-queue', 'x-first-death-reason',
                            'x-last-death-exchange', 'x-last-death-queue', 'x-last-death-reason'))
#: names in a headers table that are this backend's or RabbitMQ's bookkeeping, not the envelope's
OWN_HEADERS = BACKEND_HEADERS | SERVER_HEADERS

CONTENT_TYPE = 'application/json'
PERSISTENT = 2
#: properties a retry, a dead letter or a requeue carries over (the headers table is rebuilt; an
#: ``expiration`` would race the delay queue's TTL)
_CARRIED = ('content_type', 'content_encoding', 'priority', 'correlation_id', 'reply_to', 'message_id',
            'timestamp', 'message_type', 'user_id', 'app_id', 'cluster_id')
_PROPERTY_NAMES = frozenset(('content_type', 'content_encoding', 'headers', 'delivery_mode', 'priority',
                             'correlation_id', 'reply_to', 'expiration', 'message_id', 'timestamp',
                             'message_type', 'user_id', 'app_id', 'cluster_id'))


def table(properties: spec.Basic.Properties) -> dict[str, Any]:
    return dict(properties.headers or {})


def fresh_table(properties: spec.Basic.Properties) -> dict[str, Any]:
    """The headers table without the ones this backend and RabbitMQ's dead-lettering add."""
    return {k: v for k, v in (properties.headers or {}).items() if k not in OWN_HEADERS}


def received_headers(properties: spec.Basic.Properties, message_id: bool = True) -> dict[str, str]:
    """The envelope's headers in a delivery: the table's text values but the bookkeeping, plus (with
    ``message_id``) that property as ``message-id`` where the table has none (a 1.x or foreign sender),
    so a queued 1.x message keeps one id across its retries."""
    headers_table = properties.headers
    headers = ({k: v for k, v in headers_table.items() if type(v) is str and k not in OWN_HEADERS}
               if headers_table else {})
    if message_id and MESSAGE_ID not in headers and properties.message_id:
        headers[MESSAGE_ID] = properties.message_id
    return headers


def send_properties(headers: Mapping[str, Any] | None = None) -> spec.Basic.Properties:
    """Persistent JSON with the envelope's headers as the table, its ids also as properties."""
    if not headers:
        return spec.Basic.Properties(content_type=CONTENT_TYPE, delivery_mode=PERSISTENT)
    return spec.Basic.Properties(content_type=CONTENT_TYPE, delivery_mode=PERSISTENT,
                                 headers=headers if type(headers) is dict else dict(headers),
                                 message_id=headers.get(MESSAGE_ID), correlation_id=headers.get(CORRELATION_ID))


def carried(delivered: spec.Basic.Properties, headers: dict[str, Any]) -> spec.Basic.Properties:
    """The properties of a delivery, for moving it on (retry, dead letter, requeue) with the table
    ``headers``."""
    values = {name: getattr(delivered, name) for name in _CARRIED}
    return spec.Basic.Properties(delivery_mode=PERSISTENT, headers=headers or None, **values)


def user_properties(queue: str, headers: Mapping[str, str] | None, given: Mapping[str, Any]) -> spec.Basic.Properties:
    """Our defaults (JSON, persistent, the envelope's headers and ids) overridden by the 1.x
    ``properties`` send keyword, as given: its ``headers`` are the table. aioamqp's ``type`` is
    pamqp's ``message_type``. An unknown property is a TypeError, not a dropped one."""
    values = {('message_type' if key == 'type' else key): value for key, value in given.items()}
    unknown = sorted(set(values) - _PROPERTY_NAMES)
    if unknown:
        raise UsageError(f'queue {queue!r}: unknown AMQP properties {", ".join(map(repr, unknown))}')
    defaults: dict[str, Any] = {'content_type': CONTENT_TYPE, 'delivery_mode': PERSISTENT}
    if headers:
        defaults.update(headers=dict(headers), message_id=headers.get(MESSAGE_ID),
                        correlation_id=headers.get(CORRELATION_ID))
    return spec.Basic.Properties(**{**defaults, **values})
