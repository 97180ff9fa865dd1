"""What the stores of signal groups hold, as the group transport (``groups.py``) writes and reads it.

A stream entry has two fields: ``d``, the frame (``message.frame``; or a bare 1.x body) and ``s``,
the sender. A retry zset member is 32 characters of id, then ``{attempt}|{0 or 1: redelivered}|{sender}``,
a line break and the frame; a held member is the holder's 32-character consumer name, then the
retry member. A dead letter is a JSON line (reason, attempts, time, sender), a line break and the
frame. Everything read back is checked: what this module did not write becomes an invalid delivery
(dead-lettered with its reason) or a dead letter shown as it is.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec

from microagent.backends.redis.frame import FrameError, unframe
from microagent.errors import InvalidArgument, InvalidPayload
from microagent.groups import SENDER
from microagent.message import Envelope
from microagent.transport import DeadLetter, Delivery

__all__ = ['ID', 'MAX_SENDER', 'Held', 'Invalid', 'dead_letter', 'retry_member', 'sender', 'senders', 'unparsed']

#: the longest sender taken from a stored entry (a longer one: the entry is dead-lettered)
MAX_SENDER = 1024
ID = 32  # the length of a member's and of a consumer's id


class Held:
    """The token of a delivery: a stream entry id (``kind`` ``s``) or a held retry member (``z``),
    with what a retry or a release stores again."""

    __slots__ = ('attempt', 'data', 'key', 'kind', 'sender')

    def __init__(self, kind: str, key: bytes, data: bytes, sender: str, attempt: int) -> None:
        self.kind = kind
        self.key = key
        self.data = data
        self.sender = sender
        self.attempt = attempt


class Invalid(Delivery[Held]):
    """A stored entry that is not what the group transport writes: reading its envelope raises, so the engine
    dead-letters it with the reason."""

    __slots__ = ('_problem',)

    def __init__(self, token: Held, problem: InvalidPayload, redelivered: bool) -> None:
        self.token = token
        self._problem = problem
        self.attempt = token.attempt
        self.redelivered = redelivered
        self.context = {SENDER: token.sender}

    @property
    def envelope(self) -> Envelope:  # type: ignore[override]  # read-only: nothing to set
        raise self._problem


def retry_member(token: Held, attempt: int, redelivered: bool) -> bytes:
    """A retry zset member: 32 characters of id, ``{attempt}|{0 or 1: redelivered}|{sender}\\n``, data."""
    return f'{uuid.uuid4().hex}{attempt}|{int(redelivered)}|{token.sender}\n'.encode() + token.data


#: the senders read lately, with the context of their deliveries: few senders, each on many signals
senders: dict[bytes, tuple[str, Mapping[str, object]]] = {}


def unparsed(response: Any, **options: Any) -> Any:
    """A response callback that leaves a reply as Redis sent it."""
    return response


def sender(raw: Any) -> str:
    """A sender read from Redis, checked (and remembered: ``senders``); a ValueError says what is wrong."""
    known = senders.get(raw) if isinstance(raw, bytes) else None
    if known is not None:
        return known[0]
    if not isinstance(raw, bytes) or len(raw) > MAX_SENDER:
        raise InvalidArgument(f'a sender of more than {MAX_SENDER} bytes')
    try:
        sender = raw.decode()
    except UnicodeDecodeError:
        raise InvalidArgument('a sender that is not UTF-8') from None
    if '\n' in sender:
        raise InvalidArgument('a sender with a line break')
    if len(senders) >= 1024:
        senders.clear()
    senders[raw] = (sender, MappingProxyType({SENDER: sender}))
    return sender


def dead_letter(name: str, entry: bytes) -> DeadLetter:
    """A dead letter as stored: its JSON line (reason, attempts, time, sender), then the data. One
    not written here (an unreadable line) is shown as it is, its reason saying so."""
    line, newline, message = entry.partition(b'\n')
    try:
        meta = msgspec.json.decode(line, type=dict[str, Any]) if newline else None
    except msgspec.DecodeError:
        meta = None
    if not isinstance(meta, dict):
        return DeadLetter(name, Envelope(entry, None), 'unreadable dead letter', 0, 0.0)
    try:
        envelope = unframe(message, f'dead letter of {name!r}')
    except FrameError:
        envelope = Envelope(message, None)
    reason, attempts, when = meta.get('reason'), meta.get('attempts'), meta.get('time')
    return DeadLetter(name, envelope, reason if isinstance(reason, str) else '',
                      attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
                      float(when) if isinstance(when, int | float) and not isinstance(when, bool) else 0.0)
