"""The send side of signal groups on NATS: ``GroupLayout`` (the names of a group's streams, subjects
and consumer), and ``GroupIndex``: which signals of a bus prefix have groups, learnt once per
connection and followed through JetStream's stream advisories, and the group copy of a send. The
layout and the delivery side are described in ``groups``.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from microagent.backends.nats.acks import Acks
from microagent.backends.nats.headers import MSG_ID_HEADER, Headers, one_line
from microagent.backends.nats.limits import ROOM, check_sizes
from microagent.backends.nats.link import Link, subject_token
from microagent.errors import QueueNotFound
from microagent.message import GROUP_SENDER, MESSAGE_ID, Envelope

__all__ = ['GroupIndex', 'GroupLayout', 'group_streams', 'name_token']

STREAM_PREFIX = 'SG'
SUBJECT_PREFIX = 'sg'
ADVISORY = '$JS.EVENT.ADVISORY.STREAM'
LIST_TIMEOUT = 2.0  # seconds: the one listing of a connection's first send
RELEARN_AFTER = 5.0  # seconds: a listing that failed is tried again this much later (then longer)
NAME_CACHE = 4096  # signal names whose stream and subject an index remembers


def name_token(text: str) -> str:
    """A name as one subject token and stream-name part: ``subject_token`` (``_`` doubled, ``.`` and
    ``-`` escaped), and any other character outside ``[A-Za-z0-9_]`` as ``_U`` + 6 hex digits."""
    token = subject_token(text)
    if token.isascii() and token.replace('_', '').isalnum():
        return token
    return ''.join(c if (c.isascii() and (c.isalnum() or c == '_')) else f'_U{ord(c):06x}' for c in token)


@dataclass(frozen=True)
class GroupLayout:
    """The streams, subjects and consumer of one group of one signal, on one bus prefix."""

    stream: str
    subject: str
    dead_stream: str
    dead_subjects: str
    dead_subject: str
    consumer: str

    @classmethod
    def of(cls, prefix: str, signal: str, group: str) -> GroupLayout:
        tp, tn, tg = name_token(prefix), name_token(signal), name_token(group)
        base = f'{tp}-{tn}'
        subject = f'{SUBJECT_PREFIX}.{tp}.{tn}'
        return cls(f'{STREAM_PREFIX}-{base}', subject, f'{STREAM_PREFIX}-{base}-dead', f'{subject}.dead.*',
                   f'{subject}.dead.{tg}', tg)


class GroupIndex:
    """The signals of one bus prefix that have groups (their streams), learnt once per connection and
    followed through JetStream's stream advisories; and the group copy of a send."""

    def __init__(self, prefix: str, link: Link, log: logging.Logger) -> None:
        self.link = link
        self.log = log
        self._tp = name_token(prefix)
        self._head = f'{STREAM_PREFIX}-{self._tp}-'
        self.streams: set[str] = set()
        self.generation = 0  # the link's client the listing was made on; 0: none yet
        self._names: dict[str, tuple[str, str]] = {}  # signal name -> (stream, subject)
        self._subs: list[Any] = []
        self._subs_generation = 0  # the link's client the advisory subscriptions are on
        self._acks: Acks | None = None
        self._lock = asyncio.Lock()
        self._relisting: asyncio.Task[None] | None = None
        link.on_reconnected(self._forget)

    def _forget(self) -> None:
        """Streams may have come or gone while the connection was down: list them at the next send."""
        self.generation = 0

    def of(self, name: str) -> tuple[str, str]:
        found = self._names.get(name)
        if found is None:
            tn = name_token(name)
            found = (f'{self._head}{tn}', f'{SUBJECT_PREFIX}.{self._tp}.{tn}')
            if len(self._names) < NAME_CACHE:
                self._names[name] = found
        return found

    def _mine(self, stream: str) -> bool:
        """A signal stream of this prefix (not its dead letters): ``SG-tp-tn``."""
        return stream.startswith(self._head) and '-' not in stream[len(self._head):]

    async def _on_advisory(self, msg: Msg) -> None:
        stream = msg.subject.rpartition('.')[2]
        if self._mine(stream):
            if msg.subject.startswith(f'{ADVISORY}.CREATED.'):
                self.streams.add(stream)
            else:
                self.streams.discard(stream)

    async def learn(self, client: Client) -> None:
        """Follow stream advisories, then list this prefix's signal streams: once per connection."""
        async with self._lock:  # the first sends of a connection, at once: one listing
            if self.generation != self.link.generation:
                await self._learn(client)

    async def _learn(self, client: Client) -> None:
        generation = self.link.generation
        if self._subs_generation != generation:
            self._subs_generation = generation
            self._subs = [await client.subscribe(f'{ADVISORY}.{kind}.*', cb=self._on_advisory)
                          for kind in ('CREATED', 'DELETED')]
        try:
            self.streams |= await self._list(client)
        except Exception as exc:  # sends go on without waiting again; the listing is tried in the background
            self.log.warning('%s: cannot list the signal groups (%s: %s); trying again in the background',
                             self.link.name, type(exc).__name__, self.link.scrub(exc))
            if self._relisting is None or self._relisting.done():
                self._relisting = asyncio.create_task(self._relist(client), name='nats-groups-listing')
        self.generation = generation

    async def _list(self, client: Client) -> set[str]:
        """This prefix's signal streams on the server (none without JetStream)."""
        found: set[str] = set()
        offset = 0
        try:
            while True:
                request = json.dumps({'subject': f'{SUBJECT_PREFIX}.{self._tp}.*', 'offset': offset}).encode()
                reply = json.loads((await client.request('$JS.API.STREAM.NAMES', request, LIST_TIMEOUT)).data)
                names = [s for s in reply.get('streams') or () if isinstance(s, str)]
                found.update(s for s in names if self._mine(s))
                offset += len(names)
                if not names or offset >= int(reply.get('total', 0)):
                    return found
        except nats.errors.NoRespondersError:
            return found  # no JetStream on this server: no groups either

    async def _relist(self, client: Client) -> None:
        """List again, waiting longer after each failure (up to a minute), until it works."""
        wait = RELEARN_AFTER
        while not client.is_closed:
            await asyncio.sleep(wait)
            try:
                self.streams |= await self._list(client)
                return
            except Exception:
                wait = min(wait * 2, 60.0)

    def copy(self, name: str, sender: str, envelope: Envelope, max_payload: int) -> tuple[str, bytes, Headers] | None:
        """The group copy of a send when the signal has groups (else None), measured before anything
        is sent: with ``x-sender`` and ``Nats-Msg-Id`` = ``message-id`` (a repeated send is stored once)."""
        stream, subject = self.of(name)
        if stream not in self.streams:
            return None
        headers: Headers = dict(envelope.headers or {})
        headers[GROUP_SENDER] = one_line(sender)
        message_id = headers.get(MESSAGE_ID)
        if message_id:
            headers[MSG_ID_HEADER] = message_id
        check_sizes(f'signal {name!r}', ((envelope.body, headers),), None, max_payload, ROOM)
        return subject, envelope.body, headers

    async def store(self, name: str, copy: tuple[str, bytes, Headers]) -> None:
        """Store the group copy of a send and await the stream's acknowledgement."""
        if self._acks is None:
            self._acks = Acks(self.link)
        try:
            await self._acks.publish([copy], f'signal {name!r} to its groups')
        except QueueNotFound:  # its stream is gone (deleted since): no group left
            self.streams.discard(self.of(name)[0])

    def close(self) -> None:
        if self._relisting is not None:
            self._relisting.cancel()
            self._relisting = None
        self._subs.clear()
        self.generation = self._subs_generation = 0
        if self._acks is not None:
            self._acks.reset()


async def group_streams(client: Client, prefix: str) -> list[str]:
    """Every stream of the signal groups of bus prefix ``prefix`` (signals and dead letters): what
    an operator or a test deletes to remove them all."""
    token = name_token(prefix)
    request = json.dumps({'subject': f'{SUBJECT_PREFIX}.{token}.>'}).encode()
    reply = json.loads((await client.request('$JS.API.STREAM.NAMES', request, LIST_TIMEOUT)).data)
    return [s for s in reply.get('streams') or () if isinstance(s, str) and s.startswith(f'{STREAM_PREFIX}-{token}-')]
