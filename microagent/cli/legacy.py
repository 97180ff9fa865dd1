"""The 1.x launcher helpers, kept for scripts that built agents by hand from a marun configuration.

``microagent.cli.marun`` re-exports them: ``load_configuration('pkg.settings')`` yields
``(name, (agent class path, cfg))`` and ``init_agent(path, cfg)`` builds the agent, not started,
exactly as 1.x did. The configuration is checked as ``marun`` checks it (a ``ConfigError`` names the entry).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from microagent.agent import MicroAgent
from microagent.cli.config import BackendConfig, ConfigError, import_object, load_module

#: a backend as 1.x passes it around: the dotted path of its class and its keyword arguments
BackendCfg = tuple[str, dict[str, Any]]


def _path(factory: type[Any]) -> str:
    return f'{factory.__module__}.{factory.__qualname__}'


def _backend(config: BackendConfig | None) -> BackendCfg | None:
    return None if config is None else (config.path or _path(config.factory), dict(config.options))


def load_configuration(config_path: str) -> Iterator[tuple[str, tuple[str, dict[str, Any]]]]:
    """Each agent of the configuration module as 1.x unfolded it: its name, the dotted path of its
    class and the keyword arguments of that class, with ``bus``/``broker`` as ``(path, options)``."""
    for config in load_module(config_path):
        cfg: dict[str, Any] = {'bus': _backend(config.bus), 'broker': _backend(config.broker),
                               **dict(config.options)}
        yield config.name, (_path(config.factory), cfg)


def init_agent(backend: str, cfg: dict[str, Any]) -> MicroAgent:
    """A new agent, not started, from one entry of ``load_configuration`` (1.x pops ``bus`` and
    ``broker`` from ``cfg``, builds them, and passes the rest to the agent class)."""
    bus_cfg: BackendCfg | None = cfg.pop('bus', None)
    broker_cfg: BackendCfg | None = cfg.pop('broker', None)
    factory = import_object(backend, f'agent {backend!r}')
    if not (isinstance(factory, type) and issubclass(factory, MicroAgent)):
        raise ConfigError(f'agent {backend!r}: {factory!r} is not a MicroAgent subclass')
    bus = import_object(bus_cfg[0], f'bus of agent {backend!r}')(**bus_cfg[1]) if bus_cfg else None
    broker = import_object(broker_cfg[0], f'broker of agent {backend!r}')(**broker_cfg[1]) if broker_cfg else None
    return factory(bus=bus, broker=broker, **cfg)
