"""Declarations from JSON: ``load_stuff('file://stuff.json')`` or an ``http(s)://`` URL.

    {"signals": [{"name": "user_created", "providing_args": ["user_id"]},
                 {"name": "typed", "providing_args": {"user_id": "integer", "note": ["string", "null"]}},
                 {"name": "by_schema", "schema": {"type": "object", "properties": {...}}}],
     "queues": [{"name": "mailer"}, {"name": "push", "exchange": "events", "topics": ["*.push"]},
                {"name": "strict", "schema": {...}}]}
"""
from __future__ import annotations

import importlib
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import msgspec

from microagent.dsn import hide_password
from microagent.errors import DeclarationError, DoubleLoadError
from microagent.queue import Queue
from microagent.signal import Signal

#: largest declarations document read over http(s), in bytes
MAX_SIZE = 4 * 1024 * 1024
#: overall deadline of an http(s) download, in seconds, however slowly the server answers
TIMEOUT = 30.0
_CHUNK = 64 * 1024
#: the Redis channel prefix of 1.x, the only ``default_prefix`` a declarations document may give
DEFAULT_PREFIX = 'PUBSUB'


class Namespace(SimpleNamespace):
    """Declarations by attribute (``signals.user_created``), iterable like 1.x's namedtuple."""

    def __iter__(self) -> Iterator[Any]:
        return iter(vars(self).values())

    def __getattr__(self, name: str) -> Any:  # unknown names: an error that says which
        raise AttributeError(f'{name!r} is not declared')


def _read(source: str, max_size: int = MAX_SIZE, timeout: float = TIMEOUT) -> Any:
    if source.startswith('file://'):
        with open(source.removeprefix('file://'), 'rb') as file:
            return msgspec.json.decode(file.read())
    if source.startswith(('http://', 'https://')):
        return msgspec.json.decode(_fetch(source, max_size, timeout))
    raise DeclarationError(f'declarations source must start with file://, http:// or https://: '
                           f'{hide_password(source)!r}')


def _fetch(url: str, max_size: int, timeout: float) -> bytes:
    """The body at ``url``, read in a daemon thread: the caller gets an answer or an error by the
    deadline whatever the server does (a socket timeout alone lets a trickle go on for ever)."""
    outcome: list[bytes | BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            outcome.append(_download(url, max_size, time.monotonic() + timeout))
        except BaseException as exc:  # handed to the caller, who raises it
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=work, name='microagent-loader', daemon=True).start()
    if not done.wait(timeout) or not outcome:
        raise DeclarationError(f'declarations at {hide_password(url)}: no complete answer within {timeout}s')
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _download(url: str, max_size: int, deadline: float) -> bytes:
    safe = hide_password(url)
    with urllib.request.urlopen(url, timeout=max(0.001, deadline - time.monotonic())) as response:
        length = response.headers.get('Content-Length')
        if length is not None and length.isdigit() and int(length) > max_size:
            raise DeclarationError(f'declarations at {safe}: Content-Length {length} is over the limit '
                                   f'of {max_size} bytes (max_size)')
        body = bytearray()
        while chunk := response.read1(_CHUNK):
            body += chunk
            if len(body) > max_size:
                raise DeclarationError(f'declarations at {safe}: more than the limit of {max_size} bytes '
                                       f'(max_size)')
            if time.monotonic() > deadline:
                raise DeclarationError(f'declarations at {safe}: not read within the deadline')
        return bytes(body)


def declare(data: Mapping[str, Any]) -> tuple[Namespace, Namespace]:
    """Declare every signal and queue of a parsed declaration document."""
    if not isinstance(data, Mapping):
        raise DeclarationError('a declarations document is a JSON object with "signals" and "queues"')
    _options_1x(data)  # first: a document with a key that cannot apply declares nothing
    for item in data.get('signals', []):
        with _loading('signal', item):
            Signal(name=item['name'], providing_args=item.get('providing_args'), schema=item.get('schema'))
    for item in data.get('queues', []):
        with _loading('queue', item):
            Queue(name=item['name'], exchange=item.get('exchange'), topics=item.get('topics'),
                  schema=item.get('schema'))
    return Namespace(**Signal.get_all()), Namespace(**Queue.get_all())


@contextmanager
def _loading(kind: str, item: Any) -> Iterator[None]:
    """A declaration without a name, or one that a second load gives another contract
    (``DoubleLoadError``, as 1.x called a second load), is an error that names it."""
    known = (Signal if kind == 'signal' else Queue).get_all()
    try:
        yield
    except KeyError:
        raise DeclarationError(f'{kind} declaration without a name: {item!r}') from None
    except DeclarationError as exc:
        if isinstance(item, Mapping) and item.get('name') in known:
            raise DoubleLoadError(f'loaded again with another contract: {exc}') from None
        raise


def _options_1x(data: Mapping[str, Any]) -> None:
    """The 1.x document keys: ``jsonlib`` (a JSON module, see ``Signal.set_jsonlib``) and
    ``default_prefix``, which cannot apply here: a bus takes its ``prefix`` as an argument."""
    if jsonlib := data.get('jsonlib'):
        try:
            module = importlib.import_module(jsonlib)
        except (ImportError, TypeError, ValueError) as exc:
            raise DeclarationError(f'declarations key "jsonlib": cannot import {jsonlib!r}: {exc}') from None
        Signal.set_jsonlib(module)
    prefix = data.get('default_prefix', DEFAULT_PREFIX)
    if prefix != DEFAULT_PREFIX:
        raise DeclarationError(
            f'declarations key "default_prefix" ({prefix!r}) is not supported: give the prefix to the bus, '
            f'SignalBusClass(dsn, prefix={prefix!r}) (or "prefix" in the marun BUS entry)')


def load_stuff(source: str, *, max_size: int = MAX_SIZE, timeout: float = TIMEOUT) -> tuple[Namespace, Namespace]:
    """Declare signals and queues from a JSON document; return (signals, queues) namespaces.
    Over http(s), the body may not exceed ``max_size`` bytes nor take more than ``timeout`` seconds."""
    return declare(_read(source, max_size, timeout))


def load_signals(source: str) -> Namespace:
    return load_stuff(source)[0]


def load_queues(source: str) -> Namespace:
    return load_stuff(source)[1]


def configure(*sources: str | Mapping[str, Any], max_size: int = MAX_SIZE,
              timeout: float = TIMEOUT) -> tuple[Namespace, Namespace]:
    """Declare from several sources (URLs, paths as ``file://`` or already parsed documents);
    ``max_size`` and ``timeout`` bound each http(s) download as in ``load_stuff``."""
    result = Namespace(), Namespace()
    for source in sources:
        result = declare(_read(source, max_size, timeout)) if isinstance(source, str) else declare(source)
    return result
