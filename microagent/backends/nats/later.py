"""The holding stream of a queue, ``MQ-t-later`` on ``mq.t.later``: delayed sends and retries wait
there, each with its due time in ``x-due``. While a process consumes the queue, its mover moves due
messages into ``mq.t`` and NAKs the others with the time left as delay, so the server holds them,
not a timer of ours. A due time that is no finite number of seconds since the epoch, at most
``MAX_AHEAD`` from now (``inf``, ``nan``, ``1e300``, ``-5``, ``abc``, written by a plain producer or an
older sender), is no delay anyone can wait for: that message is dead-lettered with the reason, and
the rest of its batch moves on.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from nats.aio.msg import Msg

from microagent.backends.nats.acks import Acks
from microagent.backends.nats.headers import (
    ATTEMPT_HEADER,
    DEAD_AT_HEADER,
    DUE_HEADER,
    REASON_HEADER,
    Headers,
    attempt,
    one_line,
    stored,
)
from microagent.backends.nats.layout import CONSUMER, Layout
from microagent.backends.nats.levels import subject_of
from microagent.backends.nats.limits import fitting_reason
from microagent.backends.nats.link import Link
from microagent.backends.nats.pull import Puller

MOVE_BATCH = 100
MAX_AHEAD = 10 * 365 * 86400.0  # seconds: a due time further ahead is taken for a broken one


def due(delay: float) -> Headers:
    """The header of a message due in ``delay`` seconds."""
    return {DUE_HEADER: repr(time.time() + delay)}


async def move(link: Link, acks: Acks, log: logging.Logger, queue: str, priorities: int | None = None) -> None:
    """Move due delayed messages and retries into the queue; NAK the others until they are due."""
    layout = Layout.of(queue)
    while True:
        later: Puller | None = None
        try:
            client = await link.client()
            later = Puller(client, layout.later_stream, CONSUMER)
            await later.start()
            while True:
                msgs = await later.fetch(MOVE_BATCH, 5.0)
                if msgs:
                    await move_due(acks, layout, msgs, client.max_payload, priorities)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning('Queue %s: moving delayed messages failed (%s: %s); trying again',
                        queue, type(exc).__name__, link.scrub(exc))
            await asyncio.sleep(1.0)
        finally:
            if later is not None:
                with contextlib.suppress(Exception):  # a dead connection took it along
                    await later.close()


async def move_once(link: Link, acks: Acks, layout: Layout, priorities: int | None) -> None:
    """Move what is due now (up to ``MOVE_BATCH``), once: a consumer that starts does, so its first
    fetch sees the retries and delayed sends that came due while nobody consumed (at their level)."""
    client = await link.client()
    later = Puller(client, layout.later_stream, CONSUMER)
    await later.start()
    try:
        msgs = await later.fetch(MOVE_BATCH, 1.0, wait=False)
        if msgs:
            await move_due(acks, layout, msgs, client.max_payload, priorities)
    finally:
        with contextlib.suppress(Exception):
            await later.close()


def _due_at(headers: dict[str, str] | None, now: float) -> float | str:
    """The due time of a held message (none: due now), or why it is not one."""
    text = (headers or {}).get(DUE_HEADER)
    if text is None:
        return 0.0
    try:
        at = float(text)
    except ValueError:
        at = math.nan
    if math.isfinite(at) and 0 <= at <= now + MAX_AHEAD:
        return at
    return (f'{DUE_HEADER} {text[:64]!r} is not a due time (a finite number of seconds since the epoch, '
            f'at most {MAX_AHEAD:.0f}s ahead)')


async def move_due(acks: Acks, layout: Layout, msgs: list[Msg], max_payload: int,
                   priorities: int | None = None) -> None:
    """Move the due ones of ``msgs`` into the queue (at their priority level), dead-letter those
    with a broken due time, NAK the others with the time they still have to wait."""
    now = time.time()
    done: list[Msg] = []  # stored again, in the queue or the dead letters: acked after
    items: list[tuple[str, bytes, Headers | None]] = []
    for msg in msgs:
        at = _due_at(msg.headers, now)
        if isinstance(at, str):
            headers = {**stored(msg.headers), ATTEMPT_HEADER: str(attempt(msg.headers)), DEAD_AT_HEADER: repr(now)}
            headers[REASON_HEADER] = fitting_reason(one_line(at), msg.data, headers, REASON_HEADER, max_payload)
            items.append((layout.dead_subject, msg.data, headers))
        elif at > now:
            await msg.nak(delay=at - now)
            continue
        else:
            items.append((subject_of(layout, msg.headers, priorities), msg.data, stored(msg.headers) or None))
        done.append(msg)
    if items:
        await acks.publish(items, f'stream {layout.stream!r}')
        for msg in done:
            await msg.ack()
