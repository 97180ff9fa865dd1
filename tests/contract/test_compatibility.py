"""microagent.contract.compatibility: every kind of change, planted breaking and compatible, checked twice: the level
the diff gives, and what msgspec really does when a reader of one version decodes the other's
message (a BACKWARD change: new readers decode old messages; FORWARD: old readers decode new ones).
"""
from __future__ import annotations

import copy
import enum
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from microagent.contract.compatibility import Change, Declaration, Level, compare, declaration_changes, diff
from microagent.payload import standalone_schema

JsonDict = dict[str, Any]


def schema(model: Any) -> JsonDict:
    """The payload schema as a Signal or Queue exports it."""
    if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        return standalone_schema(model.model_json_schema())
    return standalone_schema(msgspec.json.schema(model))


def struct(*fields: Any, forbid: bool = False, name: str = 'M') -> Any:
    """A msgspec Struct: fields as ``'name'``, ``(name, type)`` or ``(name, type, default)``."""
    return msgspec.defstruct(name, [(f, int) if isinstance(f, str) else f for f in fields],
                             forbid_unknown_fields=forbid)


def decodes(message: Any, model: Any) -> bool:
    try:
        msgspec.json.decode(msgspec.json.encode(message), type=model)
    except msgspec.ValidationError:
        return False
    return True


class Color1(enum.Enum):
    RED = 'red'


class Color2(enum.Enum):
    RED = 'red'
    GREEN = 'green'


class Inner(msgspec.Struct):
    x: int


class InnerRequiredY(msgspec.Struct):  # another name: a title is documentation, not contract
    x: int
    y: int


class InnerDefaultY(msgspec.Struct):
    x: int
    y: int = 0


@dataclass(frozen=True)
class Case:
    id: str
    old: Any  # the model of the old version
    new: Any
    level: Level
    field: str  # the field the report names
    old_message: Any  # valid for old: a witness of what new readers must read
    new_message: Any  # valid for new
    answer: bool = False  # the RPC answer of a signal rather than its payload


def a(t: Any, *more: Any, forbid: bool = False) -> Any:
    """A one-field model ``a: t`` (more fields may follow)."""
    return struct(('a', t), *more, forbid=forbid)


