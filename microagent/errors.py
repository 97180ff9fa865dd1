"""The exceptions a user of microagent may catch."""
from __future__ import annotations


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
    """A signal or queue declaration is malformed or contradicts an earlier one."""


class SignalNotFound(MicroAgentError, LookupError):
    """No signal is declared under that name."""


class QueueNotFound(MicroAgentError, LookupError):
    """No queue is declared under that name."""


class ServerInterrupt(MicroAgentError):
    """Raised by an ``@on('server')`` handler to stop its agent gracefully."""
