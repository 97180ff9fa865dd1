"""``microagent check SETTINGS``: the topology of a fleet checked against its declarations.

Errors: a received signal or consumed queue nobody sends, one name with two contracts, a typed
handler whose model is not its declaration's, a receiver that answers a signal without an answer
type. Warnings: something sent that nobody receives (``--strict`` makes them fail too).
"""
from __future__ import annotations

import json
import re
import sys
import types
import typing
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from microagent.cli.targets import load_fleet
from microagent.contract.fleet import Fleet, FleetAgent
from microagent.exchange import Exchange
from microagent.handlers import ReceiverSpec
from microagent.queue import Queue
from microagent.signal import Signal

Level = Literal['error', 'warning']
CONFLICT = 'is already declared with another contract'
_CONFLICTING = re.compile(r"^(signal|queue|exchange) '(.+?)' " + CONFLICT + r': (.*) \(now (.*)\)$')


@dataclass(frozen=True)
class Problem:
    level: Level
    code: str
    kind: str  # signal, queue or exchange
    name: str
    message: str


def _sent(fleet: Fleet) -> dict[tuple[str, str], list[str]]:
    """(kind, name) -> the agents that send it; a queue is sent when its exchange is."""
    senders: dict[tuple[str, str], list[str]] = defaultdict(list)
    for agent in fleet.agents:
        for item in agent.cls.sends:
            kind = 'signal' if isinstance(item, Signal) else 'queue' if isinstance(item, Queue) else 'exchange'
            senders[kind, item.name].append(agent.name)
            if kind == 'exchange':
                for queue in Queue.get_all().values():
                    if queue.exchange == item.name:
                        senders['queue', queue.name].append(agent.name)
    return senders


def _received(fleet: Fleet) -> dict[tuple[str, str], list[str]]:
    receivers: dict[tuple[str, str], list[str]] = defaultdict(list)
    for agent in fleet.agents:
        for signal in agent.receives():
            receivers['signal', signal.name].append(agent.name)
        for spec in agent.consumes():
            receivers['queue', spec.queue.name].append(agent.name)
            if spec.queue.exchange:
                receivers['exchange', spec.queue.exchange].append(agent.name)
    return receivers


def _handler_problems(agent: FleetAgent) -> list[Problem]:
    """Typed receivers: the payload annotation is the signal's model; an answer needs ``returns``."""
    problems: list[Problem] = []
    for attr, found in sorted(agent.cls._specs.items()):
        for spec in found:
            if not isinstance(spec, ReceiverSpec) or spec.style.legacy:
                continue
            try:
                hints = typing.get_type_hints(getattr(agent.cls, attr))
            except Exception:  # an annotation that does not resolve is not this check's business
                continue
            signal, where = spec.signal, f'{agent.name}: {agent.cls.__name__}.{attr}'
            params = [name for name in hints if name not in ('return', 'sender', 'signal', 'message')]
            model = hints.get(params[0]) if spec.style.positional and params else None
            if model is not None and signal.model is not None and model is not signal.model:
                problems.append(Problem('error', 'model-mismatch', 'signal', signal.name,
                                        f'{where} takes {getattr(model, "__name__", model)} but signal '
                                        f'{signal.name!r} carries {signal.model.__name__}'))
            answers = hints.get('return', type(None)) is not type(None)
            if answers and signal.answer_codec is None:
                problems.append(Problem('error', 'rpc-without-answer-type', 'signal', signal.name,
                                        f'{where} answers signal {signal.name!r}, which declares no answer '
                                        'type (Signal(..., returns=T))'))
    return problems


def check_fleet(fleet: Fleet) -> list[Problem]:
    """Every problem of the fleet, errors first, each group sorted by name."""
    senders, receivers = _sent(fleet), _received(fleet)
    problems: list[Problem] = []
    for (kind, name), agents in sorted(receivers.items()):
        if kind != 'exchange' and (kind, name) not in senders:
            verb = 'receives signal' if kind == 'signal' else 'consumes queue'
            problems.append(Problem('error', 'nobody-sends', kind, name,
                                    f'{", ".join(sorted(set(agents)))} {verb} {name!r}, which no agent sends'))
    for (kind, name), agents in sorted(senders.items()):
        if (kind, name) not in receivers and not (kind == 'queue' and ('exchange', name) in senders):
            problems.append(Problem('warning', 'nobody-receives', kind, name,
                                    f'{", ".join(sorted(set(agents)))} sends {kind} {name!r}, which no agent '
                                    'receives'))
    for agent in fleet.agents:
        problems += _handler_problems(agent)
    return sorted(problems, key=lambda p: (p.level != 'error', p.kind, p.name, p.code, p.message))


def _conflict(exc: Exception) -> Problem:
    """One name given two contracts stops the fleet's import itself (a process holds one declaration
    per name): the problem names both modules, as found from the registry and the import that failed."""
    match = _CONFLICTING.match(str(exc))
    if match is None:
        return Problem('error', 'two-contracts', '', '', str(exc))
    kind, name, first, second = match.groups()
    registries: dict[str, Mapping[str, object]] = {
        'signal': Signal.get_all(), 'queue': Queue.get_all(), 'exchange': Exchange.get_all()}
    known = registries[kind].get(name)
    before = [module.__name__ for module in list(sys.modules.values())
              if isinstance(module, types.ModuleType) and any(value is known for value in vars(module).values())]
    tb, importing = exc.__traceback__, '?'
    while tb is not None:  # the innermost module being imported is the one declaring it again
        if tb.tb_frame.f_code.co_name == '<module>':
            importing = str(tb.tb_frame.f_globals.get('__name__', '?'))
        tb = tb.tb_next
    return Problem('error', 'two-contracts', kind, name,
                   f'{kind} {name!r} has two contracts: declared in {", ".join(sorted(before)) or "?"} with '
                   f'{first}, and again in {importing} with {second}')


def check_command(targets: list[str], output_format: str, strict: bool) -> int:
    """Exit 0 when clean (warnings allowed unless ``strict``), 1 with problems, 2 for bad targets."""
    try:
        fleet = load_fleet(targets)
    except ValueError as exc:
        if CONFLICT not in str(exc):
            print(f'microagent check: {exc}', file=sys.stderr)
            return 2
        fleet, problems = Fleet(', '.join(targets)), [_conflict(exc)]
    else:
        problems = check_fleet(fleet)
    errors = sum(problem.level == 'error' for problem in problems)
    warnings = len(problems) - errors
    if output_format == 'json':
        print(json.dumps({'agents': [agent.name for agent in fleet.agents], 'errors': errors,
                          'warnings': warnings, 'problems': [asdict(p) for p in problems]}, indent=2))
    else:
        for problem in problems:
            print(f'{problem.level}: [{problem.code}] {problem.message}')
        if fleet.agents or not problems:
            print(f'{len(fleet.agents)} agents checked: {errors} errors, {warnings} warnings')
        else:  # nothing was checked: say what stopped it, not "0 agents checked"
            print(f'{", ".join(targets)}: not checked, its declarations cannot be loaded: {errors} errors')
    return 1 if errors or (strict and warnings) else 0