CASES = [
    # fields added / removed, with and without default, and msgspec's forbid_unknown_fields
    Case('added with default', struct('a'), struct('a', ('b', int, 0)), Level.FULL, 'payload.b',
         {'a': 1}, {'a': 1, 'b': 2}),
    Case('added with default, old forbids unknown', struct('a', forbid=True),
         struct('a', ('b', int, 0), forbid=True), Level.BACKWARD, 'payload.b', {'a': 1}, {'a': 1, 'b': 2}),
    Case('added required', struct('a'), struct('a', 'b'), Level.FORWARD, 'payload.b', {'a': 1}, {'a': 1, 'b': 2}),
    Case('added required, old forbids unknown', struct('a', forbid=True), struct('a', 'b'), Level.BREAKING,
         'payload.b', {'a': 1}, {'a': 1, 'b': 2}),
    Case('removed with default', struct('a', ('b', int, 0)), struct('a'), Level.FULL, 'payload.b',
         {'a': 1, 'b': 2}, {'a': 1}),
    Case('removed required', struct('a', 'b'), struct('a'), Level.BACKWARD, 'payload.b', {'a': 1, 'b': 2}, {'a': 1}),
    Case('removed with default, new forbids unknown', struct('a', ('b', int, 0)), struct('a', forbid=True),
         Level.FORWARD, 'payload.b', {'a': 1, 'b': 2}, {'a': 1}),
    Case('unknown fields forbidden, same fields', struct('a'), struct('a', forbid=True), Level.FULL, 'payload',
         {'a': 1}, {'a': 1}),
    # required / optional flips
    Case('became optional', struct('a', 'b'), struct('a', ('b', int, 0)), Level.BACKWARD, 'payload.b',
         {'a': 1, 'b': 2}, {'a': 1}),
    Case('became required', struct('a', ('b', int, 0)), struct('a', 'b'), Level.FORWARD, 'payload.b',
         {'a': 1}, {'a': 1, 'b': 2}),
    # types widened, narrowed, changed
    Case('integer widened to number', a(int), a(float), Level.BACKWARD, 'payload.a', {'a': 1}, {'a': 1.5}),
    Case('number narrowed to integer', a(float), a(int), Level.FORWARD, 'payload.a', {'a': 1.5}, {'a': 1}),
    Case('integer changed to string', a(int), a(str), Level.BREAKING, 'payload.a', {'a': 1}, {'a': 'x'}),
    Case('type added to a union', a(int), a(int | str), Level.BACKWARD, 'payload.a', {'a': 1}, {'a': 'x'}),
    Case('type removed from a union', a(int | str), a(int), Level.FORWARD, 'payload.a', {'a': 'x'}, {'a': 1}),
    Case('union member model changed', a(Inner | str), a(InnerRequiredY | str), Level.FORWARD, 'payload.a.y',
         {'a': {'x': 1}}, {'a': {'x': 1, 'y': 2}}),
    Case('nullable added', a(int), a(int | None), Level.BACKWARD, 'payload.a', {'a': 1}, {'a': None}),
    Case('nullable removed', a(int | None), a(int), Level.FORWARD, 'payload.a', {'a': None}, {'a': 1}),
    # enums
    Case('literal value added', a(Literal['x', 'y']), a(Literal['x', 'y', 'z']), Level.BACKWARD, 'payload.a',
         {'a': 'x'}, {'a': 'z'}),
    Case('literal value removed', a(Literal['x', 'y']), a(Literal['x']), Level.FORWARD, 'payload.a',
         {'a': 'y'}, {'a': 'x'}),
    Case('enum member added', a(Color1), a(Color2), Level.BACKWARD, 'payload.a', {'a': 'red'}, {'a': 'green'}),
    Case('enum member removed', a(Color2), a(Color1), Level.FORWARD, 'payload.a', {'a': 'green'}, {'a': 'red'}),
    Case('enum restriction added', a(str), a(Literal['x']), Level.FORWARD, 'payload.a', {'a': 'q'}, {'a': 'x'}),
    # nested models ($ref / $defs)
    Case('nested: required field added', a(Inner), a(InnerRequiredY), Level.FORWARD, 'payload.a.y',
         {'a': {'x': 1}}, {'a': {'x': 1, 'y': 2}}),
    Case('nested: field added with default', a(Inner), a(InnerDefaultY), Level.FULL, 'payload.a.y',
         {'a': {'x': 1}}, {'a': {'x': 1, 'y': 2}}),
    Case('nested: type narrowed', a(struct(('x', float), name='Inner')), a(Inner), Level.FORWARD, 'payload.a.x',
         {'a': {'x': 1.5}}, {'a': {'x': 1}}),
    # arrays, tuples, maps
    Case('array items widened', a(list[int]), a(list[float]), Level.BACKWARD, 'payload.a[]',
         {'a': [1]}, {'a': [1.5]}),
    Case('array items narrowed', a(list[float]), a(list[int]), Level.FORWARD, 'payload.a[]',
         {'a': [1.5]}, {'a': [1]}),
    Case('array of models: required field added', a(list[Inner]), a(list[InnerRequiredY]), Level.FORWARD,
         'payload.a[].y', {'a': [{'x': 1}]}, {'a': [{'x': 1, 'y': 2}]}),
    Case('array of models: field added with default', a(list[Inner]), a(list[InnerDefaultY]), Level.FULL,
         'payload.a[].y', {'a': [{'x': 1}]}, {'a': [{'x': 1, 'y': 2}]}),
    Case('tuple item widened', a(tuple[int, int]), a(tuple[int, float]), Level.BACKWARD, 'payload.a[1]',
         {'a': [1, 2]}, {'a': [1, 2.5]}),
    Case('tuple item changed', a(tuple[int, int]), a(tuple[int, str]), Level.BREAKING, 'payload.a[1]',
         {'a': [1, 2]}, {'a': [1, 'x']}),
    Case('map values widened', a(dict[str, int]), a(dict[str, float]), Level.BACKWARD, 'payload.a{}',
         {'a': {'k': 1}}, {'a': {'k': 1.5}}),
    Case('map values narrowed', a(dict[str, float]), a(dict[str, int]), Level.FORWARD, 'payload.a{}',
         {'a': {'k': 1.5}}, {'a': {'k': 1}}),
    # constraints
    Case('minLength tightened', a(Annotated[str, msgspec.Meta(min_length=1)]),
         a(Annotated[str, msgspec.Meta(min_length=3)]), Level.FORWARD, 'payload.a', {'a': 'ab'}, {'a': 'abc'}),
    Case('minLength loosened', a(Annotated[str, msgspec.Meta(min_length=3)]),
         a(Annotated[str, msgspec.Meta(min_length=1)]), Level.BACKWARD, 'payload.a', {'a': 'abc'}, {'a': 'ab'}),
    Case('maximum tightened', a(Annotated[int, msgspec.Meta(le=10)]), a(Annotated[int, msgspec.Meta(le=5)]),
         Level.FORWARD, 'payload.a', {'a': 7}, {'a': 5}),
    Case('maximum removed', a(Annotated[int, msgspec.Meta(le=5)]), a(int), Level.BACKWARD, 'payload.a',
         {'a': 5}, {'a': 7}),
    Case('exclusiveMinimum added', a(int), a(Annotated[int, msgspec.Meta(gt=0)]), Level.FORWARD, 'payload.a',
         {'a': 0}, {'a': 1}),
    Case('pattern added', a(str), a(Annotated[str, msgspec.Meta(pattern='^a')]), Level.FORWARD, 'payload.a',
         {'a': 'b'}, {'a': 'a'}),
    Case('pattern removed', a(Annotated[str, msgspec.Meta(pattern='^a')]), a(str), Level.BACKWARD, 'payload.a',
         {'a': 'a'}, {'a': 'b'}),
    Case('pattern changed', a(Annotated[str, msgspec.Meta(pattern='^a')]),
         a(Annotated[str, msgspec.Meta(pattern='^b')]), Level.BREAKING, 'payload.a', {'a': 'a'}, {'a': 'b'}),
    Case('minItems added', a(list[int]), a(Annotated[list[int], msgspec.Meta(min_length=1)]), Level.FORWARD,
         'payload.a', {'a': []}, {'a': [1]}),
    Case('maxItems loosened', a(Annotated[list[int], msgspec.Meta(max_length=1)]),
         a(Annotated[list[int], msgspec.Meta(max_length=3)]), Level.BACKWARD, 'payload.a', {'a': [1]},
         {'a': [1, 2]}),
    Case('multipleOf tightened', a(Annotated[int, msgspec.Meta(multiple_of=2)]),
         a(Annotated[int, msgspec.Meta(multiple_of=4)]), Level.FORWARD, 'payload.a', {'a': 2}, {'a': 4}),
    # RPC answers: written by receivers, read by callers
    Case('answer widened', int, float, Level.FORWARD, 'answer', 1, 1.5, answer=True),
    Case('answer narrowed', float, int, Level.BACKWARD, 'answer', 1.5, 1, answer=True),
    Case('answer nullable added', int, int | None, Level.FORWARD, 'answer', 1, None, answer=True),
    Case('answer field added, required', Inner, InnerRequiredY, Level.BACKWARD, 'answer.y',
         {'x': 1}, {'x': 1, 'y': 2}, answer=True),
    Case('answer field added with default', Inner, InnerDefaultY, Level.FULL, 'answer.y',
         {'x': 1}, {'x': 1, 'y': 2}, answer=True),
    Case('answer enum value added', Literal['x'], Literal['x', 'y'], Level.FORWARD, 'answer', 'x', 'y',
         answer=True),
]


