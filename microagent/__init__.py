"""microagent: typed, DTO-first agents for event-driven Python microservices."""
from .agent import Consumer, MicroAgent, Receiver
from .broker import AbstractQueueBroker, BoundExchange, BoundQueue, DeadLetter
from .bus import AbstractSignalBus, BoundSignal
from .errors import (
    DeclarationError,
    InvalidPayload,
    MicroAgentError,
    MissConfig,
    QueueNotFound,
    ServerInterrupt,
    SignalNotFound,
)
from .exchange import Exchange
from .handlers import consumer, cron, on, periodic, receiver
from .loader import configure, load_queues, load_signals, load_stuff
from .queue import Queue
from .signal import Signal

__version__ = '2.0.0.dev0'

__all__ = [
    'AbstractQueueBroker',
    'AbstractSignalBus',
    'BoundExchange',
    'BoundQueue',
    'BoundSignal',
    'Consumer',
    'DeadLetter',
    'DeclarationError',
    'Exchange',
    'InvalidPayload',
    'MicroAgent',
    'MicroAgentError',
    'MissConfig',
    'Queue',
    'QueueNotFound',
    'Receiver',
    'ServerInterrupt',
    'Signal',
    'SignalNotFound',
    'configure',
    'consumer',
    'cron',
    'load_queues',
    'load_signals',
    'load_stuff',
    'on',
    'periodic',
    'receiver',
]
