"""What the contract commands are given, read as a fleet: a marun settings module (the whole
fleet, as ``marun`` would run it), an agent ``module:Class``, a declaration ``module:name`` or a
module of declarations. Nothing is connected or started.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Literal

from microagent.agent import MicroAgent
from microagent.cli.config import SECTIONS, BackendConfig, ConfigError, load_module
from microagent.contract.fleet import Fleet, FleetAgent
from microagent.errors import InvalidArgument
from microagent.exchange import Exchange
from microagent.extras import install_hint
from microagent.queue import Queue
from microagent.sends import kind_of
from microagent.signal import Signal


def dsn_of(backend: BackendConfig | None) -> str | None:
    if backend is None:
        return None
    if 'dsn' in backend.options:
        return str(backend.options['dsn'])
    default = inspect.signature(backend.factory).parameters.get('dsn')
    return default.default if default is not None and isinstance(default.default, str) else None


def attribute(target: str) -> Any:
    """The object ``module:name.path`` names; an ``InvalidArgument`` naming the target otherwise."""
    module_name, _, attr = target.partition(':')
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgument(f'{target!r}: cannot import {module_name!r}: {exc}{install_hint(exc)}') from None
    for part in attr.split('.'):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise InvalidArgument(f'{target!r}: {module_name!r} has no attribute {attr!r}') from None
    return value


def _add_module(fleet: Fleet, target: str) -> None:
    try:
        module = importlib.import_module(target)
    except ImportError as exc:
        raise InvalidArgument(f'{target!r}: cannot import it: {exc}{install_hint(exc)}') from None
    if any(hasattr(module, section) for section in SECTIONS):
        try:
            configs = load_module(target)
        except ConfigError as exc:
            raise InvalidArgument(str(exc)) from None
        fleet.agents += [FleetAgent(config.name, config.factory, dsn_of(config.bus), dsn_of(config.broker))
                         for config in configs]
        title = getattr(module, 'TITLE', None)
        if isinstance(title, str) and title.strip():
            fleet.heading = ' · '.join(filter(None, (fleet.heading, title.strip())))
        return
    found = [value for value in vars(module).values() if kind_of(value) is not None]
    if not found:
        raise InvalidArgument(f'{target!r}: neither a settings module (AGENT, BUS, BROKER) nor a module of '
                              'Signal, Queue or Exchange declarations')
    fleet.declarations += found


def load_fleet(targets: list[str]) -> Fleet:
    """The fleet of ``targets``; an ``InvalidArgument`` naming the target that is none of the four kinds."""
    if os.getcwd() not in sys.path and '' not in sys.path:
        sys.path.insert(0, os.getcwd())  # `microagent check myapp.settings` from the project directory
    fleet = Fleet(', '.join(targets))
    for target in targets:
        if ':' not in target:
            _add_module(fleet, target)
            continue
        value = attribute(target)
        if isinstance(value, type) and issubclass(value, MicroAgent):
            fleet.agents.append(FleetAgent(value.__name__, value))
        elif isinstance(value, MicroAgent):
            fleet.agents.append(FleetAgent(type(value).__name__, type(value)))
        elif isinstance(value, Signal | Queue | Exchange):
            fleet.declarations.append(value)
        else:
            raise InvalidArgument(f'{target!r}: {value!r} is neither an agent class nor a Signal, Queue or '
                                  'Exchange declaration')
    return fleet


def settings_modules(targets: list[str]) -> list[str]:
    """The targets that are marun settings modules (they define AGENT, BUS or BROKER)."""
    found = []
    for target in targets:
        if ':' in target or target.startswith(('file://', 'http://', 'https://')):
            continue
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise InvalidArgument(f'{target!r}: cannot import it: {exc}') from None
        if any(hasattr(module, section) for section in SECTIONS):
            found.append(target)
    return found


def used_entries(modules: list[str], role: Literal['bus', 'broker']) -> list[BackendConfig]:
    """The BUS (or BROKER) entries the agents of these settings modules use; entries with the same
    class and options count once, so a copy under another name is not a choice to ask about."""
    found: dict[tuple[type[Any], str], BackendConfig] = {}
    for module in modules:
        try:
            configs = load_module(module)
        except ConfigError as exc:
            raise InvalidArgument(str(exc)) from None
        for config in configs:
            entry = config.bus if role == 'bus' else config.broker
            if entry is not None:
                found.setdefault((entry.factory, repr(sorted(entry.options.items()))), entry)
    return list(found.values())
