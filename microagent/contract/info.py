"""What an agent declares, as data: ``info()`` with the JSON Schema of every payload it receives,
consumes and sends (``asyncapi.py`` builds the AsyncAPI document from the same reading).

Everything here reads the class (its handler specs), so it works without a bus or a broker; an agent
instance adds only the names of its bus and broker. Output is deterministic: same code, same JSON.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

from microagent.declaration import group_name_of, model_name
from microagent.dsn import hide_password
from microagent.errors import UsageError
from microagent.handlers import ConsumerSpec, CronSpec, PeriodicSpec, ReceiverSpec
from microagent.queue import Queue
from microagent.sends import Sendable, send_names
from microagent.signal import Signal

JsonDict = dict[str, Any]


class Described(Protocol):
    """What the contract reads of an agent class: its handler specs by attribute name and the
    declarations it sends. ``MicroAgent`` names it as a base, so the contract never imports the
    agent module that calls it for ``info()``."""

    _specs: ClassVar[dict[str, list[Any]]]
    sends: ClassVar[tuple[Sendable, ...]]


AgentLike = type[Described] | Described  #: an agent class or instance


# info()

def signal_info(signal: Signal[Any, Any]) -> JsonDict:
    """A signal's name, 1.x ``providing_args``, payload schema and, for RPC, answer schema."""
    info: JsonDict = {'name': signal.name, 'providing_args': sorted(signal.providing_args),
                      'payload': copy.deepcopy(signal.codec.schema)}
    if signal.answer_codec is not None:
        info['answer'] = copy.deepcopy(signal.answer_codec.schema)
    return info


def queue_info(queue: Queue[Any]) -> JsonDict:
    """A queue's name, payload schema, the exchange (and topics) it is bound to and its priority levels."""
    info: JsonDict = {'name': queue.name, 'payload': copy.deepcopy(queue.codec.schema)}
    if queue.exchange:
        info['exchange'] = queue.exchange
        info['topics'] = list(queue.topics)
    if queue.priorities:
        info['priorities'] = queue.priorities
    return info


def _plain(value: Any) -> Any:
    """A JSON-able rendering of an option value (anything else by its repr)."""
    if isinstance(value, str | int | float | bool | None):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return repr(value)


def agent_class(agent: object) -> type[Described]:
    """The agent class of ``agent`` (a MicroAgent subclass or instance): one with handler specs."""
    cls = agent if isinstance(agent, type) else type(agent)
    if not isinstance(getattr(cls, '_specs', None), dict) or not isinstance(getattr(cls, 'sends', None), tuple):
        raise UsageError(f'{agent!r} is neither a MicroAgent class nor an instance of one')
    return cls


def handler_specs(cls: type[Described]) -> Iterator[tuple[str, Any]]:
    for attr in sorted(cls._specs):
        for spec in cls._specs[attr]:
            yield attr, spec


def _connection(agent: Any, name: str) -> str | None:
    """``Class(dsn)`` of an instance's bus or broker, the password hidden; None for a class."""
    if isinstance(agent, type):
        return None
    conn = getattr(agent, name, None)
    if conn is None:
        return None
    return f'{type(conn).__name__}({hide_password(conn.dsn)})'


def consumer_info(handler: str, spec: ConsumerSpec) -> JsonDict:
    info: JsonDict = {'handler': handler, 'queue': spec.queue.name, 'timeout': spec.timeout,
                      'options': _plain(dict(spec.options)),  # as given; the effective values follow
                      'concurrency': spec.concurrency, 'max_retries': spec.max_retries}
    if spec.rate is not None:
        info['rate'] = str(spec.rate)  # '100/s', '6/m (burst 2)'
    if spec.dto_class is not None:
        info['dto_class'] = model_name(spec.dto_class)
        info['dto_name'] = spec.dto_name or 'dto'
        codec = spec.dto_codec
        if codec is not None:
            info['dto_schema'] = copy.deepcopy(codec.schema)
    return info


def grouping_info(agent: AgentLike, cls: type[Any], spec: ReceiverSpec) -> JsonDict:
    """A grouped receiver's group and retry options (a broadcast receiver has none)."""
    choice = getattr(agent, 'group', None) if spec.group is None else spec.group
    if choice is None or choice is False:
        return {}
    name = group_name_of(getattr(agent, 'agent_name', cls.__qualname__)) if choice is True else choice
    return {'group': name, 'max_retries': spec.max_retries, 'retry_delay': spec.retry_delay, 'start': spec.start}


def agent_info(agent: AgentLike) -> JsonDict:
    """The 1.x ``info()`` keys, each handler's timeout and options, and the payload (and RPC answer)
    schema of every signal the agent receives and every queue it consumes."""
    cls = agent_class(agent)
    periodic: list[JsonDict] = []
    crons: list[JsonDict] = []
    receivers: list[JsonDict] = []
    consumers: list[JsonDict] = []
    signals: dict[str, Signal[Any, Any]] = {}
    queues: dict[str, Queue[Any]] = {}
    for attr, spec in handler_specs(cls):
        handler = f'{cls.__name__}.{attr}'
        if isinstance(spec, ReceiverSpec):
            signals[spec.signal.name] = spec.signal
            receivers.append({'handler': handler, 'signal': spec.signal.name, 'timeout': spec.timeout,
                              **grouping_info(agent, cls, spec)})
        elif isinstance(spec, ConsumerSpec):
            queues[spec.queue.name] = spec.queue
            consumers.append(consumer_info(handler, spec))
        elif isinstance(spec, PeriodicSpec):
            periodic.append({'name': attr, 'period': spec.period, 'timeout': spec.timeout,
                             'start_after': spec.start_after})
        elif isinstance(spec, CronSpec):
            crons.append({'name': attr, 'spec': spec.spec, 'timeout': spec.timeout,
                          'tz': str(spec.tz) if spec.tz else None})
    for item in cls.sends:
        if isinstance(item, Signal):
            signals.setdefault(item.name, item)
        elif isinstance(item, Queue):
            queues.setdefault(item.name, item)
    sent = send_names(cls.sends)
    return {
        'name': cls.__name__,
        'bus': _connection(agent, 'bus'),
        'broker': _connection(agent, 'broker'),
        'periodic': periodic,
        'cron': crons,
        'receivers': sorted(receivers, key=lambda item: (item['signal'], item['handler'])),
        'consumers': sorted(consumers, key=lambda item: (item['queue'], item['handler'])),
        'signals': {name: signal_info(signals[name]) for name in sorted(signals)},
        'queues': {name: queue_info(queues[name]) for name in sorted(queues)},
        'sends': {'signals': sent['signal'], 'queues': sent['queue'], 'exchanges': sent['exchange']},
    }


# JSON Schema draft 2020-12 -> AsyncAPI Schema (draft 07 based), with $defs hoisted into components


# the `microagent schema` command


def declaration_info(item: Sendable) -> JsonDict:
    if isinstance(item, Signal):
        return {'kind': 'signal', **signal_info(item)}
    if isinstance(item, Queue):
        return {'kind': 'queue', **queue_info(item)}
    return {'kind': 'exchange', 'name': item.name, 'type': item.type}
