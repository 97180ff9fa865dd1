"""One codec per kind of payload model: validate, encode, decode, describe.

msgspec handles Structs, dataclasses, TypedDicts and plain types; pydantic models use pydantic's
own JSON; 1.x declarations (``providing_args`` or a JSON Schema) carry plain dicts checked by a
generated msgspec type. pydantic is imported only when a pydantic model is actually used.
"""
from __future__ import annotations

import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Annotated, Any, Generic, Literal, NamedTuple, TypeVar, cast

import msgspec

from microagent.errors import DeclarationError, InvalidPayload, UsageError

T = TypeVar('T')

JsonDict = dict[str, Any]

JSON_SCHEMA_DIALECT = 'https://json-schema.org/draft/2020-12/schema'
#: the largest message body a bus or broker sends or accepts, unless told otherwise
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()


def encode_json(value: Any) -> bytes:
    """Encode plain JSON-able data (envelopes, RPC answers of untyped signals)."""
    return _encoder.encode(value)


def check_size(target: str, data: bytes, limit: int) -> bytes:
    """``data`` itself, or ``InvalidPayload`` naming ``target`` when it is larger than ``limit`` bytes."""
    if len(data) > limit:
        raise InvalidPayload(target, [f'message of {len(data)} bytes exceeds {limit}'])
    return data


class _FieldCheck(NamedTuple):
    key: str  # the field's name on the wire
    required: bool
    check: Callable[[Any], object]  # raises msgspec.ValidationError for a value that does not fit


def _field_checks(model: Any, from_json: bool) -> list[_FieldCheck]:
    """One check per field of a Struct, dataclass or TypedDict (none for other types, or for one
    whose annotations cannot be resolved): what lets an invalid payload report every failing field."""
    try:
        info = msgspec.inspect.type_info(model)
        fields = getattr(info, 'fields', None)
        hints = typing.get_type_hints(model, include_extras=True) if fields else {}
    except Exception:  # a generic alias, an unresolvable forward reference: the first error will do
        return []
    checks = []
    order = {name: index for index, name in enumerate(hints)}  # declaration order (a TypedDict's info is not)
    for field in sorted(fields or (), key=lambda field: order.get(field.name, len(order))):
        field_type = hints.get(field.name, Any)
        if from_json:
            check: Callable[[Any], object] = partial(_check_json, msgspec.json.Decoder(field_type))
        else:
            check = partial(msgspec.convert, type=field_type)
        checks.append(_FieldCheck(field.encode_name, field.required, check))
    return checks


def _check_json(decoder: msgspec.json.Decoder[Any], value: Any) -> object:
    return decoder.decode(_encoder.encode(value))


def _field_errors(checks: list[_FieldCheck], payload: Mapping[str, Any]) -> list[str]:
    """Every failing field of ``payload``, in msgspec's words and paths (``$.field``)."""
    errors = []
    for key, required, check in checks:
        if key not in payload:
            if required:
                errors.append(f'Object missing required field `{key}`')
            continue
        try:
            check(payload[key])
        except msgspec.ValidationError as exc:
            text = str(exc)
            if ' - at `$' in text:
                errors.append(text.replace(' - at `$', f' - at `$.{key}', 1))
            else:
                errors.append(f'{text} - at `$.{key}`')
        except Exception:  # not a field error (a codec quirk): the first error stands
            continue
    return errors


def _all_errors(first: Exception, checks: list[_FieldCheck], payload: Any) -> list[str]:
    """msgspec's first error followed by every other failing field (first failure only: the hot path
    of a valid payload never gets here)."""
    text = str(first)
    if not checks or not isinstance(payload, dict):
        return [text]
    errors = _field_errors(checks, payload)
    if text in errors:
        return errors
    return [text, *errors]  # an unknown field, a tag, a __post_init__: not a field check's finding


def undecodable(target: str, exc: Exception) -> InvalidPayload:
    """Any other failure of a decoder or validator (invalid UTF-8, nesting too deep, a model's
    ``__post_init__`` or validator raising, a custom decode): still an invalid payload naming
    ``target``, never a crash. ``MemoryError`` is raised again: that is the process's trouble."""
    if isinstance(exc, MemoryError):
        raise exc
    return InvalidPayload(target, [f'{type(exc).__name__}: {exc}'])


