"""Log lines of a group of agents: one line per event, naming the agent and its process id.

Every record gets an ``agent`` attribute. It comes from the logger (each agent, its bus and its broker
log under ``agent.<name>``), else from the task that runs the agent (single-process mode), else from
the process (an agent process, or ``marun`` for the supervisor).
"""
from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

import msgspec

FORMATS = ('text', 'json')
LEVELS = ('DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')

current_agent: ContextVar[str | None] = ContextVar('microagent_agent', default=None)
_process_label = 'marun'


def agent_logger(name: str, part: str = '') -> logging.Logger:
    """The logger of agent ``name`` (or of its ``bus`` / ``broker``)."""
    return logging.getLogger(f'agent.{name}.{part}' if part else f'agent.{name}')


def _agent_of(record: logging.LogRecord) -> str:
    if record.name.startswith('agent.'):
        return record.name.split('.')[1]
    return current_agent.get() or _process_label


def _agent(record: logging.LogRecord) -> str:
    return str(getattr(record, 'agent', None) or _agent_of(record))


class AgentFilter(logging.Filter):
    """Adds ``agent`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, 'agent'):
            record.agent = _agent_of(record)
        return True


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00.123 INFO    users[4242] message``; other loggers than the agent's own
    are named after the pid, so library lines stay recognisable."""

    def __init__(self) -> None:
        super().__init__(datefmt='%Y-%m-%d %H:%M:%S')

    def format(self, record: logging.LogRecord) -> str:
        agent = _agent(record)
        origin = '' if record.name == f'agent.{agent}' else f' {record.name}'
        line = (f'{self.formatTime(record, self.datefmt)}.{int(record.msecs):03d} {record.levelname:<7} '
                f'{agent}[{record.process}]{origin}: {record.getMessage()}')
        if record.exc_info:
            line += '\n' + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, traceback included as a field, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            'time': time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(record.created))
                    + f'.{int(record.msecs):03d}' + time.strftime('%z', time.localtime(record.created)),
            'level': record.levelname,
            'agent': _agent(record),
            'pid': record.process,
            'logger': record.name,
            'message': record.getMessage(),
        }
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
