"""The arguments a queue, its dead letters and its delay queues are declared with on RabbitMQ, by
queue type.

Classic queues are declared exactly as before quorum queues existed (no arguments), so existing
deployments and 1.x peers declare the same queue. A quorum queue ``mailer`` is replicated (Raft)
and dead-letters by itself what comes back unacknowledged more than ``delivery_limit`` times (a
consumer that crashes on it every time) into ``mailer.dead``, the exchange the engine's own dead
letters go to; at-least-once where the server has it (3.10+: the message leaves ``mailer`` only once
``mailer.dead`` has it, which needs ``x-overflow: reject-publish``). Its dead-letter queue and delay
queues are quorum too, so a message is replicated wherever it waits.

A queue declared with ``priorities`` is a classic queue with ``x-max-priority`` (its delay and dead
letter queues need none: RabbitMQ keeps the ``priority`` property of what they hold, and the queue
orders it when it comes back). Quorum queues are refused: RabbitMQ gives them two levels served
2:1, not the strict priority the other backends keep.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import aiormq
from pamqp.common import FieldTable

from microagent.errors import DeclarationError
from microagent.queue import QueueType

#: a quorum queue's default delivery limit: RabbitMQ 4's own default. It counts every return of an
#: unacknowledged message (a crash, a lost connection, a consumer stopping with it prefetched), so
#: it sits well above ``max_retries``, which counts handler failures (retried through delay queues,
#: never returned).
DEFAULT_DELIVERY_LIMIT = 20


def server_version(properties: FieldTable | None) -> tuple[int, ...]:
    """RabbitMQ's version from the connection's server properties, (0,) when unknown."""
    raw = (properties or {}).get('version', b'')
    text = raw.decode(errors='replace') if isinstance(raw, bytes) else str(raw)
    return tuple(int(part) for part in re.findall(r'\d+', text)[:3]) or (0,)


@dataclass(frozen=True)
class QueueArguments:
    """The declaration arguments for a queue of ``queue_type`` on a server of ``version``."""

    queue_type: QueueType
    delivery_limit: int | None
    version: tuple[int, ...]
    priorities: int | None = None

    @property
    def quorum(self) -> bool:
        return self.queue_type == 'quorum'

    @property
    def at_least_once(self) -> bool:
        """Whether dead-lettering from a quorum queue can be at-least-once (RabbitMQ 3.10+)."""
        return self.quorum and self.version >= (3, 10)

    def _dead_lettering(self, exchange: str, routing_key: str | None = None) -> FieldTable:
        args: FieldTable = {'x-dead-letter-exchange': exchange}
        if routing_key is not None:
            args['x-dead-letter-routing-key'] = routing_key
        if self.at_least_once:
            args.update({'x-dead-letter-strategy': 'at-least-once', 'x-overflow': 'reject-publish'})
        return args

    def main(self, dead_exchange: str) -> FieldTable | None:
        """The queue itself: nothing for a classic one (as it always was), but its priority levels."""
        if not self.quorum:
            return None if self.priorities is None else {'x-max-priority': self.priorities - 1}
        args: FieldTable = {'x-queue-type': 'quorum', **self._dead_lettering(dead_exchange)}
        if self.delivery_limit is not None:
            args['x-delivery-limit'] = self.delivery_limit
        return args

    def dead(self) -> FieldTable | None:
        """The dead-letter queue. Listing it returns messages to it; RabbitMQ 4 counts those returns
        against a default limit of 20, so there the limit is lifted (-1); 3.x has none."""
        if not self.quorum:
            return None
        args: FieldTable = {'x-queue-type': 'quorum'}
        if self.version >= (4,):
            args['x-delivery-limit'] = -1
        return args

    def retry(self, queue: str, ttl_ms: int, expires_ms: int) -> FieldTable:
        """A delay queue: holds messages ``ttl_ms``, then dead-letters them back into ``queue``."""
        args: FieldTable = {'x-message-ttl': ttl_ms, 'x-expires': expires_ms, **self._dead_lettering('', queue)}
        if self.quorum:
            args['x-queue-type'] = 'quorum'
        return args


_CURRENT = re.compile(r"current is the value '([^']*)'")


def existing_type(exc: aiormq.ChannelPreconditionFailed) -> str | None:
    """The type an existing queue has, when RabbitMQ's refusal is about ``x-queue-type``."""
    text = str(exc)
    if "'x-queue-type'" not in text:
        return None
    found = _CURRENT.search(text)
    return found[1] if found else 'classic'  # "current is none": a classic queue


def declaration_error(name: str, wanted: QueueArguments, exc: aiormq.ChannelPreconditionFailed,
                      existing: str | None = None) -> DeclarationError:
    """A clear error for a queue that exists with other arguments (RabbitMQ cannot change a
    queue's type or arguments in place: a new queue, or a policy, is the way). ``existing``: the
    type it was found to have, if known."""
    text = str(exc)
    if existing is not None and existing != wanted.queue_type:
        return DeclarationError(
            f'queue {name!r} exists on RabbitMQ as a {existing} queue, declared here as {wanted.queue_type}: '
            f'RabbitMQ cannot change the type of a queue; drain it and delete it, or use another name '
            f'({text})')
    limit = f' with delivery limit {wanted.delivery_limit}' if wanted.quorum else ''
    levels = f' with {wanted.priorities} priority levels (x-max-priority {wanted.priorities - 1})' \
        if wanted.priorities is not None else ''
    return DeclarationError(f'queue {name!r} exists on RabbitMQ with other arguments than a {wanted.queue_type} '
                            f'queue{limit}{levels} (another type, another delivery limit, other priorities?): '
                            f'RabbitMQ cannot change them in place; drain it and delete it, or use another name '
                            f'({text})')