def changes_of(case: Case) -> list[Change]:
    if case.answer:
        query = schema(struct('q'))
        return declaration_changes(Declaration('signal', 's', query, schema(case.old)),
                                   Declaration('signal', 's', query, schema(case.new)))
    return compare(schema(case.old), schema(case.new))


@pytest.mark.parametrize('case', CASES, ids=[case.id for case in CASES])
def test_each_change_has_the_level_msgspec_shows(case: Case) -> None:
    changes = changes_of(case)
    level = Level.of(all(c.backward for c in changes), all(c.forward for c in changes))

    assert level is case.level, changes
    assert case.field in [c.field for c in changes], changes
    assert decodes(case.old_message, case.old) and decodes(case.new_message, case.new)
    if case.answer:  # BACKWARD: new receivers first, their answers read by old callers
        assert decodes(case.new_message, case.old) is level.meets(Level.BACKWARD)
        assert decodes(case.old_message, case.new) is level.meets(Level.FORWARD)
    else:
        assert decodes(case.old_message, case.new) is level.meets(Level.BACKWARD)
        assert decodes(case.new_message, case.old) is level.meets(Level.FORWARD)


@pytest.mark.parametrize('case', CASES, ids=[case.id for case in CASES])
def test_the_reverse_change_has_the_mirrored_level(case: Case) -> None:
    reverse = Case(case.id, case.new, case.old, case.level, case.field, case.new_message, case.old_message,
                   case.answer)
    changes = changes_of(reverse)
    mirrored = {Level.BACKWARD: Level.FORWARD, Level.FORWARD: Level.BACKWARD}.get(case.level, case.level)

    assert Level.of(all(c.backward for c in changes), all(c.forward for c in changes)) is mirrored


