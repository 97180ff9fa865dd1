"""Log lines of a group of agents: one line per event, naming the agent and its process id.

Every record gets an ``agent`` attribute. It comes from the logger (each agent, its bus and its broker
log under ``agent.<name>``), else from the task that runs the agent (single-process mode), else from
the handler being run (its agent class), else from the process (an agent process, or ``marun`` for
the supervisor).

A record logged while a message is handled (by the engine, or by user code inside the handler, or a
task it started) also gets ``handler``, ``message_id``, ``correlation_id`` and ``trace_id``: the
engine keeps the handler in a context variable, set once per worker task, and the message in
``message.current_var``; both are read only when a record is emitted, so a disabled level costs
nothing. A failure line adds what happens next: ``outcome`` (``retried``, ``dead_lettered`` or
``failed``), ``attempt``, ``max_retries`` and ``retry_in`` (seconds), as ``failure_fields`` builds them.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any, TextIO

import msgspec

from microagent.message import MESSAGE_ID, Conversation, Envelope, Lazy, Message, current_var

FORMATS = ('text', 'json')
LEVELS = ('DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')

current_agent: ContextVar[str | None] = ContextVar('microagent_agent', default=None)
#: ``(agent class name, handler key)`` of the handler a worker task runs
current_handler: ContextVar[tuple[str, str] | None] = ContextVar('microagent_handler', default=None)
_process_label = 'marun'

#: the ids a record carries while a message is handled, in the order the JSON line gives them
CONTEXT_FIELDS = ('handler', 'message_id', 'correlation_id', 'trace_id')
#: what a failure line adds: what happens to the message next
FAILURE_FIELDS = ('outcome', 'attempt', 'max_retries', 'retry_in')
#: the ``extra`` of a failure line whose ids come from the context (a receiver's, a timer run's)
FAILED = {'outcome': 'failed'}


def shown(text: str | bytes, limit: int = 200) -> str:
    """A channel or sender from the wire, safe for a log line (no control characters, bounded)."""
    if isinstance(text, str) and text.isprintable() and len(text) <= limit:
        return text
    return repr(text[:limit])


def dropped_fields(envelope: Envelope) -> dict[str, Any]:
    """The extra of a line on a message dropped before any handler saw it: its ids, if it has any."""
    headers = envelope.headers
    fields = message_fields(Message.from_headers(headers)) if headers and MESSAGE_ID in headers else {}
    fields['outcome'] = 'dropped'
    return fields


class LogLimiter:
    """At most one line per source every ``interval`` seconds: a flood of stray or bad messages is
    a few lines, not one per message. The next line of a source says how many were left out.
    A source is a label of the call site, with a detail (a signal and sender) if given: once
    ``max_sources`` are known, a new detail shares its label's line, so text from the wire cannot
    make the sources, or the lines, many."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 max_sources: int = 256) -> None:
        self.interval = interval
        self._clock = clock
        self.max_sources = max_sources
        self._sources: dict[str, list[float]] = {}  # source -> [next time a line may go, lines left out]

    def log(self, logger: logging.Logger, level: int, source: str, msg: str, *args: object,
            extra: Mapping[str, object] | None = None) -> None:
        if not logger.isEnabledFor(level):
            return
        now = self._clock()
        if source not in self._sources and len(self._sources) >= self.max_sources:
            source = source.partition(' ')[0]  # the label alone: the details have taken their room
        state = self._sources.get(source)
        if state is not None and now < state[0]:
            state[1] += 1
            return
        left_out = int(state[1]) if state is not None else 0
        self._sources[source] = [now + self.interval, 0]
        if left_out:
            msg = f'{msg} (and {left_out} more like it in the last {self.interval:g} s, not logged)'
        logger.log(level, msg, *args, extra=extra)

    def warning(self, logger: logging.Logger, source: str, msg: str, *args: object,
                extra: Mapping[str, object] | None = None) -> None:
        self.log(logger, logging.WARNING, source, msg, *args, extra=extra)


def set_handler(agent: object, key: str) -> Token[tuple[str, str] | None]:
    """Name the handler this task runs (the engine does, once per worker task) for its log records."""
    return current_handler.set((type(agent).__name__, key))


def message_fields(message: Message | Lazy | None, handler: str | None = None) -> dict[str, Any]:
    """The ``extra`` of a record about ``message`` (or a delivery) logged outside its handling (a
    failure line); no ids when its headers cannot be read (a malformed frame): logging never raises."""
    fields: dict[str, Any] = {'handler': handler} if handler is not None else {}
    read = _read(message)
    if read is not None:
        fields.update(message_id=read.message_id, correlation_id=read.correlation_id, trace_id=read.trace_id)
    return fields