class Codec(Generic[T]):
    """Validates and serialises the payload of one signal, queue or RPC answer."""

    target: str
    schema: JsonDict  # standalone JSON Schema (draft 2020-12) of the payload
    required: tuple[str, ...] = ()  # the payload's required keys, as on the wire

    def encode(self, payload: Any) -> bytes:
        """Validate ``payload`` (a model instance or a mapping of its fields) and encode it."""
        raise NotImplementedError

    def decode(self, data: bytes | str) -> T:
        """Decode and validate wire bytes; raise ``InvalidPayload`` naming the field."""
        raise NotImplementedError

    def from_kwargs(self, kwargs: Mapping[str, Any]) -> T:
        """Build a payload from the keyword arguments of a 1.x style ``send``."""
        return self.decode(_encoder.encode(dict(kwargs)))

    def to_kwargs(self, payload: T) -> JsonDict:
        """The payload as keyword arguments for a 1.x style ``**kwargs`` handler."""
        raise NotImplementedError

    def fail(self, error: str | Exception) -> InvalidPayload:
        return InvalidPayload(self.target, [str(error)])

    def undecodable(self, exc: Exception) -> InvalidPayload:
        return undecodable(self.target, exc)


class MsgspecCodec(Codec[T]):
    """msgspec Structs, dataclasses, TypedDicts and plain types (RPC answers)."""

    def __init__(self, model: type[T], target: str) -> None:
        self.model = model
        self.target = target
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(model)
        try:
            self.schema = standalone_schema(msgspec.json.schema(model))
        except (TypeError, ValueError) as exc:
            raise DeclarationError(f'{target}: {model!r} is not a supported payload model: {exc}') from exc
        info = msgspec.inspect.type_info(model)
        fields = getattr(info, 'fields', ())  # Struct, dataclass, TypedDict
        self.required = tuple(f.encode_name for f in fields if f.required)
        self._checks: list[_FieldCheck] | None = None  # built on the first invalid payload

    def encode(self, payload: Any) -> bytes:
        try:
            data = _encoder.encode(payload)
            self._decoder.decode(data)  # round trip: Struct and dataclass fields are not checked on init
        except msgspec.ValidationError as exc:
            raise self._every_failing_field(exc, data) from None
        except (TypeError, msgspec.EncodeError, msgspec.DecodeError) as exc:
            raise self.fail(exc) from None
        return data

    def decode(self, data: bytes | str) -> T:
        try:
            return self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise self._every_failing_field(exc, data) from None
        except msgspec.DecodeError as exc:
            raise self.fail(exc) from None
        except Exception as exc:
            raise self.undecodable(exc) from None

    def _every_failing_field(self, exc: msgspec.ValidationError, data: bytes | str) -> InvalidPayload:
        if self._checks is None:
            self._checks = _field_checks(self.model, from_json=True)
        if not self._checks:
            return self.fail(exc)
        try:
            payload = _any_decoder.decode(data)
        except Exception:  # the typed decoder stopped before a flaw the plain one trips on
            return self.fail(exc)
        return InvalidPayload(self.target, _all_errors(exc, self._checks, payload))

    def to_kwargs(self, payload: T) -> JsonDict:
        if isinstance(payload, dict):
            return cast(JsonDict, payload)
        value = msgspec.to_builtins(payload)
        if not isinstance(value, dict):
            raise UsageError(f'{self.target}: a payload of type {type(payload).__name__} has no fields')
        return value


class PydanticCodec(Codec[T]):
    """pydantic v2 models, with pydantic's own JSON and schema."""

    def __init__(self, model: type[T], target: str) -> None:
        self.model = model
        self.target = target
        self.schema = standalone_schema(model.model_json_schema())  # type: ignore[attr-defined]
        fields = model.model_fields.items()  # type: ignore[attr-defined]
        self.required = tuple(f.alias or name for name, f in fields if f.is_required())

    def _invalid(self, exc: Any) -> InvalidPayload:
        errors = [
            f"{'.'.join(str(p) for p in err['loc']) or '$'}: {err['msg']}" for err in exc.errors()
        ]
        return InvalidPayload(self.target, errors)

    def encode(self, payload: Any) -> bytes:
        import pydantic

        model: Any = self.model
        try:
            obj = payload if isinstance(payload, model) else model.model_validate(payload)
            return cast(bytes, obj.__pydantic_serializer__.to_json(obj, by_alias=True))
        except pydantic.ValidationError as exc:
            raise self._invalid(exc) from None

    def decode(self, data: bytes | str) -> T:
        import pydantic

        try:
            return cast(T, self.model.model_validate_json(data))  # type: ignore[attr-defined]
        except pydantic.ValidationError as exc:
            raise self._invalid(exc) from None
        except Exception as exc:
            raise self.undecodable(exc) from None

    def from_kwargs(self, kwargs: Mapping[str, Any]) -> T:
        import pydantic

        try:
            return cast(T, self.model.model_validate(dict(kwargs)))  # type: ignore[attr-defined]
        except pydantic.ValidationError as exc:
            raise self._invalid(exc) from None
        except Exception as exc:
            raise self.undecodable(exc) from None

    def to_kwargs(self, payload: T) -> JsonDict:
        return cast(JsonDict, payload.model_dump())  # type: ignore[attr-defined]


