"""The configuration of a group of agents (the 1.x ``marun`` format), checked before anything runs.

A configuration module defines up to three dicts::

    BUS = {'default': {'backend': 'microagent.backends.redis.RedisSignalBus', 'dsn': 'redis://localhost'}}
    BROKER = {'default': {'backend': 'microagent.backends.redis.RedisBroker', 'dsn': 'redis://localhost'}}
    AGENT = {'users': {'backend': 'users.agent.UserAgent', 'bus': 'default', 'broker': 'default',
                       'settings': {...}, 'events': {'enable_periodic_tasks': False}}}

``backend`` is a dotted path, the other keys of a bus or broker are its keyword arguments. An agent
names a bus and a broker of its own module. ``MIDDLEWARES`` (a list) wraps every agent of the module,
and an agent's ``'middlewares'`` (a list too) wrap it after those; an entry is a dotted path, or a
pair of the path and its keyword arguments::

    MIDDLEWARES = ['microagent.ops.metrics.PrometheusMiddleware', ('myapp.audit.Audit', {'level': 'info'})]

``SETUP = 'myapp.otel:setup'`` names a function (``module:name`` or ``module.name``) that every
process running agents of the module calls once, with no arguments, before it builds them: where
the tracing SDK, a metrics exporter or logging are configured. A failure in it is a ``ConfigError``
naming SETUP.

A process builds one middleware per distinct entry and gives it to each of its agents that names
it (a Prometheus middleware registers its metrics once per process); a middleware with a
``watch_queues(agent)`` method is also given each agent it wraps (``PrometheusMiddleware`` samples
the depth of the queues the agent consumes). Every mistake is reported with
the entry it is in, so a bad deployment fails at once instead of in one of its processes.

An agent entry's ``'replicas': N`` runs N copies of it, each in its own process (``users.1``,
``users.2``, ...; ``marun --replicas users=N`` overrides it): its grouped receivers share each
signal (``group=True`` names the group after the entry), its broadcast receivers each get every one.

``SIGNING_KEY`` (a key, or a list of keys for a rotation: the first signs) is given to every BUS and
BROKER entry of the module that has no ``signing_key`` of its own (``signing.py``); read it from the
environment or a file in the settings module, never write it there.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from microagent.agent import MicroAgent
from microagent.backends import Backend, UnknownScheme, backend_for, backend_of_module
from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.dsn import malformed, scrub
from microagent.errors import MicroAgentError
from microagent.extras import install_hint
from microagent.handlers import ConsumerSpec, HookSpec, ReceiverSpec
from microagent.logs import agent_logger
from microagent.middleware import MiddlewareLike
from microagent.signing import SigningKeys

T = TypeVar('T')
START_FLAGS = ('enable_periodic_tasks', 'enable_receiving_signals', 'enable_consuming_messages',
               'enable_servers_running')
SECTIONS = ('AGENT', 'BUS', 'BROKER')
AGENT_NAME = re.compile(r'[A-Za-z0-9_-]+')


class ConfigError(MicroAgentError, ValueError):
    """The group configuration is wrong; the message names the module and the entry."""


@dataclass(frozen=True)
class BackendConfig:
    """A bus or broker entry: the class and its keyword arguments."""

    label: str
    factory: type[Any]
    options: Mapping[str, Any]
    path: str = ''  #: the dotted path of the class as the settings name it (1.x ``load_configuration``)

    def build(self, log: logging.Logger) -> Any:
        """The bus or broker; what its class refuses (a DSN only its backend checks, a bad option)
        is a ``ConfigError`` naming the entry, with the DSN's password hidden."""
        options: dict[str, Any] = _copy_data(dict(self.options))
        if 'log' not in options and 'log' in inspect.signature(self.factory).parameters:
            options['log'] = log
        try:
            return self.factory(**options)
        except (ValueError, TypeError) as exc:
            dsn = options.get('dsn')
            text = scrub(str(exc), dsn) if isinstance(dsn, str) else str(exc)
            raise ConfigError(f'{self.label}: {type(exc).__name__}: {text}') from None


def _copy_data(value: T) -> T:
    """A copy of the dicts, lists, tuples and sets in ``value``, for each built backend its own;
    other objects (a hub, an SSL context) are given as they are: the settings meant that object."""
    if isinstance(value, dict):
        return type(value)({key: _copy_data(item) for key, item in value.items()})
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(_copy_data(item) for item in value)
    return value


