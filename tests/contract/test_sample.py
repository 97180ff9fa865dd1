"""``microagent.contract.samples``: every example it builds is accepted by the model the schema came from.

The property tests build random models (msgspec Structs and dataclasses with nested models,
optionals, enums, literals, constraints, containers), export their schema as the codecs do, and
decode the sample with the model itself."""
from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import itertools
import re
import uuid
from typing import Annotated, Any, Literal, Optional

import msgspec
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microagent.contract.regex_sample import regex_sample
from microagent.contract.samples import MAX_REF_DEPTH, SampleError, sample_json
from microagent.payload import codec_for, encode_json

_names = itertools.count()
PATTERNS = (r'^[a-z]{3}-\d+$', r'^[A-Z][a-z]*$', r'^\d{4}-\d{2}$', r'^(foo|bar)_[0-9]+$', r'^[^@\s]+@[^@\s]+\.org$',
            r'x+y?z*', r'^\w{2,4}(\.\w+)?$')


def fresh(prefix: str) -> str:
    return f'{prefix}{next(_names)}'


def meta(**kwargs: Any) -> msgspec.Meta:
    return msgspec.Meta(**{key: value for key, value in kwargs.items() if value is not None})


@st.composite
def integers(draw: st.DrawFn) -> Any:
    low = draw(st.none() | st.integers(-1000, 1000))
    width = draw(st.integers(2, 500))
    high = draw(st.none() | st.just(None if low is None else low + width) | st.integers(-1000, 1000))
    if low is not None and high is not None and high < low + 2:
        high = low + 2
    exclusive = draw(st.booleans())
    step = draw(st.none() | st.sampled_from([2, 3, 5]))
    if step and low is not None and high is not None:
        high = max(high, low + 2 * step + 2)
    bounds = {'gt': low, 'lt': high} if exclusive else {'ge': low, 'le': high}
    return Annotated[int, meta(multiple_of=step, **bounds)]


@st.composite
def floats(draw: st.DrawFn) -> Any:
    low = draw(st.none() | st.floats(-1e4, 1e4))
    high = draw(st.none() | st.floats(-1e4, 1e4))
    if low is not None and high is not None and high < low + 0.01:
        high = low + 0.01
    bounds = {'gt': low, 'lt': high} if draw(st.booleans()) else {'ge': low, 'le': high}
    return Annotated[float, meta(**bounds)]