class DictCodec(Codec[JsonDict]):
    """1.x payloads: a JSON object whose keys are checked, and typed when a schema is known.

    Handlers keep receiving the decoded dict (extra keys included), exactly as in 1.x.
    """

    def __init__(self, target: str, required: Sequence[str], schema: JsonDict,
                 checker: type[Any] | None = None) -> None:
        self.target = target
        self.required = tuple(required)
        self.schema = standalone_schema(schema)
        self._checker = checker
        self._checks: list[_FieldCheck] | None = None  # built on the first invalid payload

    def _check(self, payload: Any) -> JsonDict:
        if not isinstance(payload, dict):
            raise self.fail(f'expected a JSON object, got {type(payload).__name__}')
        missing = [key for key in self.required if key not in payload]
        if self._checker is not None:
            try:
                msgspec.convert(payload, self._checker)
            except msgspec.ValidationError as exc:
                if not missing:
                    if self._checks is None:
                        self._checks = _field_checks(self._checker, from_json=False)
                    raise InvalidPayload(self.target, _all_errors(exc, self._checks, payload)) from None
            except Exception as exc:
                raise self.undecodable(exc) from None
        if missing:  # every missing key, then every present field of the wrong type
            if self._checker is not None and self._checks is None:
                self._checks = _field_checks(self._checker, from_json=False)
            typed = [error for error in _field_errors(self._checks or [], payload) if ' missing ' not in error]
            raise InvalidPayload(self.target, [f'missing required field `{key}`' for key in missing] + typed)
        return payload

    def encode(self, payload: Any) -> bytes:
        if isinstance(payload, Mapping) and not isinstance(payload, dict):
            payload = dict(payload)
        try:
            return _encoder.encode(self._check(payload))
        except (TypeError, msgspec.EncodeError) as exc:
            raise self.fail(exc) from None

    def decode(self, data: bytes | str) -> JsonDict:
        try:
            value = _any_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise self.fail(exc) from None
        except Exception as exc:
            raise self.undecodable(exc) from None
        return self._check(value)

    def from_kwargs(self, kwargs: Mapping[str, Any]) -> JsonDict:
        return self._check(dict(kwargs))

    def to_kwargs(self, payload: JsonDict) -> JsonDict:
        return payload


def standalone_schema(schema: Mapping[str, Any]) -> JsonDict:
    """A payload schema as one self-contained draft 2020-12 document.

    msgspec describes a model as ``{"$ref": "#/$defs/Model", "$defs": {...}}``; the model itself is
    moved to the top (unless it refers to itself) so ``required`` and ``properties`` are where a
    reader looks. ``required`` lists are sorted: their order means nothing.
    """
    result: JsonDict = {'$schema': schema.get('$schema', JSON_SCHEMA_DIALECT)}
    body = {key: value for key, value in schema.items() if key != '$schema'}
    defs: JsonDict = dict(body.pop('$defs', {}))
    ref = body.get('$ref')
    if len(body) == 1 and isinstance(ref, str) and ref.startswith('#/$defs/'):
        name = ref.removeprefix('#/$defs/')
        if name in defs and ref.encode() not in msgspec.json.encode(defs):  # not recursive
            body = dict(defs.pop(name))
    result.update(_sorted_required(body))
    if defs:
        result['$defs'] = {name: _sorted_required(defs[name]) for name in sorted(defs)}
    return result


def _sorted_required(schema: Any) -> Any:
    if isinstance(schema, dict) and isinstance(schema.get('required'), list):
        return {**schema, 'required': sorted(schema['required'])}
    return schema


def is_pydantic_model(model: object) -> bool:
    pydantic = sys.modules.get('pydantic')
    return pydantic is not None and isinstance(model, type) and issubclass(model, pydantic.BaseModel)