@dataclass(frozen=True)
class MiddlewareConfig:
    """A middleware entry: the class (or factory) and its keyword arguments."""

    label: str
    path: str
    factory: Any
    options: Mapping[str, Any]

    def build(self) -> MiddlewareLike:
        """This process's middleware of this entry: one per path and options, shared by agents."""
        key = (self.path, repr(sorted(self.options.items())))
        built = _MIDDLEWARES.get(key)
        if built is None:
            built = _MIDDLEWARES[key] = self.factory(**_copy_data(dict(self.options)))
        return built


_MIDDLEWARES: dict[tuple[str, str], MiddlewareLike] = {}


@dataclass(frozen=True)
class SetupConfig:
    """A module's ``SETUP``: the function every process calls before it builds the module's agents."""

    label: str
    path: str
    function: Callable[[], object]

    def run(self) -> None:
        """Call it, once per process; its failure is a ``ConfigError`` naming SETUP."""
        if self.path in _SET_UP:
            return
        _SET_UP.add(self.path)
        try:
            result = self.function()
        except Exception as exc:
            raise ConfigError(f'{self.label} {self.path!r} failed: {type(exc).__name__}: {exc}') from exc
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise ConfigError(f'{self.label} {self.path!r} returned an awaitable: SETUP is a plain function, '
                              'called before the event loop runs')


_SET_UP: set[str] = set()


def run_setups(configs: Iterable[AgentConfig]) -> None:
    """Run the SETUP of the modules of ``configs`` that this process has not run yet, in their order."""
    for config in configs:
        if config.setup is not None:
            config.setup.run()


def _setup(module: str, value: Any) -> SetupConfig | None:
    label = f'{module}: SETUP'
    if value is None:
        return None
    if not isinstance(value, str) or value.count(':') > 1:
        raise ConfigError(f"{label}: the path of a function such as 'myapp.otel:setup' is expected, got {value!r}")
    function = import_object(value.replace(':', '.'), label, 'function')
    if not callable(function) or isinstance(function, type):
        raise ConfigError(f'{label}: {value!r} is not a function')
    try:
        inspect.signature(function).bind()
    except TypeError as exc:
        raise ConfigError(f'{label}: {value!r} is called with no arguments: {exc}') from None
    except ValueError:
        pass  # a builtin without a signature: let the call tell
    return SetupConfig(label, value, function)


@dataclass(frozen=True)
class AgentConfig:
    """One agent of the group, ready to be built in the process that runs it."""

    name: str
    label: str
    factory: type[MicroAgent]
    bus: BackendConfig | None = None
    broker: BackendConfig | None = None
    events: Mapping[str, bool] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    middlewares: tuple[MiddlewareConfig, ...] = ()
    setup: SetupConfig | None = None
    replicas: int = 1  #: processes running this agent (``replicas`` of the entry, ``marun --replicas``)
    replica: int = 0  #: which of them this is, from 1; 0 for an agent of one replica

    @property
    def process_name(self) -> str:
        """What names this copy in logs, probes and ``--agent-process``: ``users``, or ``users.2``."""
        return f'{self.name}.{self.replica}' if self.replica else self.name

    def copies(self) -> list[AgentConfig]:
        """One config per replica (itself when it has one)."""
        if self.replicas == 1:
            return [self]
        return [replace(self, replica=number) for number in range(1, self.replicas + 1)]

    @property
    def has_servers(self) -> bool:
        return self.events.get('enable_servers_running', True) and any(
            isinstance(spec, HookSpec) and spec.label == 'server'
            for found in self.factory._specs.values() for spec in found)

    def build(self) -> MicroAgent:
        """A new agent with its own bus and broker, logging as ``agent.<name>``."""
        bus = self.bus.build(agent_logger(self.name, 'bus')) if self.bus else None
        broker = self.broker.build(agent_logger(self.name, 'broker')) if self.broker else None
        options = dict(copy.deepcopy(self.options))
        options.setdefault('log', agent_logger(self.process_name))
        if _takes(self.factory, 'name'):  # its group, with group=True, is named after the entry
            options.setdefault('name', self.name)
        agent = self.factory(bus=bus, broker=broker, **options)
        if self.middlewares:
            built = [middleware.build() for middleware in self.middlewares]
            agent.use(*built)
            for middleware in built:  # PrometheusMiddleware: the depth of the queues the agent consumes
                watch = getattr(middleware, 'watch_queues', None)
                if callable(watch):
                    watch(agent)
        return agent


