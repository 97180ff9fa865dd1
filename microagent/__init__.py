"""microagent: typed, DTO-first agents for event-driven Python microservices."""
from .agent import Consumer, MicroAgent, Receiver
from .broker import AbstractQueueBroker, BoundExchange, BoundQueue, DeadLetter
from .bus import AbstractSignalBus, BoundSignal, RemoteError
from .errors import (
    BackendClosed,
    CallTimeout,
    ConnectionFailed,
    DeclarationError,
    DoubleLoadError,
    InvalidArgument,
    InvalidPayload,
    MicroAgentError,
    MissConfig,
    NotReplicated,
    QueueNotFound,
    ServerInterrupt,
    SignalNotFound,
    UsageError,
)
from .exchange import Exchange
from .handlers import consumer, cron, on, periodic, receiver
from .loader import configure, load_queues, load_signals, load_stuff
from .message import InvalidHeader, Message
from .middleware import Handling, Middleware, Next, Outcome, Sending
from .queue import Queue
from .sends import UndeclaredSend
from .signal import Signal

__version__ = '2.0.0.dev0'

__all__ = [
    'AbstractQueueBroker',
    'AbstractSignalBus',
    'BackendClosed',
    'BoundExchange',
    'BoundQueue',
    'BoundSignal',
    'CallTimeout',
    'ConnectionFailed',
    'Consumer',
    'DeadLetter',
    'DeclarationError',
    'DoubleLoadError',
    'Exchange',
    'Handling',
    'InvalidArgument',
    'InvalidHeader',
    'InvalidPayload',
    'Message',
    'MicroAgent',
    'MicroAgentError',
    'Middleware',
    'MissConfig',
    'Next',
    'NotReplicated',
    'Outcome',
    'Queue',
    'QueueNotFound',
    'Receiver',
    'RemoteError',
    'Sending',
    'ServerInterrupt',
    'Signal',
    'SignalNotFound',
    'UndeclaredSend',
    'UsageError',
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
