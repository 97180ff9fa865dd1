"""``microagent schema TARGET [...] [--asyncapi [--title T] [--version V]] [-o FILE]``: the ``info()`` of agents and
declarations, or one AsyncAPI document of them all."""
from __future__ import annotations

import json
import sys
from typing import Any

from microagent.cli.targets import attribute, load_fleet
from microagent.contract.asyncapi import asyncapi as _asyncapi
from microagent.contract.info import AgentLike, agent_class, agent_info, declaration_info
from microagent.errors import InvalidArgument


def dumps(document: Any) -> str:
    """The JSON text of ``info()`` or an AsyncAPI document, as the command and ``schemas/json`` write it."""
    return json.dumps(document, indent=2, ensure_ascii=False) + '\n'


def load_agent(target: str) -> AgentLike:
    """``path.to.module:AgentClass`` (an agent instance works too)."""
    module_name, sep, attr = target.partition(':')
    if not sep or not module_name or not attr:
        raise InvalidArgument(f'{target!r}: expected path.to.module:AgentClass')
    value = attribute(target)
    try:
        agent_class(value)
    except TypeError as exc:
        raise InvalidArgument(f'{target!r}: {exc}') from None
    return value  # type: ignore[no-any-return]


def schema_command(targets: list[str], asyncapi: bool, output: str | None, *, title: str | None = None,
                   version: str = '1.0.0') -> int:
    """``microagent schema TARGET [...] [--asyncapi] [-o FILE]``: a TARGET is a marun settings module
    (the fleet), ``module:Agent``, ``module:declaration`` or a module of declarations. Prints (or
    writes) the ``info()`` of each agent and declaration (a list when several), or ONE AsyncAPI
    document of them all, whose ``info`` has ``title`` and ``version`` (the contract's, for readers)."""
    if not targets:
        print('microagent schema: give at least one settings module, module:Agent or module:declaration',
              file=sys.stderr)
        return 2
    try:
        fleet = load_fleet(targets)
    except ValueError as exc:
        print(f'microagent schema: {exc}', file=sys.stderr)
        return 2
    document: Any
    if asyncapi:
        names = [agent.cls.__name__ for agent in fleet.agents] or [item.name for item in fleet.declarations]
        document = _asyncapi(*(agent.cls for agent in fleet.agents), title=title or ', '.join(names),
                             version=version, servers=fleet.servers(), declarations=fleet.declarations)
    else:
        infos = [agent_info(agent.cls) for agent in fleet.agents] + [declaration_info(d) for d in fleet.declarations]
        document = infos[0] if len(infos) == 1 else infos
    text = dumps(document)
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(output, 'w', encoding='utf-8') as file:
            file.write(text)
    except OSError as exc:
        print(f'microagent schema: cannot write {output!r}: {exc}', file=sys.stderr)
        return 1
    return 0