def _takes(factory: type[Any], keyword: str) -> bool:
    """Whether the agent class's constructor takes ``keyword`` (a 1.x ``__init__`` may not)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in parameters)


MAX_REPLICAS = 64


def check_replicas(label: str, value: object) -> int:
    """A number of replicas: an int from 1 to 64."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_REPLICAS:
        raise ConfigError(f"{label}: 'replicas' must be an integer from 1 to {MAX_REPLICAS}, got {value!r}")
    return value


def with_replicas(agents: Sequence[AgentConfig], overrides: Mapping[str, int]) -> list[AgentConfig]:
    """The agents with the replica counts of ``marun --replicas NAME=N``; an unknown name is an error."""
    known = {agent.name for agent in agents}
    for name in overrides:
        if name not in known:
            raise ConfigError(f'--replicas: no agent named {name!r} (agents: {", ".join(sorted(known))})')
    return [replace(agent, replicas=check_replicas(f'--replicas {agent.name}', overrides[agent.name]))
            if agent.name in overrides else agent for agent in agents]


def import_object(path: Any, label: str, what: str = 'backend') -> Any:
    """``package.module.Name`` -> the object, or a ``ConfigError`` that says what is wrong."""
    if not isinstance(path, str) or '.' not in path.strip('.'):
        named = "'backend'" if what == 'backend' else f'a {what}'
        raise ConfigError(f"{label}: {named} must be a dotted path such as 'package.module.Class', "
                          f'got {path!r}')
    module_name, _, attr = path.rpartition('.')
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f'{label}: cannot import {what} {path!r}: {exc}{install_hint(exc)}') from None
    except Exception as exc:
        raise ConfigError(f'{label}: importing module {module_name!r} of {what} {path!r} failed: '
                          f'{type(exc).__name__}: {exc}') from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f'{label}: cannot import {what} {path!r}: module {module_name!r} has no '
                          f'{attr!r}') from None


def _check_call(label: str, factory: type[Any], options: Mapping[str, Any]) -> None:
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ConfigError(f'{label}: wrong arguments for {factory.__qualname__}: {exc}') from None


def _entries(module: str, section: str, value: Any) -> Iterator[tuple[str, str, dict[str, Any], type[Any]]]:
    if not isinstance(value, Mapping):
        raise ConfigError(f'{module}: {section} must be a dict of entries, got {type(value).__name__}')
    for name, entry in value.items():
        label = f'{module}: {section}[{name!r}]'
        if not isinstance(entry, Mapping):
            raise ConfigError(f'{label}: an entry is a dict with a \'backend\', got {type(entry).__name__}')
        options = {key: item for key, item in entry.items() if key != 'backend'}
        yield name, label, options, _factory(label, section, entry)


def _factory(label: str, section: str, entry: Mapping[str, Any]) -> Any:
    """The class of an entry: its ``backend`` path, or (buses and brokers) the registry's for its DSN."""
    if 'backend' in entry:
        return import_object(entry['backend'], label)
    if section in ('BUS', 'BROKER') and isinstance(entry.get('dsn'), str):
        try:
            return backend_for(entry['dsn']).load('bus' if section == 'BUS' else 'broker')
        except MicroAgentError as exc:
            raise ConfigError(f'{label}: {exc}') from None
    extra = " or a 'dsn' whose scheme names one" if section != 'AGENT' else ''
    raise ConfigError(f"{label}: missing 'backend' (the dotted path of its class){extra}")


def _backends(module: str, section: str, value: Any, base: type[Any],
              signing: SigningKeys | None = None) -> dict[str, BackendConfig]:
    found: dict[str, BackendConfig] = {}
    for name, label, options, factory in _entries(module, section, value):
        if not (isinstance(factory, type) and issubclass(factory, base)):
            raise ConfigError(f'{label}: backend {factory!r} is not a subclass of {base.__name__}')
        if 'signing_key' in options:
            options['signing_key'] = _signing_keys(f"{label}['signing_key']", options['signing_key'])
        elif signing is not None:
            options['signing_key'] = signing
        _check_call(label, factory, options)
        if isinstance(options.get('dsn'), str) and (problem := malformed(options['dsn'])) is not None:
            raise ConfigError(f'{label}: {problem}')
        written = value[name].get('backend')
        path = written if isinstance(written, str) else f'{factory.__module__}.{factory.__qualname__}'
        found[name] = BackendConfig(label, factory, _one_place(factory, options, f'{module}/{section}/{name}'), path)
    return found