def test_a_change_names_its_field_and_who_it_hurts() -> None:
    [change] = compare(schema(struct('a')), schema(struct('a', 'b')))

    assert change.to_dict() == {'field': 'payload.b', 'part': 'payload', 'path': 'b',
                                'change': 'required field added (no default)', 'level': 'FORWARD',
                                'reason': 'new consumers may reject messages of old producers'}
    [answer] = declaration_changes(Declaration('signal', 's', {}, schema(int)),
                                   Declaration('signal', 's', {}, schema(float)))
    assert answer.reason == 'old callers may reject the answers of new receivers'


def test_a_signal_becoming_rpc_or_not() -> None:
    query = schema(struct('q'))
    [added] = declaration_changes(Declaration('signal', 's', query), Declaration('signal', 's', query, schema(int)))
    [removed] = declaration_changes(Declaration('signal', 's', query, schema(int)), Declaration('signal', 's', query))

    # old callers only send; new callers wait for an answer old receivers never give
    assert (added.field, added.level) == ('answer', Level.BACKWARD)
    assert (removed.field, removed.level) == ('answer', Level.FORWARD)


def test_declarations_added_removed_and_unchanged() -> None:
    payload = schema(struct('a'))
    old = [Declaration('signal', 'kept', payload), Declaration('queue', 'gone', payload)]
    new = [Declaration('signal', 'kept', payload), Declaration('signal', 'fresh', payload)]

    report = diff(old, new)

    assert [(d.kind, d.name, d.status, d.level) for d in report.declarations] == [
        ('queue', 'gone', 'removed', Level.FORWARD),  # old producers may still send it
        ('signal', 'fresh', 'added', Level.FULL),
        ('signal', 'kept', 'unchanged', Level.FULL),
    ]
    assert report.level is Level.FORWARD
    assert report.meets(Level.FORWARD) and not report.meets(Level.BACKWARD)
    assert [d.name for d in report.failing(Level.FULL)] == ['gone']
    assert report.to_dict(Level.BACKWARD)['ok'] is False
    assert report.to_dict()['unchanged'] == ['signal kept']


def test_a_queue_and_a_signal_of_one_name_are_two_declarations() -> None:
    payload = schema(struct('a'))
    report = diff([Declaration('signal', 'x', payload)], [Declaration('queue', 'x', payload)])

    assert [(d.kind, d.status) for d in report.declarations] == [('queue', 'added'), ('signal', 'removed')]


def test_annotations_are_not_changes() -> None:
    old = schema(struct('a', name='Old'))
    new = copy.deepcopy(old)
    new['title'], new['description'] = 'New', 'renamed and documented'
    new['properties']['a'].update(title='A', examples=[1], deprecated=True)

    assert compare(old, new) == []


def test_a_model_moved_from_msgspec_to_pydantic_keeps_its_contract() -> None:
    class M(pydantic.BaseModel):
        a: int
        b: str = ''
        c: list[int] | None = None

    assert compare(schema(struct('a', ('b', str, ''), ('c', list[int] | None, None))), schema(M)) == []


def test_pydantic_constraints_and_optional_fields() -> None:
    class Old(pydantic.BaseModel):
        to: str = pydantic.Field(pattern=r'^[^@]+@[^@]+$')

    class New(pydantic.BaseModel):
        to: str = pydantic.Field(pattern=r'^[^@]+@example\.com$')
        cc: str | None = None

    changes = compare(schema(Old), schema(New))

    assert [(c.field, c.level) for c in changes] == [('payload.cc', Level.FULL), ('payload.to', Level.BREAKING)]


class Node(msgspec.Struct):
    value: int
    children: list[Node] = []


class Tree(msgspec.Struct):
    value: float
    children: list[Tree] = []


def test_recursive_models_end() -> None:
    assert compare(schema(Node), schema(Node)) == []
    [change] = compare(schema(Node), schema(Tree))
    assert (change.field, change.level) == ('payload.value', Level.BACKWARD)


