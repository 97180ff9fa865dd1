"""Pull requests to a durable JetStream consumer, made on one inbox subscription: ``Puller``.

JetStream's pull protocol is a request on ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` with a
batch size, answered by up to that many messages on the request's reply subject and, when fewer
came, a status (404 no messages, 408 the request expired, 409 the consumer went away or changed).
nats-py's ``PullSubscription.fetch`` waits for each message of a batch with a task of its own
(``asyncio.wait_for`` under a uuid name), which costs more than the rest of handling a message;
here a subscription callback appends each message to a deque and a fetch waits once per batch.

A fetch first asks without waiting (``no_wait``: what is there now, at once), and only when nothing
was there leaves a request for one message waiting up to its timeout; the next fetch asks for the
rest without waiting again. So a request that waits never holds more than one message for this
process while others sharing the consumer could take them, and at most one such request is left
when a fetch times out. A message that comes after its fetch gave up stays in hand for the next
fetch (``left`` hands it back on stop). Each request has its own reply subject, so a late status of
an earlier one is told apart from the answer a fetch waits for.
"""
from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from microagent.backends.nats.headers import STATUS_HEADER
from microagent.errors import ConnectionFailed

__all__ = ['Puller', 'times_delivered']

HEARTBEAT = '100'
#: the statuses that end a request without an error: no messages, expired, consumer changed
ENDED = frozenset(('404', '408', '409'))
API_PREFIX = '$JS.API'


def times_delivered(msg: Msg) -> int:
    """How many times the server delivered ``msg``, read from its ack subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>``, or the longer form
    with a domain and an account hash); 1 when it is no such subject. Cheaper than ``msg.metadata``,
    which parses every field."""
    tokens = (msg.reply or '').split('.')
    if tokens[:2] != ['$JS', 'ACK'] or not (len(tokens) == 9 or len(tokens) >= 11):
        return 1
    try:
        count = int(tokens[4] if len(tokens) == 9 else tokens[6])
    except ValueError:
        return 1
    return count if count >= 1 else 1


class Puller:
    """Fetches batches from one durable pull consumer; one fetch at a time (others wait their turn)."""

    def __init__(self, client: Client, stream: str, consumer: str) -> None:
        self.stream, self.consumer = stream, consumer
        self._client = client
        self._subject = f'{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}'
        self._inbox = client.new_inbox()
        self._numbers = itertools.count()
        self._sub: Subscription | None = None
        self._ready: deque[Msg] = deque()
        self._lock = asyncio.Lock()
        # the fetch waiting now: its request's reply subject, how many it wants, and its waiter
        self._asking = ''
        self._want = 0
        self._waiter: asyncio.Future[str] | None = None

    @property
    def in_hand(self) -> int:
        """Messages that came after their fetch gave up, for the next fetch."""
        return len(self._ready)

    async def start(self) -> None:
        self._sub = await self._client.subscribe(f'{self._inbox}.*', cb=self._arrived)

    async def _arrived(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get(STATUS_HEADER) if headers and not msg.data else None
        if status is None:
            self._ready.append(msg)
            if self._waiter is not None and len(self._ready) >= self._want and not self._waiter.done():
                self._waiter.set_result('')
        elif status != HEARTBEAT and msg.subject == self._asking and self._waiter is not None \
                and not self._waiter.done():  # else a status of an earlier request: that one is over
            assert headers is not None
            self._waiter.set_result(status if status in ENDED else f'{status} {headers.get("Description", "")}')

    async def fetch(self, batch: int, timeout: float, *, wait: bool = True) -> list[Msg]:
        """Up to ``batch`` messages: what is in hand, else what the server has now, else (unless not
        ``wait``) the first that come within ``timeout`` seconds; ``[]`` when none did."""
        async with self._lock:
            if not self._ready:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                await self._ask(batch, None, timeout)
                left = deadline - loop.time()
                if wait and not self._ready and left > 0:
                    await self._ask(1, left, left)
            return [self._ready.popleft() for _ in range(min(batch, len(self._ready)))]

    async def _ask(self, batch: int, expires: float | None, timeout: float) -> None:
        """Send one pull request (``no_wait`` when ``expires`` is None) and wait until ``batch``
        messages are in hand, the request ended, or ``timeout`` passed; a status that is no normal
        end is an error naming the consumer."""
        request: dict[str, object] = {'batch': batch}
        if expires is None:
            request['no_wait'] = True
        else:  # it ends a little before the fetch stops waiting
            request['expires'] = max(int(expires * 1e9) - 100_000, 1_000_000)
        self._asking = f'{self._inbox}.{next(self._numbers)}'
        self._want = batch
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await self._client.publish(self._subject, json.dumps(request).encode(), reply=self._asking)
            async with asyncio.timeout(timeout):
                ended = await waiter
        except TimeoutError:
            return
        finally:
            self._waiter, self._asking = None, ''
        if ended and ended not in ENDED:
            raise ConnectionFailed(f'pull from consumer {self.consumer!r} of stream {self.stream!r} refused: {ended}')

    def left(self) -> list[Msg]:
        """What arrived and no fetch took: to hand back."""
        left = list(self._ready)
        self._ready.clear()
        return left

    async def stop(self) -> None:
        """No more messages; what is in hand stays for ``left``."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()

    async def close(self) -> None:
        """Stop, and give what is in hand back to the consumer at once (NAK), not after ``ack_wait``."""
        await self.stop()
        for msg in self.left():
            await self._client.publish(msg.reply, b'-NAK')
