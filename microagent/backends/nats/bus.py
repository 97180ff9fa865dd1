"""The NATS bus transport: ``NATSBusTransport``, signals over core NATS subjects.

Signals are core NATS messages (at most once, like the other buses) on ``{prefix}.{name}.{sender}``
with the envelope's headers as NATS headers; a bus subscribes ``{prefix}.{name}.>`` per signal. An
RPC request is a NATS request: its reply subject is the calling bus's inbox ``_INBOX.{uid}`` (also
in the ``reply-to`` header), so every receiver's answer reaches the caller, which the engine
collects (``call`` takes the first, ``waiter`` all). A plain NATS client may ask too:
``nc.request('PUBSUB.sig.me', b'{...}')`` gets the first answer, a 1.x-style ``{"Agent.method": value}``.

A receiver answers only to an inbox: a reply address ``_INBOX.`` and literal words (the form of a
bus's own and of a NATS client's request). Any other one (a JetStream API subject, a work queue's
subject) would make the answer a command or a message there: such a request is dropped unheard,
with a warning at most once a minute per signal and sender, counting the dropped ones.

A signal with groups (``@receiver(group=...)``) is also stored in a JetStream stream, read by a
durable consumer per group: see ``groups``.
"""
from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Collection
from functools import partial

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from microagent.backends.nats.groupindex import GroupIndex
from microagent.backends.nats.groups import NATSGroupTransport
from microagent.backends.nats.limits import check_sizes, fits
from microagent.backends.nats.link import Link, check_subject
from microagent.logs import LogLimiter
from microagent.message import REPLY_TO, REQUEST_ID, Envelope
from microagent.transport import Deliver, DeliverReply

__all__ = ['NATSBusTransport']

_NOT_IN_SUBJECT = re.compile(r'[\s*>]')
_INBOX = re.compile(r'_INBOX(\.[^\s*>.]+)+')
SUBJECT_CACHE = 4096  # (signal, sender) subjects a bus remembers; senders are few (agents)


def sender_subject(sender: str) -> str:
    """A sender as subject words: spaces and wildcards become ``_``, and so do empty words."""
    words = _NOT_IN_SUBJECT.sub('_', sender).split('.')
    return '.'.join(word or '_' for word in words)