def failure_fields(message: Message | Lazy | None, handler: str | None, outcome: str, attempt: int | None = None,
                   max_retries: int | None = None, retry_in: float | None = None) -> dict[str, Any]:
    """The ``extra`` of a failure line: the message's ids and what becomes of it."""
    fields = message_fields(message, handler)
    fields['outcome'] = outcome
    if attempt is not None:
        fields.update(attempt=attempt, max_retries=max_retries)
    if retry_in is not None:
        fields['retry_in'] = round(retry_in, 3)
    return fields


def _add_context(record: logging.LogRecord) -> None:
    """Fill in the handler and message ids from the context, unless the call gave them."""
    if not hasattr(record, 'handler'):
        handler = current_handler.get()
        record.handler = handler[1] if handler is not None else None
    if not hasattr(record, 'message_id'):
        current = current_var.get()
        message = _read(current)
        if message is None:
            record.message_id = record.correlation_id = record.trace_id = None
            return
        record.message_id = None if isinstance(current, Conversation) else message.message_id
        record.correlation_id = message.correlation_id
        record.trace_id = message.trace_id


def _read(message: Message | Lazy | None) -> Message | None:
    """The message, read if it is not yet; None when its headers cannot be read (a malformed frame)."""
    try:
        return message if message is None or isinstance(message, Message) else message.message
    except Exception:
        return None


def agent_logger(name: str, part: str = '') -> logging.Logger:
    """The logger of agent ``name`` (or of its ``bus`` / ``broker``)."""
    return logging.getLogger(f'agent.{name}.{part}' if part else f'agent.{name}')


def _agent_of(record: logging.LogRecord) -> str:
    if record.name.startswith('agent.'):
        return record.name.split('.')[1]
    name = current_agent.get()
    if name is None:
        handler = current_handler.get()
        name = handler[0] if handler is not None else _process_label
    return name


def _agent(record: logging.LogRecord) -> str:
    return str(getattr(record, 'agent', None) or _agent_of(record))


class AgentFilter(logging.Filter):
    """Adds ``agent``, and the handler and message ids (None outside a handling), to every record.
    It runs where the record is logged, so it sees that task's context (a formatter may not)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, 'agent'):
            record.agent = _agent_of(record)
        _add_context(record)
        return True


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00.123 INFO    users[4242] message``; other loggers than the agent's own
    are named after the pid, so library lines stay recognisable, then the short id of the
    conversation being handled, if any: ``users[4242] agent.users.broker #1a2b3c4d: message``."""

    def __init__(self) -> None:
        super().__init__(datefmt='%Y-%m-%d %H:%M:%S')

    def format(self, record: logging.LogRecord) -> str:
        agent = _agent(record)
        _add_context(record)
        origin = '' if record.name == f'agent.{agent}' else f' {record.name}'
        line = (f'{self.formatTime(record, self.datefmt)}.{int(record.msecs):03d} {record.levelname:<7} '
                f'{agent}[{record.process}]{origin}{_short_context(record)}: {record.getMessage()}')
        if record.exc_info:
            line += '\n' + self.formatException(record.exc_info)
        return line


def _short_context(record: logging.LogRecord) -> str:
    """`` #1a2b3c4d``: the last 8 hex digits of the conversation's (correlation) id, its
    per-process counter: every line of one conversation, in every agent, shows the same."""
    correlation_id: str | None = getattr(record, 'correlation_id', None)
    return f' #{correlation_id[-8:]}' if correlation_id else ''


class JsonFormatter(logging.Formatter):
    """One JSON object per line, traceback included as a field, for log collectors; the handler,
    message ids and failure fields when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        _add_context(record)
        data: dict[str, Any] = {
            'time': time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(record.created))
                    + f'.{int(record.msecs):03d}' + time.strftime('%z', time.localtime(record.created)),
            'level': record.levelname,
            'agent': _agent(record),
            'pid': record.process,
            'logger': record.name,
            'message': record.getMessage(),
        }
        for name in CONTEXT_FIELDS + FAILURE_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data['exc'] = self.formatException(record.exc_info)
        return msgspec.json.encode(data).decode()


def setup_logging(level: str = 'INFO', fmt: str = 'text', label: str = 'marun',
                  stream: TextIO | None = None) -> None:
    """Send every log record of the process to ``stream`` (stderr) as one line per event."""
    global _process_label
    _process_label = label
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(AgentFilter())
    handler.setFormatter(JsonFormatter() if fmt == 'json' else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, '_microagent', False)]:
        root.removeHandler(old)
    handler._microagent = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
