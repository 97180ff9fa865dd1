"""The names of a queue's streams and subjects on the NATS server, and of the exchange bindings.

For a queue ``mail.out`` (``t`` = ``subject_token(name)``, here ``mail_Dout``): stream ``MQ-t`` on
subject ``mq.t`` (the queue), ``MQ-t-later`` on ``mq.t.later`` (delayed sends and retries),
``MQ-t-dead`` on ``mq.t.dead`` (dead letters), and for a queue with priority levels ``MQ-t-p{n}`` on
``mq.t.p{n}`` (level ``n`` >= 1; level 0 is ``MQ-t``), each read through the durable consumer ``CONSUMER``;
and one stream ``MQ-bindings`` per server, with a message per subject
``mq.bindings.{exchange}.{t}``.
"""
from __future__ import annotations

from dataclasses import dataclass

from microagent.backends.nats.link import subject_token

CONSUMER = 'microagent'
BINDINGS_STREAM = 'MQ-bindings'
BINDINGS_SUBJECT = 'mq.bindings'


@dataclass(frozen=True)
class Layout:
    """The streams and subjects of one queue."""

    stream: str
    subject: str
    later_stream: str
    later_subject: str
    dead_stream: str
    dead_subject: str

    def level_stream(self, level: int) -> str:
        """The stream of priority level ``level``: the queue's own for 0."""
        return f'{self.stream}-p{level}' if level else self.stream

    def level_subject(self, level: int) -> str:
        """The subject of priority level ``level``: the queue's own for 0."""
        return f'{self.subject}.p{level}' if level else self.subject

    @classmethod
    def of(cls, name: str) -> Layout:
        token = subject_token(name)
        return cls(f'MQ-{token}', f'mq.{token}', f'MQ-{token}-later', f'mq.{token}.later',
                   f'MQ-{token}-dead', f'mq.{token}.dead')


def binding_subject(exchange: str, queue: str = '*') -> str:
    """The subject of the binding of ``queue`` to ``exchange`` (every one of the exchange with ``*``)."""
    tail = queue if queue == '*' else subject_token(queue)
    return f'{BINDINGS_SUBJECT}.{subject_token(exchange)}.{tail}'