def codec_for(model: Any, target: str) -> Codec[Any]:
    """The codec of a payload model: pydantic when it is one, msgspec for everything else."""
    if is_pydantic_model(model):
        return PydanticCodec(model, target)
    if not isinstance(model, type) and not hasattr(model, '__origin__'):
        raise DeclarationError(f'{target}: the payload model must be a class or a type, got {model!r}')
    return MsgspecCodec(model, target)


# 1.x JSON type names and JSON Schema, turned into msgspec types that check a payload dict.

_JSON_TYPES: dict[str, Any] = {
    'string': str, 'integer': int, 'number': float, 'boolean': bool,
    'null': None, 'object': dict[str, Any], 'array': list[Any],
}


def _json_type(spec: Any, where: str) -> Any:
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not names:
        raise DeclarationError(f'{where}: a JSON type is a name or a list of names, got {spec!r}')
    types = []
    for name in names:
        if name not in _JSON_TYPES:
            raise DeclarationError(f'{where}: unknown JSON type {name!r} (one of {", ".join(_JSON_TYPES)})')
        types.append(_JSON_TYPES[name])
    result = types[0]
    for extra in types[1:]:
        result = result | extra if result is not None else extra | None
    return result


def dict_codec(target: str, providing_args: Sequence[str] | Mapping[str, Any] | None,
               schema: JsonDict | None = None) -> DictCodec:
    """The codec of a 1.x declaration: a list of keys, a dict of JSON types or a JSON Schema."""
    if schema is not None:
        checker = schema_to_type(schema, target, 'Payload')
        required = list(schema.get('required', []))
        return DictCodec(target, required, schema, checker)
    if isinstance(providing_args, Mapping):
        fields = [(key, _json_type(spec, f'{target} field {key!r}')) for key, spec in providing_args.items()]
        checker = msgspec.defstruct('Payload', fields, kw_only=True)
        required = list(providing_args)
        properties = {key: {'type': spec} for key, spec in providing_args.items()}
        return DictCodec(target, required, _object_schema(properties, required), checker)
    required = list(providing_args or [])
    return DictCodec(target, required, _object_schema({key: {} for key in required}, required))


def _object_schema(properties: JsonDict, required: list[str]) -> JsonDict:
    return {'type': 'object', 'properties': properties, 'required': sorted(required)}


_CONSTRAINTS = {
    'minimum': 'ge', 'maximum': 'le', 'exclusiveMinimum': 'gt', 'exclusiveMaximum': 'lt',
    'minLength': 'min_length', 'maxLength': 'max_length', 'pattern': 'pattern',
    'minItems': 'min_length', 'maxItems': 'max_length', 'multipleOf': 'multiple_of',
}


def schema_to_type(schema: Any, where: str, name: str) -> Any:
    """Turn a JSON Schema (the subset that describes message payloads) into a msgspec type."""
    if not isinstance(schema, dict):
        raise DeclarationError(f'{where}: a JSON Schema must be an object, got {schema!r}')
    if 'enum' in schema:
        return Literal[tuple(schema['enum'])]
    if 'const' in schema:
        return Literal[schema['const']]
    for key in ('anyOf', 'oneOf'):
        if key in schema:
            options = [schema_to_type(sub, where, f'{name}{i}') for i, sub in enumerate(schema[key])]
            union = options[0]
            for option in options[1:]:
                union = union | option
            return union
    kind = schema.get('type')
    if isinstance(kind, list):
        union = None
        for i, single in enumerate(kind):
            part = schema_to_type({**schema, 'type': single}, where, f'{name}{i}')
            union = part if union is None else union | part
        return union
    if kind is None:
        return Any
    if kind == 'object':
        properties = schema.get('properties')
        if not properties:
            return dict[str, Any]
        required = set(schema.get('required', []))
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for key, sub in properties.items():
            field_type = schema_to_type(sub, f'{where} field {key!r}', f'{name}_{key}')
            fields.append((key, field_type) if key in required else (key, field_type | None, None))
        return msgspec.defstruct(name, fields, kw_only=True)
    if kind == 'array':
        items = schema.get('items')
        base: Any = list[schema_to_type(items, where, f'{name}_item')] if items else list[Any]  # type: ignore[misc]
    elif kind in _JSON_TYPES:
        base = _JSON_TYPES[kind]
    else:
        raise DeclarationError(f'{where}: unsupported JSON Schema type {kind!r}')
    meta = {_CONSTRAINTS[key]: value for key, value in schema.items() if key in _CONSTRAINTS}
    if meta and base is not None:
        return Annotated[base, msgspec.Meta(**meta)]
    return base
