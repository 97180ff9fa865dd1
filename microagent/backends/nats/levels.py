"""Priority levels of a JetStream work queue (``Queue(..., priorities=n)``).

Level 0 is the queue's stream ``MQ-t`` on ``mq.t``, where plain sends and plain NATS producers
publish; level ``k`` >= 1 is a stream of its own, ``MQ-t-p{k}`` on ``mq.t.p{k}``, with its own shared
durable consumer (``layout``). A message sent at a level above 0 carries it in ``x-priority``, so
every move keeps it: a retry or a delayed send waits in ``MQ-t-later`` and the mover stores it back
at its level, a release and a requeued dead letter go back to its level's stream.

A fetch asks the consumers of the levels, highest first, how many messages they have pending (in
parallel, one round trip) and takes from the highest levels that have some (or that a wait left
in hand here), the rest of the batch from the next ones. With nothing pending anywhere it waits on
every level at once, and the first level a message comes to gives the batch.
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from microagent.backends.nats.headers import PRIORITY_HEADER
from microagent.backends.nats.layout import CONSUMER, Layout
from microagent.backends.nats.pull import Puller
from microagent.queue import Queue


def level_of(headers: Mapping[str, str] | None, priorities: int | None) -> int:
    """The level a stored message belongs to: its ``x-priority`` when it is one the queue has, else 0."""
    text = (headers or {}).get(PRIORITY_HEADER)
    if not text or not priorities:
        return 0
    try:
        level = int(text)
    except ValueError:
        return 0
    return level if 0 < level < priorities else 0


def subject_of(layout: Layout, headers: Mapping[str, str] | None, priorities: int | None) -> str:
    """Where a message goes back to: its level's subject."""
    return layout.level_subject(level_of(headers, priorities))


def priorities_of(name: str) -> int | None:
    """The levels of the queue ``name`` as this process declares it (None: not declared with levels)."""
    declared = Queue.get_all().get(name)
    return declared.priorities if declared is not None else None


async def counts(js: JetStreamContext, layout: Layout, levels: int) -> list[tuple[int, int]]:
    """(pending, taken and not acknowledged) of the consumer of each level, 0 first."""
    async def one(level: int) -> tuple[int, int]:
        try:
            info = await js.consumer_info(layout.level_stream(level), CONSUMER)
        except NotFoundError:  # never consumed yet: what its stream holds
            try:
                return int((await js.stream_info(layout.level_stream(level))).state.messages), 0
            except NotFoundError:
                return 0, 0
        return int(info.num_pending), int(info.num_ack_pending)
    return list(await asyncio.gather(*(one(level) for level in range(levels))))


async def pending(js: JetStreamContext, layout: Layout, levels: int) -> list[int]:
    """How many messages wait for the consumer of each level, 0 first."""
    return [ready for ready, _ in await counts(js, layout, levels)]


async def fetch_levels(js: JetStreamContext, layout: Layout, pulls: Sequence[Puller],
                       count: int, timeout: float) -> list[Msg]:
    """Up to ``count`` messages, from the highest levels that have some (``pulls``: one per level, 0 first)."""
    waiting = await pending(js, layout, len(pulls))
    taken: list[Msg] = []
    for level in range(len(pulls) - 1, -1, -1):
        want = min(count - len(taken), waiting[level] + pulls[level].in_hand)
        if want <= 0:
            continue
        # no request left waiting: what it brought later would wait here until the level is asked again
        taken += await pulls[level].fetch(want, 0.5, wait=False)
        if len(taken) >= count:
            break
    if taken:
        return taken
    return await _first(pulls, max(count, 1), max(timeout, 0.01))


async def _first(pulls: Sequence[Puller], count: int, timeout: float) -> list[Msg]:
    """Wait on every level at once for ``timeout``: what the first level to get messages brings
    (with what others brought in the same moment, highest level first). The other waits are
    cancelled; a message their requests bring later stays in hand for the next fetch (``in_hand``)."""
    waits = [asyncio.ensure_future(puller.fetch(count, timeout)) for puller in pulls]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        results = await asyncio.gather(*waits, return_exceptions=True)
    taken = [msg for result in reversed(results) if isinstance(result, list) for msg in result]
    failures = [result for result in results if isinstance(result, Exception)]
    if failures and not taken:
        raise failures[0]
    return taken
