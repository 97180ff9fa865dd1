"""Pipelined JetStream publishes with their acknowledgements: the queue transport's way to store
messages (sends, moves, bindings), a batch in one round trip. No message larger than the server's
``max_payload`` is ever written (see ``limits``): the server would close the connection.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Sequence

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from microagent.backends.nats.headers import STATUS_HEADER, Headers
from microagent.backends.nats.limits import check_sizes
from microagent.backends.nats.link import API_TIMEOUT, Link
from microagent.errors import ConnectionFailed, QueueNotFound


class Acks:
    """Pipelined JetStream publishes: every message is sent with its own reply subject on one inbox
    subscription, then every acknowledgement is awaited, so a batch costs one round trip, in order."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._inbox = f'_INBOX.{uuid.uuid4().hex}'
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._sub: Subscription | None = None
        self._generation = 0  # the link's client the subscription is on
        self._numbers = itertools.count()
        link.on_lost(self._lost)

    def _lost(self, why: str) -> None:
        """The client is gone: what waits for an acknowledgement on it fails now."""
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionFailed(f'{self._link.name}: NATS closed the connection ({why})'))

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def publish(self, items: Sequence[tuple[str, bytes, Headers | None]], what: str) -> None:
        client = await self._link.client()
        check_sizes(what, ((body, headers) for _, body, headers in items), None, client.max_payload)
        if self._sub is None or self._generation != self._link.generation:
            self._generation = self._link.generation
            self._sub = await client.subscribe(f'{self._inbox}.*', cb=self._on_ack)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Msg]] = []
        try:
            for subject, body, headers in items:
                reply = f'{self._inbox}.{next(self._numbers)}'
                future = self._waiting[reply] = loop.create_future()
                futures.append(future)
                await client.publish(subject, body, reply=reply, headers=headers)
            async with asyncio.timeout(API_TIMEOUT):
                answers = [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
        except TimeoutError:
            raise ConnectionFailed(f'{self._link.name}: JetStream did not acknowledge {what} in '
                                   f'{API_TIMEOUT}s') from None
        finally:
            for future in futures:
                future.cancel()
            self._waiting = {k: f for k, f in self._waiting.items() if not f.done()}
        for answer in answers:
            check_ack(answer, what)

    def reset(self) -> None:
        self._sub = None
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()


def check_ack(answer: Msg, what: str) -> None:
    if not answer.data:  # a status message: no stream listens on the subject
        status = (answer.headers or {}).get(STATUS_HEADER, '')
        raise QueueNotFound(f'{what}: no JetStream stream stores it (status {status or "empty"})')
    reply = json.loads(answer.data)
    error = reply.get('error') if isinstance(reply, dict) else None
    if error:
        raise ConnectionFailed(f'{what}: JetStream refused the message: {error.get("description", error)}')