@st.composite
def strings(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return Annotated[str, msgspec.Meta(pattern=draw(st.sampled_from(PATTERNS)))]
    low = draw(st.integers(0, 12))
    high = draw(st.none() | st.integers(low, low + 20))
    return Annotated[str, meta(min_length=low or None, max_length=high)]


@st.composite
def enums(draw: st.DrawFn) -> Any:
    values = draw(st.lists(st.text('abcxyz', min_size=1, max_size=5), min_size=1, max_size=4, unique=True))
    if draw(st.booleans()):
        return enum.Enum(fresh('Color'), {f'V{i}': value for i, value in enumerate(values)})
    return Literal[tuple(values)]


LEAVES = st.one_of(
    integers(), floats(), strings(), enums(), st.sampled_from([
        bool, int, float, str, bytes, uuid.UUID, datetime.date, decimal.Decimal,
        Annotated[datetime.datetime, msgspec.Meta(tz=True)], datetime.timedelta,
        enum.IntEnum(fresh('Level'), {'LOW': 1, 'HIGH': 5}), Literal[7],
    ]),
)


@st.composite
def model(draw: st.DrawFn, fields: st.SearchStrategy[Any]) -> Any:
    """A Struct or a dataclass of drawn fields: required ones, then optional ones (None default)."""
    types = draw(st.lists(fields, min_size=1, max_size=5))
    optional = draw(st.lists(st.booleans(), min_size=len(types), max_size=len(types)))
    specs = sorted(((f'f{i}', t, opt) for i, (t, opt) in enumerate(zip(types, optional, strict=True))),
                   key=lambda spec: spec[2])
    if draw(st.booleans()):
        struct_fields = [(name, t | None, None) if opt else (name, t) for name, t, opt in specs]
        return msgspec.defstruct(fresh('Model'), struct_fields, kw_only=draw(st.booleans()))
    dc_fields = [(name, Optional[t], dataclasses.field(default=None)) if opt else (name, t)  # noqa: UP045
                 for name, t, opt in specs]
    return dataclasses.make_dataclass(fresh('Data'), dc_fields)


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    lengths = st.integers(0, 3)
    return st.one_of(
        st.builds(lambda t, n: Annotated[list[t], msgspec.Meta(min_length=n)] if n else list[t],  # type: ignore[valid-type]
                  inner, lengths),
        st.builds(lambda t: t | None, inner),
        st.builds(lambda a, b: tuple[a, b], inner, inner),  # type: ignore[valid-type]
        st.builds(lambda t, n: Annotated[dict[str, t], msgspec.Meta(min_length=n)] if n else dict[str, t],  # type: ignore[valid-type]
                  inner, lengths),
        st.builds(lambda n: Annotated[set[int], msgspec.Meta(min_length=n)], st.integers(0, 4)),
        st.builds(lambda n: frozenset[Annotated[str, msgspec.Meta(min_length=n)]], st.integers(0, 4)),
        model(inner),
    )


MODELS = model(st.recursive(LEAVES, containers, max_leaves=12))


def decodes(model_type: Any, value: Any) -> Any:
    return msgspec.json.decode(encode_json(value), type=model_type)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MODELS, st.integers(0, 2**32))
def test_a_sample_of_a_random_model_is_valid_for_it(model_type: Any, seed: int) -> None:
    schema = codec_for(model_type, 'test').schema  # what the codecs export
    value = sample_json(schema)
    decodes(model_type, value)
    assert sample_json(schema) == value  # deterministic
    decodes(model_type, sample_json(schema, seed=seed))  # and so is every random one


class Node(msgspec.Struct):
    value: int
    children: list[Node] = []
    next: Node | None = None


class Tree(msgspec.Struct):
    root: Node
    by_name: dict[str, Node]


def test_a_recursive_model_is_cut_short() -> None:
    schema = codec_for(Tree, 'test').schema
    value = sample_json(schema)
    tree = decodes(Tree, value)
    depth, node = 0, tree.root
    while node.next is not None:
        depth, node = depth + 1, node.next
    assert 1 <= depth <= MAX_REF_DEPTH + 1
    for seed in range(30):
        decodes(Tree, sample_json(schema, seed=seed))


class Shape(enum.Enum):
    CIRCLE = 'circle'
    SQUARE = 'square'


class Address(pydantic.BaseModel):
    city: str = pydantic.Field(min_length=2)
    zip_code: str = pydantic.Field(pattern=r'^\d{5}$')


class Order(pydantic.BaseModel):
    order_id: uuid.UUID
    placed_at: datetime.datetime
    due: datetime.date
    at: datetime.time
    quantity: int = pydantic.Field(gt=0, le=10, multiple_of=2)
    price: float = pydantic.Field(gt=0, lt=1)
    tags: list[str] = pydantic.Field(min_length=2)
    unique: set[int] = pydantic.Field(min_length=3)
    shape: Shape
    kind: Literal['order'] = 'order'
    ship_to: Address | None = None
    addresses: dict[str, Address] = pydantic.Field(min_length=1)
    note: str = pydantic.Field('', examples=['leave at the door'])
    site: pydantic.AnyUrl
    version: Annotated[int, pydantic.Field(ge=1, examples=[3])]
    retries: int = 5