class NATSBusTransport:
    """Signals over core NATS: one subscription per signal name, answers to this bus's inbox."""

    def __init__(self, dsn: str, prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 name: str = '', connect_timeout: float = 5.0) -> None:
        self.uid = uuid.uuid4().hex
        self.prefix = check_subject(prefix, 'bus prefix')
        self.log = log or logging.getLogger('microagent.bus')
        self._link = Link(dsn, self.log, name or f'microagent bus {prefix} {self.uid[:8]}',
                          connect_timeout=connect_timeout)
        self._reply_to = f'_INBOX.{self.uid}'
        self._names: set[str] = set()
        self._nested: dict[str, list[str]] = {}  # name -> the longer subscribed names under it
        self._subjects: dict[tuple[str, str], str] = {}  # (name, sender) -> subject, checked once
        self._subs: list[Subscription] = []
        self._deliver: Deliver | None = None
        self._deliver_reply: DeliverReply | None = None
        #: the engine's limit on a whole message (the NATSSignalBus sets it); the server's max_payload too
        self.max_message_size: int | None = None
        self._forged = LogLimiter(interval=60.0)
        #: the signals of this prefix that have groups: their sends get a group copy (see ``groups``)
        self.groups_index = GroupIndex(self.prefix, self._link, self.log)

    @property
    def link(self) -> Link:
        return self._link

    def groups(self) -> NATSGroupTransport:
        """The stores of this bus's signal groups: JetStream streams and durable consumers."""
        return NATSGroupTransport(self._link, self.prefix, self.groups_index, self.log)

    def rename(self, name: str) -> None:
        """Name the connection as the server shows it (the engine's id, so operators find it)."""
        self._link.name = name

    @property
    def reply_to(self) -> str:
        return self._reply_to

    async def publish(self, name: str, sender: str, envelope: Envelope) -> None:
        """Core publish on ``{prefix}.{name}.{sender}``; a request names the caller's inbox as the
        NATS reply subject, where a plain NATS responder answers."""
        subject = self._subjects.get((name, sender))
        if subject is None:
            subject = check_subject(f'{self.prefix}.{name}', f'signal {name!r}') + '.' + sender_subject(sender)
            if len(self._subjects) < SUBJECT_CACHE:
                self._subjects[name, sender] = subject
        headers = envelope.headers
        client = await self._link.client()
        if not fits(envelope.body, headers, client.max_payload):  # the name is formatted only when it may not
            check_sizes(f'signal {name!r}', ((envelope.body, headers),), self.max_message_size, client.max_payload)
        index = self.groups_index
        if index.generation != self._link.generation:  # once per connection: which signals have groups
            await index.learn(client)
        copy = index.copy(name, sender, envelope, client.max_payload) if index.streams else None
        if headers:
            await client.publish(subject, envelope.body, reply=headers.get(REPLY_TO, ''),
                                 headers=headers if type(headers) is dict else dict(headers))
        else:
            await client.publish(subject, envelope.body)
        if copy is not None:  # the signal has groups: stored, acknowledged
            await index.store(name, copy)

    async def subscribe(self, names: Collection[str], deliver: Deliver) -> None:
        self._deliver = deliver
        client = await self._link.client()
        for name in names:
            if name in self._names:
                continue
            subject = check_subject(f'{self.prefix}.{name}', f'signal {name!r}') + '.>'
            self._subs.append(await client.subscribe(subject, cb=partial(self._on_signal, name)))
            self._names.add(name)
        self._nested = {name: [n for n in self._names if n.startswith(name + '.')] for name in self._names}
        await self._link.ping()  # the server has the subscriptions once it answered

    async def receive_replies(self, deliver: DeliverReply) -> None:
        self._deliver_reply = deliver
        client = await self._link.client()
        self._subs.append(await client.subscribe(self._reply_to, cb=self._on_reply))
        await self._link.ping()

    def is_reply_address(self, reply_to: str) -> bool:
        """Whether ``reply_to`` is an inbox, where answers may go (never a stream's or a queue's subject)."""
        return _INBOX.fullmatch(reply_to) is not None

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        if not _INBOX.fullmatch(reply_to):
            self._forged.warning(self.log, reply_to,
                                 f'{self._link.name}: dropped an RPC answer to {reply_to!r}, no inbox')
            return
        client = await self._link.client()
        headers = envelope.headers
        if not fits(envelope.body, headers, client.max_payload):  # the name is formatted only when it may not
            check_sizes(f'RPC answer to {reply_to!r}', ((envelope.body, headers),), self.max_message_size,
                        client.max_payload)
        # an inbox (checked above) is a literal subject
        await client.publish(reply_to, envelope.body, headers=dict(headers) if headers else None)

    async def _on_signal(self, name: str, msg: Msg) -> None:
        """Deliver a signal, once: when names nest (``a`` and ``a.b``), the longest one owns it."""
        rest = msg.subject[len(self.prefix) + 1:]
        nested = self._nested.get(name)
        if self._deliver is None or (nested and any(rest.startswith(n + '.') for n in nested)):
            return
        headers: dict[str, str] | None = msg.headers
        if msg.reply and (headers is None or REPLY_TO not in headers):
            # a plain NATS request: its reply subject addresses the answer and names the request
            headers = {**(headers or {}), REQUEST_ID: msg.reply, REPLY_TO: msg.reply}
        reply_to = headers.get(REPLY_TO) if headers else None
        if reply_to is not None and not _INBOX.fullmatch(reply_to):
            sender = rest[len(name) + 1:]
            self._forged.warning(self.log, f'{name} {sender}',
                                 f'{self._link.name}: dropped a request on signal {name} from {sender!r}: its reply '
                                 f'address {reply_to[:100]!r} is no inbox (_INBOX.*)')
            return
        try:
            await self._deliver(name, rest[len(name) + 1:], Envelope(msg.data, headers or None))
        except Exception:  # the engine's callbacks do not raise; should one, the subscription reads on
            self.log.exception('%s: delivering signal %s failed', self._link.name, name)

    async def _on_reply(self, msg: Msg) -> None:
        headers = msg.headers
        if self._deliver_reply is None or not headers or REQUEST_ID not in headers:
            self.log.warning('%s: dropped a message on the RPC inbox without a request-id', self._link.name)
            return
        try:
            await self._deliver_reply(Envelope(msg.data, headers))
        except Exception:
            self.log.exception('%s: delivering an RPC answer failed', self._link.name)

    async def ping(self) -> None:
        """One round trip to the server; raises when it is unreachable."""
        await self._link.ping()

    async def close(self) -> None:
        self.groups_index.close()
        self._subs.clear()
        self._names.clear()
        await self._link.close()
