"""Declarations from JSON: ``load_stuff('file://stuff.json')`` or an ``http(s)://`` URL.

    {"signals": [{"name": "user_created", "providing_args": ["user_id"]},
                 {"name": "typed", "providing_args": {"user_id": "integer", "note": ["string", "null"]}},
                 {"name": "by_schema", "schema": {"type": "object", "properties": {...}}}],
     "queues": [{"name": "mailer"}, {"name": "push", "exchange": "events", "topics": ["*.push"]},
                {"name": "strict", "schema": {...}}]}
"""
from __future__ import annotations

import urllib.request
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import msgspec

from .errors import DeclarationError
from .queue import Queue
from .signal import Signal


class Namespace(SimpleNamespace):
    """Declarations by attribute (``signals.user_created``), iterable like 1.x's namedtuple."""

    def __iter__(self) -> Iterator[Any]:
        return iter(vars(self).values())

    def __getattr__(self, name: str) -> Any:  # unknown names: an error that says which
        raise AttributeError(f'{name!r} is not declared')


def _read(source: str) -> Any:
    if source.startswith('file://'):
        with open(source.removeprefix('file://'), 'rb') as file:
            return msgspec.json.decode(file.read())
    if source.startswith(('http://', 'https://')):
        with urllib.request.urlopen(source, timeout=30) as response:
            return msgspec.json.decode(response.read())
    raise DeclarationError(f'declarations source must start with file://, http:// or https://: {source!r}')


def declare(data: Mapping[str, Any]) -> tuple[Namespace, Namespace]:
    """Declare every signal and queue of a parsed declaration document."""
    if not isinstance(data, Mapping):
        raise DeclarationError('a declarations document is a JSON object with "signals" and "queues"')
    for item in data.get('signals', []):
        try:
            Signal(name=item['name'], providing_args=item.get('providing_args'), schema=item.get('schema'))
        except KeyError:
            raise DeclarationError(f'signal declaration without a name: {item!r}') from None
    for item in data.get('queues', []):
        try:
            Queue(name=item['name'], exchange=item.get('exchange'), topics=item.get('topics'),
                  schema=item.get('schema'))
        except KeyError:
            raise DeclarationError(f'queue declaration without a name: {item!r}') from None
    return Namespace(**Signal.get_all()), Namespace(**Queue.get_all())


def load_stuff(source: str) -> tuple[Namespace, Namespace]:
    """Declare signals and queues from a JSON document; return (signals, queues) namespaces."""
    return declare(_read(source))


def load_signals(source: str) -> Namespace:
    return load_stuff(source)[0]


def load_queues(source: str) -> Namespace:
    return load_stuff(source)[1]


def configure(*sources: str | Mapping[str, Any]) -> tuple[Namespace, Namespace]:
    """Declare from several sources (URLs, paths as ``file://`` or already parsed documents)."""
    result = Namespace(), Namespace()
    for source in sources:
        result = declare(_read(source)) if isinstance(source, str) else declare(source)
    return result
