"""Project-wide registries of named declarations (signals, queues), 1.x style.

``Signal.get('x')``, ``Signal.get_all()`` and ``Signal.x`` all read the same registry; declaring a
name again with the same contract returns quietly, with a different one it is an error.
"""
from __future__ import annotations

import re
from typing import Any, ClassVar

from microagent.errors import DeclarationError

_NAME = re.compile(r'[A-Za-z0-9_.\-]+')  # matched whole (fullmatch): `$` would let a trailing newline in


def check_name(kind: str, name: object) -> None:
    """A DeclarationError unless ``name`` is made only of letters, digits, ``_``, ``-`` and ``.``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DeclarationError(f'{kind} name {name!r} must be non-empty letters, digits, "_", "-" or "."')


MAX_GROUP_NAME = 100
_NOT_IN_NAMES = re.compile(r'[^A-Za-z0-9_.\-]+')


def check_group_name(name: object, where: str) -> str:
    """A signal group's name: letters, digits, ``_``, ``-`` and ``.``, at most 100 characters, since
    backends build keys, queue and consumer names from it."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_GROUP_NAME:
        raise DeclarationError(f'{where}: group {name!r} must be 1 to {MAX_GROUP_NAME} letters, digits, '
                               '"_", "-" or "."')
    return name


def group_name_of(agent_name: str) -> str:
    """The group an agent's name gives (``group=True``): its characters that cannot be in a name
    (``<locals>`` of a class made in a function) become ``_``, at most 100 of them."""
    return _NOT_IN_NAMES.sub('_', agent_name.replace('<locals>.', '')).strip('_.')[:MAX_GROUP_NAME] or 'agent'


class Registry(type):
    """Metaclass giving declaration classes attribute access to their registry (``Signal.name``)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith('__'):
            raise AttributeError(name)
        return cls.get(name)


class Declaration(metaclass=Registry):
    """Base of Signal and Queue: a unique name with a contract."""

    kind: ClassVar[str] = 'declaration'
    _registry: ClassVar[dict[str, Any]]
    name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if '_registry' not in cls.__dict__:
            cls._registry = {}

    def contract(self) -> tuple[Any, ...]:
        """What must match when the same name is declared twice."""
        raise NotImplementedError

    def _register(self) -> None:
        check_name(self.kind, self.name)
        known = type(self)._registry.get(self.name)
        if known is not None and known.contract() != self.contract():
            raise DeclarationError(
                f'{self.kind} {self.name!r} is already declared with another contract: '
                f'{known.describe()} (now {self.describe()})')
        type(self)._registry[self.name] = self

    def describe(self) -> str:
        return repr(self.contract())

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.name}>'

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Declaration):
            return NotImplemented
        return type(self) is type(other) and self.name == other.name

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name))


def model_name(model: Any) -> str | None:
    if model is None:
        return None
    return f'{getattr(model, "__module__", "")}.{getattr(model, "__qualname__", repr(model))}'
