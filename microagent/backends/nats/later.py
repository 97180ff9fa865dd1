"""The holding stream of a queue, ``MQ-t-later`` on ``mq.t.later``: delayed sends and retries wait
there, each with its due time in ``x-due``. While a process consumes the queue, its mover moves due
messages into ``mq.t`` and NAKs the others with the time left as delay, so the server holds them,
not a timer of ours.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from microagent.backends.nats.acks import Acks
from microagent.backends.nats.headers import DUE_HEADER, Headers, stored
from microagent.backends.nats.layout import CONSUMER, Layout
from microagent.backends.nats.link import Link

MOVE_BATCH = 100


def due(delay: float) -> Headers:
    """The header of a message due in ``delay`` seconds."""
    return {DUE_HEADER: repr(time.time() + delay)}


async def move(link: Link, acks: Acks, log: logging.Logger, queue: str) -> None:
    """Move due delayed messages and retries into the queue; NAK the others until they are due."""
    layout = Layout.of(queue)
    while True:
        later: JetStreamContext.PullSubscription | None = None
        try:
            js = await link.jetstream()
            later = await js.pull_subscribe_bind(CONSUMER, layout.later_stream)
            while True:
                try:
                    msgs = await later.fetch(batch=MOVE_BATCH, timeout=5.0)
                except nats.errors.TimeoutError:
                    continue
                await move_due(acks, layout, msgs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning('Queue %s: moving delayed messages failed (%s: %s); trying again',
                        queue, type(exc).__name__, link.scrub(exc))
            await asyncio.sleep(1.0)
        finally:
            if later is not None:
                with contextlib.suppress(Exception):  # a dead connection took it along
                    await later.unsubscribe()


async def move_due(acks: Acks, layout: Layout, msgs: list[Msg]) -> None:
    now = time.time()
    ready: list[Msg] = []
    for msg in msgs:
        try:
            at = float((msg.headers or {}).get(DUE_HEADER, 0.0))
        except ValueError:
            at = 0.0
        if at > now:
            await msg.nak(delay=at - now)
        else:
            ready.append(msg)
    if ready:
        items = [(layout.subject, m.data, stored(m.headers) or None) for m in ready]
        await acks.publish(items, f'stream {layout.stream!r}')
        for msg in ready:
            await msg.ack()
