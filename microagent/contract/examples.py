"""Typed example payloads for declarations: ``example(user_created)`` is a ``UserCreated`` the
codec accepts, built from the declaration's JSON Schema (``microagent.contract.samples``) and decoded by the
declaration's own codec, so it is exactly what a receiver would get; ``examples(decl, n, seed)``
gives varied ones for fuzzing.

A msgspec schema says less than its model (a ``datetime`` that may be naive is a bare string, so is
a ``time``; map keys are strings): when the codec refuses the sample, msgspec's error names the
field, and the value there (or the map's keys) is replaced by the first candidate that fits.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

import msgspec

from microagent.contract.samples import SampleError, sample_json
from microagent.declaration import model_name
from microagent.errors import InvalidPayload, UsageError
from microagent.payload import Codec, MsgspecCodec, codec_for, encode_json
from microagent.queue import Queue
from microagent.signal import Signal

__all__ = ['example', 'examples']

T = TypeVar('T')
R = TypeVar('R')

_REPAIRS = 40  # fields one example may need replaced
#: values tried, in order, for a string the model refused (what a plain schema string may really be)
_STRINGS = ('2024-01-01T12:00:00Z', '2024-01-01T12:00:00', '12:00:00', '12:00:00Z', '2024-01-01', '1', '1.5',
            'PT1S', '12345678-9abc-4def-8123-456789abcdef', 'dHJ1ZQ==', 'true')
_AT = re.compile(r' - at `(\$[^`]*)`$')
_AT_KEY = re.compile(r' - at `key` in `(\$[^`]*)`$')
_STEP = re.compile(r'\.([^.\[]+)|\[(\d+|\.\.\.)\]')  # `[...]`: a value of a map


def _codec(declaration: Any, answer: bool) -> Codec[Any]:
    if isinstance(declaration, Signal):
        if not answer:
            return declaration.codec
        if declaration.answer_codec is None:
            raise UsageError(f'signal {declaration.name!r} is no RPC signal: it has no answer type')
        return declaration.answer_codec
    if answer:
        raise UsageError(f'only an RPC signal has an answer type, not {declaration!r}')
    if isinstance(declaration, Queue):
        return declaration.codec
    return codec_for(declaration, f'model {model_name(declaration)}')


@overload
def example(declaration: Signal[Any, R], *, answer: Literal[True], seed: int | None = None) -> R: ...
@overload
def example(declaration: Signal[T, Any], *, answer: Literal[False] = False, seed: int | None = None) -> T: ...
@overload
def example(declaration: Queue[T], *, seed: int | None = None) -> T: ...
@overload
def example(declaration: type[T], *, seed: int | None = None) -> T: ...


def example(declaration: Any, *, answer: bool = False, seed: int | None = None) -> Any:
    """A valid payload of a signal or queue (``answer=True``: an RPC signal's answer), or of a model
    type; the same one every time without ``seed``."""
    return _example(_codec(declaration, answer), seed)


@overload
def examples(declaration: Signal[Any, R], n: int = 10, seed: int = 0, *, answer: Literal[True]) -> list[R]: ...
@overload
def examples(declaration: Signal[T, Any], n: int = 10, seed: int = 0, *,
             answer: Literal[False] = False) -> list[T]: ...
@overload
def examples(declaration: Queue[T], n: int = 10, seed: int = 0) -> list[T]: ...
@overload
def examples(declaration: type[T], n: int = 10, seed: int = 0) -> list[T]: ...


def examples(declaration: Any, n: int = 10, seed: int = 0, *, answer: bool = False) -> list[Any]:
    """``n`` varied valid payloads (random choices, repeatable by ``seed``): for fuzzing a handler."""
    codec = _codec(declaration, answer)
    return [_example(codec, seed * 1_000_003 + i) for i in range(n)]


def _example(codec: Codec[Any], seed: int | None) -> Any:
    value = sample_json(codec.schema, seed=seed)
    for _ in range(_REPAIRS):
        try:
            return codec.decode(encode_json(value))
        except InvalidPayload as exc:
            if not isinstance(codec, MsgspecCodec):
                raise SampleError(f'{codec.target}: the example {value!r} is refused: {exc}') from None
            value = _repaired(codec, value, exc)
    raise SampleError(f'{codec.target}: no valid example after replacing {_REPAIRS} fields: {value!r}')


def _repaired(codec: MsgspecCodec[Any], value: Any, refused: InvalidPayload) -> Any:
    """``value`` with the field (or the map keys) msgspec names replaced by the first candidate
    that gets the decoding further."""
    error = _refusal(codec, value)
    key_error = _AT_KEY.search(error or '')
    where = key_error or _AT.search(error or '')
    if error is None or where is None:
        raise SampleError(f'{codec.target}: the example {value!r} is refused: {refused}') from None
    steps: list[str | int | None] = [name or (None if index == '...' else int(index))
                                     for name, index in _STEP.findall(where.group(1))]
    trials = (_renamed(value, steps, family) for family in _KEY_FAMILIES) if key_error else (
        _replaced(value, steps, text) for text in _STRINGS)
    for trial in trials:
        after = _refusal(codec, trial)
        if after is None or _place(after) != _place(error):  # this field fits now
            return trial
    raise SampleError(f'{codec.target}: the example {value!r} is refused: {refused}') from None


def _renamed(value: Any, steps: list[str | int | None], family: Callable[[int], list[str]]) -> Any:
    """A copy of ``value`` whose maps at ``steps`` have their keys renamed after ``family``."""
    trial = msgspec.json.decode(encode_json(value))
    for target in _at(trial, steps):
        if not isinstance(target, dict):  # ``[...]`` names one map's values; the others may be null
            continue
        renamed = dict(zip(family(len(target)), target.values(), strict=False))
        target.clear()
        target.update(renamed)
    return trial


def _replaced(value: Any, steps: list[str | int | None], text: str) -> Any:
    """A copy of ``value`` with ``text`` at ``steps``."""
    if not steps:
        return text
    trial = msgspec.json.decode(encode_json(value))
    last = steps[-1]
    for target in _at(trial, steps[:-1]):
        if isinstance(target, dict):
            for key in (list(target) if last is None else [last]):
                target[key] = text
        elif isinstance(target, list) and isinstance(last, int) and -len(target) <= last < len(target):
            target[last] = text
    return trial


def _refusal(codec: MsgspecCodec[Any], value: Any) -> str | None:
    """msgspec's own error for ``value`` (with its path), None when it decodes."""
    try:
        msgspec.json.decode(encode_json(value), type=codec.model)
    except msgspec.ValidationError as exc:
        return str(exc)
    return None


def _place(error: str) -> str:
    """Where a msgspec error points (the path, and whether at a map key)."""
    found = _AT_KEY.search(error) or _AT.search(error)
    return found.group(0) if found else error


def _at(value: Any, steps: list[str | int | None]) -> list[Any]:
    """The values at ``steps`` (None: every value of a map). msgspec's ``[...]`` names one value of a
    map, so the path is followed into every value that has the next step, and no further elsewhere."""
    found = [value]
    for step in steps:
        found = [v for item in found for v in _children(item, step)]
    return found


def _children(item: Any, step: str | int | None) -> list[Any]:
    if isinstance(item, dict):
        if step is None:
            return list(item.values())
        return [item[step]] if step in item else []
    if isinstance(item, list) and isinstance(step, int) and -len(item) <= step < len(item):
        return [item[step]]
    return []


_KEY_FAMILIES: tuple[Callable[[int], list[str]], ...] = (
    lambda n: [str(i + 1) for i in range(n)],
    lambda n: [f'{i}.5' for i in range(n)],
    lambda n: [f'12345678-9abc-4def-8123-{i:012x}' for i in range(n)],
    lambda n: [f'2024-01-{i % 28 + 1:02d}' for i in range(n)],
    lambda n: ['true', 'false'][:n],
)