def test_a_pydantic_model_sample_is_valid() -> None:
    schema = codec_for(Order, 'test').schema
    value = sample_json(schema)
    order = Order.model_validate_json(encode_json(value))
    assert order.version == 3 and order.note == 'leave at the door'  # an example given wins
    assert order.retries == 5  # a default is kept
    assert order.ship_to is not None  # a nullable field shows the real thing
    for seed in range(50):
        Order.model_validate_json(encode_json(sample_json(schema, seed=seed)))


@pytest.mark.parametrize(('schema', 'check'), [
    ({'type': 'integer', 'exclusiveMinimum': 5, 'exclusiveMaximum': 7}, lambda v: v == 6),
    ({'type': 'integer', 'minimum': 10, 'multipleOf': 7}, lambda v: v >= 10 and v % 7 == 0),
    ({'type': 'number', 'exclusiveMinimum': 0, 'exclusiveMaximum': 1}, lambda v: 0 < v < 1),
    ({'type': 'number', 'minimum': 2.5, 'exclusiveMinimum': True}, lambda v: v > 2.5),  # draft 4 style
    ({'type': 'string', 'minLength': 20}, lambda v: len(v) >= 20),
    ({'type': 'string', 'maxLength': 3}, lambda v: len(v) <= 3),
    ({'type': 'string', 'format': 'date-time'}, lambda v: datetime.datetime.fromisoformat(v).tzinfo is not None),
    ({'type': 'string', 'format': 'date'}, lambda v: datetime.date.fromisoformat(v) is not None),
    ({'type': 'string', 'format': 'uuid'}, lambda v: uuid.UUID(v).version == 4),
    ({'type': 'string', 'format': 'email'}, lambda v: re.fullmatch(r'[^@]+@[^@]+\.[a-z]+', v)),
    ({'type': 'string', 'format': 'uri'}, lambda v: v.startswith('https://')),
    ({'type': 'string', 'pattern': r'^[A-Z]{2}\d{3}$'}, lambda v: re.fullmatch(r'[A-Z]{2}\d{3}', v)),
    ({'type': ['string', 'null']}, lambda v: isinstance(v, str)),
    ({'anyOf': [{'type': 'null'}, {'type': 'integer'}]}, lambda v: isinstance(v, int)),
    ({'oneOf': [{'const': 'a'}, {'const': 'b'}]}, lambda v: v == 'a'),
    ({'enum': ['red', 'green']}, lambda v: v == 'red'),
    ({'type': 'string', 'examples': ['given']}, lambda v: v == 'given'),
    ({'type': 'integer', 'default': 42}, lambda v: v == 42),
    ({'type': 'array', 'items': {'type': 'boolean'}, 'minItems': 2, 'uniqueItems': True},
     lambda v: sorted(v) == [False, True]),
    ({'type': 'array', 'items': {'enum': [1, 2, 3]}, 'minItems': 3, 'uniqueItems': True},
     lambda v: sorted(v) == [1, 2, 3]),
    ({'type': 'array', 'items': {'type': 'integer'}, 'maxItems': 0}, lambda v: v == []),
    ({'type': 'array', 'prefixItems': [{'type': 'integer'}, {'type': 'string'}], 'items': False},
     lambda v: isinstance(v[0], int) and isinstance(v[1], str) and len(v) == 2),
    ({'type': 'object', 'additionalProperties': {'type': 'integer'}, 'minProperties': 3},
     lambda v: len(v) == 3 and all(isinstance(x, int) for x in v.values())),
    ({'type': 'object', 'properties': {'a': {'type': 'integer'}, 'b': {'type': 'string'}}, 'required': ['a'],
      'additionalProperties': False}, lambda v: set(v) == {'a', 'b'}),
    ({'allOf': [{'properties': {'a': {'type': 'integer'}}, 'required': ['a']},
                {'properties': {'b': {'type': 'string'}}, 'required': ['b']}]}, lambda v: set(v) == {'a', 'b'}),
    ({'type': 'object', 'properties': {'created_at': {'type': 'string'}, 'email': {'type': 'string'}}},
     lambda v: datetime.datetime.fromisoformat(v['created_at']) and '@' in v['email']),  # names read as formats
    ({'type': 'object', 'properties': {'x': {}}, 'required': ['x']}, lambda v: 'x' in v),  # 1.x: any value
])
def test_each_keyword_is_honoured(schema: dict[str, Any], check: Any) -> None:
    value = sample_json(schema)
    assert check(value), value
    for seed in range(20):
        sample_json(schema, seed=seed)  # random choices stay within the schema too (the property tests check)


