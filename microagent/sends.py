"""Declared sends: what an agent says it sends (``sends = (user_created, mailer, push)``), and the
check that what it does send was declared.

The declaration is the outbound half of an agent's contract: ``info()``, AsyncAPI and the fleet
tools read it. At run time the bus and broker ask ``check_send`` before publishing; it knows the
sending agent from a context variable its handler tasks carry (set once per worker task, timer run,
server and hook, never per message). Sending something undeclared logs one warning per agent and
name, or raises ``UndeclaredSend`` when the class sets ``strict_sends = True``. An agent that
declares no ``sends`` at all (every 1.x agent) is never checked.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar, Token
from typing import Any, Literal, Protocol, TypeAlias

from microagent.errors import DeclarationError, MicroAgentError
from microagent.exchange import Exchange
from microagent.queue import Queue
from microagent.signal import Signal

SendKind = Literal['signal', 'queue', 'exchange']
#: what ``sends`` may hold
Sendable: TypeAlias = 'Signal[Any, Any] | Queue[Any] | Exchange'
SEND_KINDS: tuple[SendKind, ...] = ('signal', 'queue', 'exchange')


class Sender(Protocol):
    """The agent whose task sends: it checks each send against its ``sends`` (``MicroAgent`` is one)."""

    def _check_send(self, kind: SendKind, name: str) -> None: ...


class UndeclaredSend(MicroAgentError, RuntimeError):
    """A strict agent (``strict_sends = True``) sent a signal or queue it does not declare in ``sends``."""


_sender: ContextVar[Sender | None] = ContextVar('microagent_sender', default=None)


def set_sender(agent: Sender | None) -> Token[Sender | None]:
    """Make ``agent`` the sender of what this task (and the tasks it starts) sends."""
    return _sender.set(agent)


def reset_sender(token: Token[Sender | None]) -> None:
    _sender.reset(token)


def kind_of(item: object) -> SendKind | None:
    if isinstance(item, Signal):
        return 'signal'
    if isinstance(item, Queue):
        return 'queue'
    if isinstance(item, Exchange):
        return 'exchange'
    return None


def declared_sends(owner: str, value: object) -> tuple[Sendable, ...]:
    """``value`` as a tuple of declarations, or a DeclarationError naming ``owner`` and the culprit."""
    if isinstance(value, Signal | Queue | Exchange) or not isinstance(value, Iterable) or isinstance(value, str):
        raise DeclarationError(f'{owner}.sends must be a tuple of Signal, Queue and Exchange declarations, '
                               f'got {value!r}')
    items = tuple(value)
    for item in items:
        if kind_of(item) is None:
            raise DeclarationError(f'{owner}.sends: {item!r} is not a Signal, Queue or Exchange declaration')
    return items


def send_names(items: Iterable[Sendable]) -> dict[SendKind, list[str]]:
    """The sorted names of each kind: ``{'signals': ...}`` is built from this."""
    names: dict[SendKind, set[str]] = {kind: set() for kind in SEND_KINDS}
    for item in items:
        kind = kind_of(item)
        assert kind is not None
        names[kind].add(item.name)
    return {kind: sorted(found) for kind, found in names.items()}


def check_send(kind: SendKind, name: str) -> None:
    """Called by the bus and broker before a send: warn or raise if the sending agent did not declare it."""
    agent = _sender.get()
    if agent is not None:
        agent._check_send(kind, name)
