"""The exceptions a user of microagent may catch.

Every error microagent raises derives from ``MicroAgentError``, and also from the built-in class
code written for 1.x catches (``ValueError``, ``TypeError``, ``LookupError``, ``TimeoutError``,
``ConnectionError``), so both ``except MicroAgentError`` and the older ``except ValueError`` work.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class MicroAgentError(Exception):
    """Base of every error raised by microagent."""


class InvalidPayload(MicroAgentError, ValueError):
    """A payload does not fit the model of its signal or queue.

    ``target`` names the channel ("signal 'user_created'", "queue 'mailer'"), ``errors``
    holds one line per failing field.
    """

    def __init__(self, target: str, errors: list[str]) -> None:
        self.target = target
        self.errors = errors
        super().__init__(f'Invalid payload for {target}: ' + '; '.join(errors))


class MissConfig(MicroAgentError):
    """An agent declares receivers without a bus or consumers without a broker."""


class DeclarationError(MicroAgentError, ValueError):
    """A declaration is malformed or contradicts another: a signal or queue, the arguments of a
    handler decorator (a period <= 0, an invalid cron spec, an unknown hook label), or a queue
    given two consumers in one agent or on one broker."""


class DoubleLoadError(DeclarationError, RuntimeError):
    """A second ``load_stuff``/``configure`` declares a signal or queue already loaded with another
    contract. 1.x raised it for any second load; here loading the same declarations again is harmless."""


class UsageError(MicroAgentError, TypeError):
    """An API got an argument of the wrong kind: a decorator on a sync function or without its
    declaration, a payload and keyword fields together; a ``TypeError``, as before."""


class InvalidArgument(MicroAgentError, ValueError):
    """A value given to a constructor or a function is malformed or out of range: a DSN of another
    scheme, a heartbeat <= 0, an agent path that does not name an agent."""


class SignalNotFound(MicroAgentError, LookupError):
    """No signal is declared under that name."""


class QueueNotFound(MicroAgentError, LookupError):
    """No queue is declared under that name (or bound to that exchange)."""


class _NotAnAttribute(AttributeError):
    """Mixed into the lookup errors ``bus.name`` and ``broker.name`` raise for an undeclared name,
    so ``hasattr`` answers False and ``getattr(bus, name, None)`` None, as for any object."""

    def __init__(self, message: str, name: str, obj: Any) -> None:
        super().__init__(message)
        self.name = name
        self.obj = obj


class SignalAttributeError(_NotAnAttribute, SignalNotFound):
    """``bus.name`` for a name no signal is declared under."""


class QueueAttributeError(_NotAnAttribute, QueueNotFound):
    """``broker.name`` for a name no queue is declared under."""


class CallTimeout(MicroAgentError, TimeoutError):
    """No receiver answered an RPC call within its ``timeout``."""


class ConnectionFailed(MicroAgentError, ConnectionError):
    """A server could not be reached, or did not confirm, in the time allowed; or its connection is
    closed for good."""


class NotReplicated(ConnectionFailed):
    """A send asked for ``wait_replicas`` copies and fewer replicas confirmed in time. The message is
    on the master: it is delivered, unless the master fails before a replica gets it."""


class BackendClosed(MicroAgentError, RuntimeError):
    """A bus or broker was used after ``close()``."""


class ServerInterrupt(MicroAgentError):
    """Raised by an ``@on('server')`` handler to stop its agent gracefully."""


class BatchFailed(MicroAgentError):
    """Raised by a batch consumer (``@consumer(q, batch=N)``) to name the messages of its batch that
    failed: those are retried (then dead-lettered) on their own count, the others acknowledged.
    ``failed`` holds items of the list the handler got (the same objects); ``cause`` says why."""

    def __init__(self, failed: Iterable[object], cause: BaseException | str = 'failed in a batch') -> None:
        self.failed = list(failed)
        self.cause = cause
        super().__init__(f'{len(self.failed)} message(s) of the batch failed: {cause}')