def _signing_keys(label: str, value: Any) -> SigningKeys | None:
    """A key or keys of the settings, checked once and hidden from every repr of the settings."""
    if value is None:
        return None
    try:
        return SigningKeys.of(value)
    except MicroAgentError as exc:  # never shows a key: only its index, type and length
        raise ConfigError(f'{label}: {exc}') from None


def registered_backend(factory: type[Any]) -> Backend | None:
    """The registry's backend of a bus or broker class, or of the class it derives from."""
    for klass in factory.__mro__:
        found = backend_of_module(klass.__module__)
        if found is not None:
            return found
    return None


def _one_place(factory: type[Any], options: dict[str, Any], place: str) -> dict[str, Any]:
    """The options of an entry of a one-process backend (in-memory): a DSN that names no place to
    meet is given the entry's own (``module/SECTION/name``), so the agents that name the entry meet
    there instead of each on a private one; an explicit ``hub`` is left as it is."""
    backend = registered_backend(factory)
    parameters = inspect.signature(factory).parameters
    if backend is None or not backend.one_process or 'hub' in options or 'dsn' not in parameters:
        return options
    dsn = options.get('dsn', parameters['dsn'].default)
    if not isinstance(dsn, str):
        dsn = f'{backend.schemes[0]}://'
    return {**options, 'dsn': backend.named_place(dsn, place)}


