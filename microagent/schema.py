"""What an agent declares, as data: ``info()`` with the JSON Schema of every payload."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .dsn import hide_password

if TYPE_CHECKING:
    from .agent import MicroAgent
    from .queue import Queue
    from .signal import Signal


def signal_info(signal: Signal[Any, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {'name': signal.name, 'providing_args': sorted(signal.providing_args),
                            'payload': signal.codec.schema}
    if signal.answer_codec is not None:
        info['answer'] = signal.answer_codec.schema
    return info


def queue_info(queue: Queue[Any]) -> dict[str, Any]:
    info: dict[str, Any] = {'name': queue.name, 'payload': queue.codec.schema}
    if queue.exchange:
        info['exchange'] = queue.exchange
        info['topics'] = list(queue.topics)
    return info


def _options(options: Any) -> dict[str, Any]:
    return {key: value if isinstance(value, str | int | float | bool | None) else repr(value)
            for key, value in sorted(dict(options).items())}


def agent_info(agent: MicroAgent) -> dict[str, Any]:
    """The 1.x ``info()`` keys plus ``signals`` and ``queues`` with their payload schemas."""
    bus = getattr(agent, 'bus', None)
    broker = getattr(agent, 'broker', None)
    signals = {r.signal.name: r.signal for r in agent.receivers}
    queues = {c.queue.name: c.queue for c in agent.consumers}
    return {
        'name': type(agent).__name__,
        'bus': f'{type(bus).__name__}({hide_password(bus.dsn)})' if bus is not None else None,
        'broker': f'{type(broker).__name__}({hide_password(broker.dsn)})' if broker is not None else None,
        'periodic': sorted(({'name': name, 'period': s.period, 'timeout': s.timeout,
                             'start_after': s.start_after} for name, s in agent.periodic_tasks),
                           key=lambda item: str(item['name'])),
        'cron': sorted(({'name': name, 'spec': s.spec, 'timeout': s.timeout,
                         'tz': str(s.tz) if s.tz else None} for name, s in agent.cron_tasks),
                       key=lambda item: str(item['name'])),
        'receivers': sorted(({'handler': r.key, 'signal': r.signal.name, 'timeout': r.timeout}
                             for r in agent.receivers), key=lambda item: (item['signal'], item['handler'])),
        'consumers': sorted(({'handler': c.key, 'queue': c.queue.name, 'timeout': c.timeout,
                              'options': _options(c.options)} for c in agent.consumers),
                            key=lambda item: item['queue']),
        'signals': {name: signal_info(signals[name]) for name in sorted(signals)},
        'queues': {name: queue_info(queues[name]) for name in sorted(queues)},
    }