@pytest.mark.parametrize(('schema', 'reason'), [
    ({'$ref': 'other.json#/Thing'}, 'external'),
    ({'$ref': '#/$defs/Missing'}, 'points at nothing'),
    ({'type': 'integer', 'minimum': 3, 'maximum': 2}, 'no integer'),
    ({'type': 'integer', 'minimum': 1, 'maximum': 2, 'multipleOf': 5}, 'no integer multiple'),
    ({'type': 'number', 'exclusiveMinimum': 1, 'exclusiveMaximum': 1}, 'no number'),
    ({'type': 'array', 'items': {'type': 'boolean'}, 'minItems': 3, 'uniqueItems': True}, 'distinct'),
    ({'$ref': '#/$defs/A', '$defs': {'A': {'type': 'object', 'properties': {'a': {'$ref': '#/$defs/A'}},
                                           'required': ['a']}}}, 'without end'),
    ({'anyOf': []}, 'empty anyOf'),
    ({'type': 'widget'}, 'unknown JSON Schema type'),
    ({'type': 'string', 'pattern': r'^a{5}$', 'maxLength': 2}, 'no string matching'),
])
def test_a_schema_with_no_value_is_named(schema: dict[str, Any], reason: str) -> None:
    with pytest.raises(SampleError, match=reason):
        sample_json(schema)


@pytest.mark.parametrize('pattern', [*PATTERNS, r'(ab|cd)+\1', r'(?i)^[a-f0-9]{8}$', r'^[^abc]{2,}$', r'^\s?\S+$',
                                     r'^(?:\+?1)?\d{10}$', r'^\W\D$'])
def test_a_pattern_sample_matches(pattern: str) -> None:
    assert re.search(pattern, regex_sample(pattern))
    import random
    for seed in range(30):
        assert re.search(pattern, regex_sample(pattern, random.Random(seed)))


LOOSE = st.one_of(LEAVES, st.sampled_from([datetime.datetime, datetime.time, dict[int, str], dict[uuid.UUID, int],
                                           Annotated[datetime.datetime, msgspec.Meta(tz=False)]]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model(st.recursive(LOOSE, containers, max_leaves=8)), st.integers(0, 2**16))
def test_example_gives_an_instance_where_the_schema_says_less_than_the_model(model_type: Any, seed: int) -> None:
    """A plain datetime or a time is a bare string in msgspec's schema, a map key is a string:
    ``example`` fixes the fields msgspec refuses, so it still returns a valid instance."""
    from microagent.testing import example, examples

    assert isinstance(example(model_type), model_type)
    assert example(model_type) == example(model_type)
    assert all(isinstance(item, model_type) for item in examples(model_type, 3, seed))


@pytest.mark.parametrize(('field_type', 'seed'), [
    (dict[str, list[dict[int, str]]], 3),  # maps whose lists differ in length
    (dict[str, list[datetime.datetime]], 2),
    (dict[str, dict[int, str] | None], 1),  # one map value null, another a map to repair
])
def test_a_repair_inside_one_value_of_a_map_leaves_its_siblings_alone(field_type: Any, seed: int) -> None:
    """msgspec's ``[...]`` names one value of a map: the repair follows the path into the values
    that have it (found by the property test above)."""
    from microagent.testing import examples

    model_type = msgspec.defstruct('Nested', [('f0', field_type)])
    assert all(isinstance(item, model_type) for item in examples(model_type, 3, seed))