def _middlewares(label: str, value: Any) -> tuple[MiddlewareConfig, ...]:
    """Check a MIDDLEWARES list (or an agent's ``middlewares``): dotted paths or (path, options) pairs."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f'{label}: a list of middlewares (dotted paths or (path, options) pairs) is '
                          f'expected, got {type(value).__name__}')
    found = []
    for index, entry in enumerate(value):
        where = f'{label}[{index}]'
        path, options = entry, {}
        if isinstance(entry, list | tuple):
            if len(entry) != 2 or not isinstance(entry[1], Mapping):
                raise ConfigError(f'{where}: a middleware entry is a dotted path or a (path, options dict) '
                                  f'pair, got {entry!r}')
            path, options = entry[0], dict(entry[1])
        factory = import_object(path, where, 'middleware')
        if not callable(factory):
            raise ConfigError(f'{where}: {path!r} is not a class or a function')
        if isinstance(factory, type) and not all(callable(getattr(factory, m, None)) for m in ('handle', 'send')):
            raise ConfigError(f'{where}: {path!r} is not a middleware: it needs async handle() and send() '
                              'methods (subclass microagent.Middleware)')
        _check_call(where, factory, options)
        found.append(MiddlewareConfig(where, path, factory, options))
    return tuple(found)


def _pick(label: str, key: str, wanted: Any, defined: Mapping[str, BackendConfig],
          section: str) -> BackendConfig | None:
    if wanted is None:
        return None
    if wanted not in defined:
        known = ', '.join(repr(name) for name in defined) or 'none'
        raise ConfigError(f'{label}: {key} {wanted!r} is not defined in {section} (defined: {known})')
    return defined[wanted]


def _agent(module: str, name: str, label: str, options: dict[str, Any], factory: type[Any],
           buses: Mapping[str, BackendConfig], brokers: Mapping[str, BackendConfig],
           middlewares: tuple[MiddlewareConfig, ...] = (), setup: SetupConfig | None = None) -> AgentConfig:
    if not isinstance(name, str) or not AGENT_NAME.fullmatch(name):
        raise ConfigError(f'{label}: an agent name is made of letters, digits, _ and -')
    if not (isinstance(factory, type) and issubclass(factory, MicroAgent)):
        raise ConfigError(f'{label}: backend {factory!r} is not a MicroAgent subclass')
    bus = _pick(label, 'bus', options.pop('bus', None), buses, 'BUS')
    broker = _pick(label, 'broker', options.pop('broker', None), brokers, 'BROKER')
    middlewares += _middlewares(f"{label}['middlewares']", options.pop('middlewares', ()))
    replicas = check_replicas(label, options.pop('replicas', 1))
    events = options.pop('events', None) or {}
    if not isinstance(events, Mapping) or any(key not in START_FLAGS or not isinstance(flag, bool)
                                              for key, flag in events.items()):
        raise ConfigError(f"{label}: 'events' must map some of {', '.join(START_FLAGS)} to True/False, "
                          f'got {events!r}')
    if 'settings' in options and not isinstance(options['settings'], dict):
        raise ConfigError(f"{label}: 'settings' must be a dict, got {type(options['settings']).__name__}")
    _check_call(label, factory, {'bus': None, 'broker': None, **options})
    specs = [spec for found in factory._specs.values() for spec in found]
    if bus is None and any(isinstance(spec, ReceiverSpec) for spec in specs):
        raise ConfigError(f"{label}: {factory.__qualname__} receives signals but names no 'bus'")
    if broker is None and any(isinstance(spec, ConsumerSpec) for spec in specs):
        raise ConfigError(f"{label}: {factory.__qualname__} consumes queues but names no 'broker'")
    return AgentConfig(name, label, factory, bus, broker, dict(events), options, middlewares, setup, replicas)


def load_module(module: str) -> list[AgentConfig]:
    """Import one configuration module and check every entry of it."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f'cannot import configuration module {module!r}: {exc}{install_hint(exc)}') from None
    except Exception as exc:
        raise ConfigError(f'importing configuration module {module!r} failed: {type(exc).__name__}: {exc}') \
            from exc
    if not any(hasattr(mod, section) for section in SECTIONS):
        raise ConfigError(f'{module}: defines none of {", ".join(SECTIONS)}')
    signing = _signing_keys(f'{module}: SIGNING_KEY', getattr(mod, 'SIGNING_KEY', None))
    buses = _backends(module, 'BUS', getattr(mod, 'BUS', {}), AbstractSignalBus, signing)
    brokers = _backends(module, 'BROKER', getattr(mod, 'BROKER', {}), AbstractQueueBroker, signing)
    middlewares = _middlewares(f'{module}: MIDDLEWARES', getattr(mod, 'MIDDLEWARES', ()))
    setup = _setup(module, getattr(mod, 'SETUP', None))
    return [_agent(module, name, label, options, factory, buses, brokers, middlewares, setup)
            for name, label, options, factory in _entries(module, 'AGENT', getattr(mod, 'AGENT', {}))]


def load_group(modules: Sequence[str]) -> list[AgentConfig]:
    """Every agent of the configuration modules; agent names are unique in a group."""
    agents: dict[str, AgentConfig] = {}
    for module in modules:
        for agent in load_module(module):
            if agent.name in agents:
                raise ConfigError(f'{agent.label}: an agent named {agent.name!r} is already defined in '
                                  f'{agents[agent.name].label.partition(":")[0]}')
            agents[agent.name] = agent
    if not agents:
        raise ConfigError(f'no agent is defined in {", ".join(modules)}')
    return list(agents.values())


def backend_class(dsn: str, backend: str | None, role: Literal['bus', 'broker'], base: type[T], what: str, *,
                  one_process_ok: bool = True) -> type[T]:
    """The registry's class for the DSN's scheme; ``--backend`` names any other ``base`` class.
    ``role`` is the DSN's option (``bus``, ``broker``), ``what`` the kind of class in errors."""
    path, label = backend, '--backend'
    if path is None:
        label = f'--{role}'
        try:
            found = backend_for(dsn)
        except UnknownScheme as exc:
            raise ConfigError(f'--{role}: {exc}, or --backend for a {role} class of your own') from None
        if found.one_process and not one_process_ok:
            raise ConfigError(f'--{role}: {found.schemes[0]}:// lives in one process, nothing outside it would get '
                              'the message: give the DSN of a server')
        try:
            factory = found.load(role)
        except MicroAgentError as exc:
            raise ConfigError(f'--{role}: {exc}') from None
    else:
        factory = import_object(path, label)
    if not (isinstance(factory, type) and issubclass(factory, base)):
        raise ConfigError(f'{label}: {path or factory!r} is not a {what} class')
    return factory