def test_what_is_not_analysed_is_breaking() -> None:
    old = {'type': 'object', 'properties': {'a': {'type': 'string', 'not': {'const': 'x'}}}}
    new = {'type': 'object', 'properties': {'a': {'type': 'string', 'not': {'const': 'y'}}}}

    [change] = compare(old, new)

    assert (change.field, change.level, change.what) == ('payload.a', Level.BREAKING, '`not` changed (not analysed)')


def test_json_schema_type_lists_and_openapi_nullable_are_unions() -> None:
    listed = {'type': 'object', 'properties': {'a': {'type': ['integer', 'null']}}, 'required': ['a']}
    nullable = {'type': 'object', 'properties': {'a': {'type': 'integer', 'nullable': True}}, 'required': ['a']}
    plain = schema(a(int))

    assert compare(listed, schema(a(int | None))) == [] and compare(nullable, listed) == []
    assert [c.what for c in compare(plain, listed)] == ['nullable: null accepted']


# properties over generated schemas

_LEAVES = st.one_of(
    st.sampled_from(['integer', 'number', 'string', 'boolean']).map(lambda t: {'type': t}),
    st.integers(0, 5).map(lambda n: {'type': 'string', 'minLength': n}),
    st.integers(-5, 5).map(lambda n: {'type': 'integer', 'maximum': n}),
    st.lists(st.sampled_from(['x', 'y', 'z']), min_size=1, unique=True).map(lambda v: {'enum': v}),
    st.sampled_from(['^a', '^b']).map(lambda p: {'type': 'string', 'pattern': p}),
)


def _object(fields: dict[str, Any], required: set[str], closed: bool) -> JsonDict:
    node: JsonDict = {'type': 'object', 'properties': fields, 'required': sorted(required & fields.keys())}
    if closed:
        node['additionalProperties'] = False
    return node


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        children.map(lambda items: {'type': 'array', 'items': items}),
        children.map(lambda values: {'type': 'object', 'additionalProperties': values}),
        st.lists(children, min_size=2, max_size=3).map(lambda alts: {'anyOf': alts}),
        st.builds(_object, st.dictionaries(st.sampled_from('abcd'), children, max_size=3),
                  st.sets(st.sampled_from('abcd')), st.booleans()),
    )


SCHEMAS = st.recursive(_LEAVES, _extend, max_leaves=8)


@given(SCHEMAS)
def test_a_schema_is_full_compatible_with_itself(node: JsonDict) -> None:
    assert compare(node, copy.deepcopy(node)) == []


@given(SCHEMAS, SCHEMAS)
def test_swapping_old_and_new_swaps_backward_and_forward(old: JsonDict, new: JsonDict) -> None:
    there = sorted((c.path, c.backward, c.forward) for c in compare(old, new))
    back = sorted((c.path, c.forward, c.backward) for c in compare(new, old))

    assert there == back


def _widen(node: Any) -> Any:
    """Every integer a number."""
    if isinstance(node, dict):
        return {key: 'number' if key == 'type' and value == 'integer' else _widen(value)
                for key, value in node.items()}
    return [_widen(item) for item in node] if isinstance(node, list) else node


@given(SCHEMAS)
def test_widening_then_narrowing_round_trips(node: JsonDict) -> None:
    wide = _widen(node)
    widened, narrowed = compare(node, wide), compare(wide, node)
    if wide == node:
        assert widened == narrowed == []
        return
    assert {c.level for c in widened} <= {Level.BACKWARD, Level.FULL} and Level.BACKWARD in {c.level for c in widened}
    assert sorted((c.path, c.forward) for c in narrowed) == sorted((c.path, c.backward) for c in widened)


@given(st.builds(_object, st.dictionaries(st.sampled_from('abcd'), _LEAVES, min_size=1, max_size=3),
                 st.sets(st.sampled_from('abcd')), st.booleans()), st.sampled_from('abcd'))
def test_nullable_added_is_backward_and_removed_forward(node: JsonDict, name: str) -> None:
    if name not in node['properties']:
        return
    nullable = copy.deepcopy(node)
    nullable['properties'][name] = {'anyOf': [node['properties'][name], {'type': 'null'}]}

    assert [(c.path, c.level) for c in compare(node, nullable)] == [(name, Level.BACKWARD)]
    assert [(c.path, c.level) for c in compare(nullable, node)] == [(name, Level.FORWARD)]
