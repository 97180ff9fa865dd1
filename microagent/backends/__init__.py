"""The backend registry: which backend serves a DSN scheme, and what the rest of the library may
know of it (its bus and broker classes, its ``messaging.system`` name for traces, the header names
it keeps for itself on the wire, the pip extra that installs its client).

Every lookup goes through here: marun settings, the ``microagent`` CLI (``publish``,
``dead-letters``), ``TestGroup``, tracing, metrics and the AsyncAPI servers. The built-in backends
are listed below by dotted path, so nothing is imported until a backend is used (its client library
is an optional extra). A third-party backend registers itself with an entry point::

    [project.entry-points."microagent.backends"]
    kafka = "mypkg.kafka:BACKEND"      # a microagent.backends.Backend

or, in code, with ``register(Backend(...))``.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

from microagent.dsn import hide_password
from microagent.errors import MissConfig

__all__ = ['ENTRY_POINT_GROUP', 'Backend', 'UnknownScheme', 'all_backends', 'backend_for', 'backend_named',
           'backend_of_module', 'known_schemes', 'pip_hint', 'register', 'reserving_backend']

ENTRY_POINT_GROUP = 'microagent.backends'


class UnknownScheme(MissConfig, ValueError):
    """No registered backend serves the scheme of a DSN; the message lists those that do."""


@dataclass(frozen=True)
class Backend:
    """One backend, as the registry knows it."""

    name: str  #: short name: ``Handling.backend``, log lines, metrics labels
    schemes: tuple[str, ...]  #: the DSN schemes it serves (``redis``, ``rediss`` ...)
    bus: str | None  #: dotted path of its signal bus class (``AbstractSignalBus``), None: none
    broker: str | None  #: dotted path of its queue broker class (``AbstractQueueBroker``), None: none
    system: str  #: ``messaging.system`` of the OpenTelemetry conventions
    package: str  #: the module (or package) its transports live in
    extra: str | None = None  #: the pip extra that installs its client: ``microagent[extra]``
    modules: tuple[str, ...] = ()  #: the top-level modules that extra installs (its client library)
    reserved_headers: frozenset[str] = frozenset()  #: lower-case header names it keeps for itself
    reserved_prefixes: tuple[str, ...] = ()  #: lower-case prefixes of such names
    protocols: dict[str, str] = field(default_factory=dict)  #: AsyncAPI protocol by scheme, if not the scheme
    #: lives in one process: agents in several processes never meet on it. In one process its
    #: instances meet on the place a DSN ``scheme://NAME`` names; ``scheme://`` alone names none
    one_process: bool = False

    def load(self, role: Literal['bus', 'broker']) -> type[Any]:
        """The bus or broker class, imported now (the registry sits below the engines, so callers
        check the class); a missing client library names the extra that installs it."""
        path = self.bus if role == 'bus' else self.broker
        if path is None:
            raise MissConfig(f'the {self.name} backend has no {role}')
        module, _, name = path.rpartition('.')
        try:
            found = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            missing = exc.name or 'a module'
            client = missing.partition('.')[0] in self.modules if self.modules else missing != module
            hint = pip_hint(self.extra) if client else ''
            raise MissConfig(f'the {self.name} backend needs {missing}{hint}') from exc
        except AttributeError:
            raise MissConfig(f'the {self.name} backend names {path!r}, which {module!r} does not have') from None
        if not isinstance(found, type):
            raise MissConfig(f'the {self.name} backend names {path!r}, which is not a class')
        return found

    def named_place(self, dsn: str, place: str) -> str:
        """A one-process backend's ``dsn`` if it names a place to meet, else the DSN naming ``place``
        (what gives the agents of one marun settings entry one hub)."""
        scheme, _, name = dsn.partition('://')
        return dsn if name or not self.one_process else f'{scheme}://{place}'

    def protocol(self, scheme: str) -> str:
        return self.protocols.get(scheme, scheme)



def pip_hint(extra: str | None) -> str:
    """``": pip install 'microagent[redis]'"``, the end of an error about a missing module; '' for no extra."""
    return f": pip install 'microagent[{extra}]'" if extra else ''


_REDIS_SCHEMES = ('redis', 'rediss', 'unix', 'redis+cluster', 'rediss+cluster')
_BUILT_IN = (
    Backend('redis', _REDIS_SCHEMES, 'microagent.backends.redis.RedisSignalBus',
            'microagent.backends.redis.RedisBroker', system='redis', package='microagent.backends.redis',
            extra='redis', modules=('redis', 'hiredis'),
            protocols={'redis+cluster': 'redis', 'rediss+cluster': 'rediss'}),
    Backend('amqp', ('amqp', 'amqps'), 'microagent.backends.amqp.AMQPSignalBus',
            'microagent.backends.amqp.AMQPBroker', system='rabbitmq', package='microagent.backends.amqp',
            extra='amqp', modules=('aiormq', 'pamqp'),
            reserved_headers=frozenset({'x-attempt', 'x-reason', 'x-dead-at', 'x-delay'}),
            reserved_prefixes=('x-death', 'x-first-death', 'x-last-death')),
    Backend('nats', ('nats',), 'microagent.backends.nats.NATSSignalBus',
            'microagent.backends.nats.NATSBroker', system='nats', package='microagent.backends.nats',
            extra='nats', modules=('nats',),
            reserved_headers=frozenset({'x-attempt', 'x-reason', 'x-dead-at', 'x-due', 'x-redelivered', 'x-group',
                                        'x-priority'}),
            reserved_prefixes=('nats-',)),
    Backend('memory', ('memory',), 'microagent.backends.memory.MemorySignalBus',
            'microagent.backends.memory.MemoryBroker', system='memory', package='microagent.backends.memory',
            one_process=True),
)
_registered: dict[str, Backend] = {backend.name: backend for backend in _BUILT_IN}
_loaded = False
_reserved: tuple[dict[str, Backend], tuple[tuple[str, Backend], ...]] | None = None


def register(backend: Backend) -> Backend:
    """Add (or replace, by name) a backend; its schemes then work everywhere a DSN is given."""
    _load_entry_points()
    taken = {scheme: other.name for other in _registered.values() if other.name != backend.name
             for scheme in other.schemes}
    clash = [scheme for scheme in backend.schemes if scheme in taken]
    if clash:
        raise MissConfig(f'backend {backend.name!r}: scheme {clash[0]}:// is already served by {taken[clash[0]]!r}')
    global _reserved
    _registered[backend.name] = backend
    _reserved = None
    return backend


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        backend = entry.load()
        if not isinstance(backend, Backend):
            raise MissConfig(f'entry point {entry.name!r} of {ENTRY_POINT_GROUP!r} is not a microagent Backend: '
                             f'{backend!r}')
        register(backend)


def all_backends() -> Iterator[Backend]:
    _load_entry_points()
    return iter(tuple(_registered.values()))


def backend_for(dsn: str) -> Backend:
    """The backend that serves ``dsn``'s scheme; ``UnknownScheme`` lists the schemes there are."""
    scheme, sep, _ = dsn.partition('://')
    scheme = scheme.lower() if sep else ''
    for backend in all_backends():
        if scheme in backend.schemes:
            return backend
    raise UnknownScheme(f'no backend for the scheme of {hide_password(dsn)!r}: use one of {known_schemes()}')


def known_schemes() -> str:
    """``redis://, rediss://, ...``: every scheme a backend serves, for error messages."""
    return ', '.join(f'{scheme}://' for backend in all_backends() for scheme in backend.schemes)


def backend_named(name: str) -> Backend | None:
    _load_entry_points()
    return _registered.get(name)


def backend_of_module(module: str) -> Backend | None:
    """The backend whose transports live in ``module`` (a transport class's ``__module__``)."""
    for backend in all_backends():
        if module == backend.package or module.startswith(backend.package + '.'):
            return backend
    return None


def reserving_backend(lower: str) -> Backend | None:
    """The backend that keeps header ``lower`` (a lower-case name) for itself on the wire, if any.
    Asked for every user header of every message received: one dict lookup in the common case."""
    global _reserved
    if _reserved is None:
        backends = list(all_backends())
        _reserved = ({name: b for b in reversed(backends) for name in b.reserved_headers},
                     tuple((prefix, b) for b in backends for prefix in b.reserved_prefixes))
    names, prefixes = _reserved
    found = names.get(lower)
    if found is None and prefixes:
        found = next((backend for prefix, backend in prefixes if lower.startswith(prefix)), None)
    return found
