"""Signal declarations: a named pub/sub event with a payload model and, for RPC, an answer type."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar, Generic, overload

from typing_extensions import TypeVar

from microagent.declaration import Declaration, check_name, model_name
from microagent.errors import DeclarationError, SignalNotFound, UsageError
from microagent.payload import Codec, JsonDict, codec_for, dict_codec

T = TypeVar('T', default=Any)  # a default lets 1.x code annotate a bare ``Signal``
R = TypeVar('R', default=Any)

RESPONSE_SIGNAL = 'response'  # the RPC answer channel of the 1.x wire: no signal may take the name


class Signal(Declaration, Generic[T, R]):
    """A signal: ``Signal('user_created', UserCreated)`` or, 1.x style,
    ``Signal(name='started', providing_args=['user_id'])``.

    ``returns`` makes it an RPC signal whose answers are validated against that type.
    """

    kind: ClassVar[str] = 'signal'
    _jsonlib: ClassVar[ModuleType] = json  # recorded by set_jsonlib, as 1.x kept it
    _registry: ClassVar[dict[str, Signal[Any, Any]]] = {}

    name: str
    model: type[T] | None
    returns: type[R] | None
    providing_args: list[str]
    codec: Codec[T]
    answer_codec: Codec[R] | None

    @overload
    def __init__(self: Signal[T, Any], name: str, model: type[T], *, returns: None = None) -> None: ...

    @overload
    def __init__(self: Signal[T, R], name: str, model: type[T], *, returns: type[R]) -> None: ...

    @overload
    def __init__(self: Signal[JsonDict, Any], name: str, model: None = None, *,
                 providing_args: Sequence[str] | Mapping[str, Any] | None = None,
                 schema: JsonDict | None = None, returns: type[Any] | None = None) -> None: ...

    def __init__(self, name: str, model: Any = None, *,
                 providing_args: Sequence[str] | Mapping[str, Any] | None = None,
                 schema: JsonDict | None = None, returns: Any = None) -> None:
        _check_name(name)
        self.name = name
        self.model = model
        self.returns = returns
        target = f'signal {name!r}'
        if model is not None:
            self.codec = codec_for(model, target)
            self.providing_args = list(self.codec.required)  # the model's required fields
        else:
            self.codec = dict_codec(target, providing_args, schema)  # type: ignore[assignment]
            self.providing_args = list(providing_args or (schema and schema.get('properties', {})) or [])
        self.answer_codec = codec_for(returns, f'answer of signal {name!r}') if returns is not None else None
        self._register()

    def contract(self) -> tuple[Any, ...]:
        return (model_name(self.model), model_name(self.returns),
                None if self.model is not None else self.codec.schema)

    def make_channel_name(self, prefix: str, sender: str = '*') -> str:
        """The 1.x channel name ``{prefix}:{name}:{sender}``."""
        return f'{prefix}:{self.name}:{sender}'

    @classmethod
    def set_jsonlib(cls, jsonlib: ModuleType) -> None:
        """1.x let a faster JSON module encode payloads. Here msgspec encodes every payload (the same
        JSON on the wire), so the module is only checked for ``dumps``/``loads`` and recorded."""
        if not (callable(getattr(jsonlib, 'dumps', None)) and callable(getattr(jsonlib, 'loads', None))):
            raise UsageError(f'jsonlib {getattr(jsonlib, "__name__", jsonlib)!r} has no dumps() and loads()')
        cls._jsonlib = jsonlib

    @classmethod
    def get(cls, name: str) -> Signal[Any, Any]:
        """The signal declared under ``name``."""
        try:
            return cls._registry[name]
        except KeyError:
            raise SignalNotFound(f'No such signal {name!r}') from None

    @classmethod
    def get_all(cls) -> dict[str, Signal[Any, Any]]:
        """Every declared signal by name."""
        return dict(cls._registry)


def _check_name(name: object) -> None:
    """Reject names the wire would misread: ``response`` is where RPC answers travel, and ``:``,
    ``#``, glob characters or whitespace would split or widen the 1.x channel ``{prefix}:{name}:{sender}``."""
    check_name('signal', name)
    if name == RESPONSE_SIGNAL:
        raise DeclarationError(f'signal name {name!r} is reserved: RPC answers travel on that channel')
