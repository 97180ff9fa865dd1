"""microagent: typed, DTO-first agents for event-driven Python microservices."""
from microagent.agent import MicroAgent
from microagent.broker import AbstractQueueBroker, BoundExchange, BoundQueue, DeadLetter, QueueDepth
from microagent.bus import AbstractSignalBus, BoundSignal, RemoteError
from microagent.decorators import consumer, cron, on, periodic, receiver
from microagent.errors import (
    BackendClosed,
    BatchFailed,
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
from microagent.exchange import Exchange
from microagent.handlers import Consumer, Receiver
from microagent.loader import configure, load_queues, load_signals, load_stuff
from microagent.message import InvalidHeader, Message
from microagent.middleware import Handling, Middleware, Next, Outcome, Sending
from microagent.queue import Queue
from microagent.ratelimit import Limit, Rate
from microagent.sends import UndeclaredSend
from microagent.signal import Signal

__version__ = '2.0.0.dev0'

__all__ = [
    'AbstractQueueBroker',
    'AbstractSignalBus',
    'BackendClosed',
    'BatchFailed',
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
    'Limit',
    'Message',
    'MicroAgent',
    'MicroAgentError',
    'Middleware',
    'MissConfig',
    'Next',
    'NotReplicated',
    'Outcome',
    'Queue',
    'QueueDepth',
    'QueueNotFound',
    'Rate',
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
