"""Is a new version of a contract compatible with the old one? Pure functions over JSON Schema dicts.

The levels are Confluent Schema Registry's. For a payload (written by producers, read by
consumers): BACKWARD, new consumers read every old message (the new schema accepts all the old one
does: consumers may be upgraded first); FORWARD, old consumers read every new message (producers
may be upgraded first); FULL, both; BREAKING, neither.

What a message holds is what its writer's schema declares (msgspec writes declared fields only), and
a reader ignores fields it does not know unless its schema says ``additionalProperties: false``
(msgspec's ``forbid_unknown_fields``). So adding an optional field is FULL, adding a required one
FORWARD. Anything this module cannot reason about counts as BREAKING, never as compatible.

An RPC answer is written by the receivers and read by the callers, so it counts the other way
round: a signal is BACKWARD when its receivers may be upgraded first, which needs the new answers
to be readable by the old callers (an answer may narrow, not widen).
"""
from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

JsonDict = dict[str, Any]
Part = Literal['payload', 'answer']
Kind = Literal['signal', 'queue']
Status = Literal['added', 'removed', 'changed', 'unchanged']


class Level(enum.StrEnum):
    """Confluent Schema Registry's compatibility levels (its ``*_TRANSITIVE`` need a history)."""

    FULL = 'FULL'
    BACKWARD = 'BACKWARD'
    FORWARD = 'FORWARD'
    BREAKING = 'BREAKING'

    @classmethod
    def of(cls, backward: bool, forward: bool) -> Level:
        if backward and forward:
            return cls.FULL
        return cls.BACKWARD if backward else cls.FORWARD if forward else cls.BREAKING

    def meets(self, required: Level) -> bool:
        """FULL meets every level; BACKWARD and FORWARD meet themselves; BREAKING only itself."""
        return self is Level.FULL or self is required or required is Level.BREAKING


@dataclass(frozen=True)
class Change:
    """One difference between two schemas, and which readers it keeps working."""

    part: Part
    path: str  # 'email', 'lines[].sku', 'tags{}', '' for the whole payload or answer
    what: str  # the change, for a person: 'required field added (no default)'
    backward: bool  # the new schema's readers read everything the old one allowed
    forward: bool  # the old schema's readers read everything the new one allows

    @property
    def level(self) -> Level:
        return Level.of(self.backward, self.forward)

    @property
    def field(self) -> str:
        """``payload.email``, ``answer``, ``payload.lines[].sku``: where, as a person reads it."""
        if not self.path:
            return self.part
        return f'{self.part}{"" if self.path.startswith("[") else "."}{self.path}'

    @property
    def reason(self) -> str:
        """Who is hurt: empty for a FULL change."""
        hurt = []
        if not self.backward:
            hurt.append('old callers may reject the answers of new receivers' if self.part == 'answer'
                        else 'new consumers may reject messages of old producers')
        if not self.forward:
            hurt.append('new callers may reject the answers of old receivers' if self.part == 'answer'
                        else 'old consumers may reject messages of new producers')
        return '; '.join(hurt)

    def to_dict(self) -> JsonDict:
        return {'field': self.field, 'part': self.part, 'path': self.path, 'change': self.what,
                'level': self.level.value, 'reason': self.reason}


@dataclass(frozen=True)
class Declaration:
    """A signal or queue of one version: its standalone payload schema and, for RPC, answer schema."""

    kind: Kind
    name: str
    payload: JsonDict
    answer: JsonDict | None = None
    rpc: bool = False  #: the export says it is answered, whether it carries the answer schema or not


@dataclass(frozen=True)
class DeclarationDiff:
    kind: Kind
    name: str
    status: Status
    changes: tuple[Change, ...] = ()

    @property
    def level(self) -> Level:
        if self.status == 'removed':  # old producers still send it; no new consumer reads it
            return Level.FORWARD
        return Level.of(all(c.backward for c in self.changes), all(c.forward for c in self.changes))

    def to_dict(self) -> JsonDict:
        return {'kind': self.kind, 'name': self.name, 'status': self.status, 'level': self.level.value,
                'changes': [change.to_dict() for change in self.changes]}


@dataclass(frozen=True)
class Report:
    """Every declaration of either version, sorted by kind and name."""

    declarations: tuple[DeclarationDiff, ...] = field(default_factory=tuple)

    @property
    def level(self) -> Level:
        levels = [d.level for d in self.declarations]
        return Level.of(all(level.meets(Level.BACKWARD) for level in levels),
                        all(level.meets(Level.FORWARD) for level in levels))

    def meets(self, required: Level) -> bool:
        return all(d.level.meets(required) for d in self.declarations)

    def failing(self, required: Level) -> list[DeclarationDiff]:
        return [d for d in self.declarations if not d.level.meets(required)]

    @property
    def changed(self) -> list[DeclarationDiff]:
        return [d for d in self.declarations if d.status != 'unchanged']

    @property
    def unchanged(self) -> list[str]:
        """``kind name`` of each declaration the same in both versions."""
        return [f'{d.kind} {d.name}' for d in self.declarations if d.status == 'unchanged']

    def to_dict(self, required: Level | None = None) -> JsonDict:
        return {'level': self.level.value, 'required': required.value if required else None,
                'ok': self.meets(required) if required else True,
                'declarations': [d.to_dict() for d in self.changed], 'unchanged': self.unchanged}


def diff(old: Iterable[Declaration], new: Iterable[Declaration]) -> Report:
    """Compare two versions of a contract, declaration by declaration."""
    before = {(d.kind, d.name): d for d in old}
    after = {(d.kind, d.name): d for d in new}
    results = []
    for key in sorted(before.keys() | after.keys()):
        kind, name = key
        if key not in before:
            results.append(DeclarationDiff(kind, name, 'added'))
        elif key not in after:
            results.append(DeclarationDiff(kind, name, 'removed'))
        else:
            changes = declaration_changes(before[key], after[key])
            results.append(DeclarationDiff(kind, name, 'changed' if changes else 'unchanged', tuple(changes)))
    return Report(tuple(results))


def declaration_changes(old: Declaration, new: Declaration) -> list[Change]:
    """The payload's changes, then the answer's (counted from the receivers' side, see the module)."""
    changes = compare(old.payload, new.payload)
    missing = [side for side, item in (('OLD', old), ('NEW', new)) if item.rpc and item.answer is None]
    if missing:  # an unknown answer is never called compatible: BREAKING until it is exported
        changes.append(Change('answer', '', f'answer schema missing from {" and ".join(missing)} (an RPC signal): '
                                            'cannot be compared, export it again', False, False))
    elif old.answer is None and new.answer is not None:
        # old callers only send it; new callers wait for an answer old receivers never give
        changes.append(Change('answer', '', 'became an RPC signal (answer added)', True, False))
    elif old.answer is not None and new.answer is None:
        changes.append(Change('answer', '', 'no longer an RPC signal (answer removed)', False, True))
    elif old.answer is not None and new.answer is not None:
        changes += [Change('answer', c.path, c.what, c.forward, c.backward)
                    for c in compare(old.answer, new.answer)]
    return changes


def compare(old: JsonDict | bool, new: JsonDict | bool, part: Part = 'payload') -> list[Change]:
    """Every change from the standalone schema ``old`` to ``new`` (empty: the same contract).

    ``backward``/``forward`` of each change are those of a reader of the schema (as for a payload).
    """
    return list(_Walk(old, new, part).run())


# the walk

_ANNOTATIONS = frozenset({
    'title', 'description', 'default', 'examples', 'example', '$comment', 'deprecated', 'readOnly',
    'writeOnly', '$schema', '$defs', 'definitions', '$id', '$anchor', 'discriminator', 'contentSchema',
})
_LOWER = ('minimum', 'exclusiveMinimum', 'minLength', 'minItems', 'minProperties', 'minContains')
_UPPER = ('maximum', 'exclusiveMaximum', 'maxLength', 'maxItems', 'maxProperties', 'maxContains')
_EXACT = ('pattern', 'format', 'contentEncoding', 'contentMediaType')
_STRUCTURE = frozenset({'type', 'enum', 'const', 'anyOf', 'oneOf', 'properties', 'required',
                        'additionalProperties', 'items', 'prefixItems', 'additionalItems', 'multipleOf',
                        'uniqueItems', '$ref', 'nullable'})
_HANDLED = _ANNOTATIONS | _STRUCTURE | set(_LOWER) | set(_UPPER) | set(_EXACT)
_NOTHING: JsonDict = {'not': {}}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _join(path: str, name: str) -> str:
    return f'{path}.{name}' if path else name


_TYPES = ((type(None), 'null'), (bool, 'boolean'), (int, 'integer'), (float, 'number'), (str, 'string'),
          (list, 'array'), (dict, 'object'))  # bool before int: True is an int too


def _json_type(value: Any) -> str:
    return next((name for kind, name in _TYPES if isinstance(value, kind)), 'unknown')


def _as_schema(node: Any) -> JsonDict:
    if node is True or node is None:
        return {}
    if node is False:
        return _NOTHING
    return node if isinstance(node, dict) else {}


class _Walk:
    """Walks two schemas side by side, each resolving ``$ref`` in its own document."""

    def __init__(self, old: JsonDict | bool, new: JsonDict | bool, part: Part) -> None:
        self.old_root, self.new_root = _as_schema(old), _as_schema(new)
        self.part: Part = part
        self.active: set[tuple[str, str]] = set()  # the ($ref, $ref) pairs being compared

    def run(self) -> Iterator[Change]:
        yield from self.node(self.old_root, self.new_root, '')

    def change(self, path: str, what: str, backward: bool, forward: bool) -> Change:
        return Change(self.part, path, what, backward, forward)

    # references and unions

    @staticmethod
    def resolve(node: Any, root: JsonDict) -> JsonDict:
        node = _as_schema(node)
        seen: set[str] = set()
        while isinstance(node.get('$ref'), str) and node['$ref'].startswith('#'):
            ref = node['$ref']
            if ref in seen:
                return {}
            seen.add(ref)
            target: Any = root
            for token in ref[1:].split('/')[1:]:
                token = token.replace('~1', '/').replace('~0', '~')
                target = target.get(token, {}) if isinstance(target, dict) else {}
            node = {**_as_schema(target), **{k: v for k, v in node.items() if k != '$ref'}}
        allof = node.get('allOf')
        if isinstance(allof, list) and len(allof) == 1:  # pydantic's way of annotating a $ref
            rest = {k: v for k, v in node.items() if k != 'allOf'}
            return {**_Walk.resolve(allof[0], root), **rest}
        return dict(node)

    def branches(self, node: Any, root: JsonDict) -> list[tuple[JsonDict, JsonDict]]:
        """The alternatives of a schema, flattened: (as written, resolved)."""
        resolved = self.resolve(node, root)
        for key in ('anyOf', 'oneOf'):
            if isinstance(resolved.get(key), list):
                rest = {k: v for k, v in resolved.items() if k not in (key, 'discriminator', *_ANNOTATIONS)}
                out: list[tuple[JsonDict, JsonDict]] = []
                for sub in resolved[key]:
                    sub = _as_schema(sub)
                    out += self.branches({**rest, **sub}, root) if rest else self.branches(sub, root)
                return out
        types = resolved.get('type')
        if isinstance(types, list):
            return [(resolved, {**resolved, 'type': t}) for t in types]
        if resolved.get('nullable') is True:  # OpenAPI 3.0 style
            plain = {k: v for k, v in resolved.items() if k != 'nullable'}
            return [(plain, plain), ({'type': 'null'}, {'type': 'null'})]
        return [(_as_schema(node), resolved)]

    @staticmethod
    def kind(node: JsonDict) -> str:
        if 'const' in node:
            return _json_type(node['const'])
        if isinstance(node.get('type'), str):
            return str(node['type'])
        if isinstance(node.get('enum'), list):
            kinds = {_json_type(value) for value in node['enum']}
            return kinds.pop() if len(kinds) == 1 else 'enum'
        if node == _NOTHING:
            return 'nothing'
        if not set(node) - _ANNOTATIONS:
            return 'any'
        if 'properties' in node or 'additionalProperties' in node:
            return 'object'
        if 'items' in node or 'prefixItems' in node:
            return 'array'
        return 'unknown'

    def node(self, old: Any, new: Any, path: str) -> Iterator[Change]:
        yield from self.union(self.branches(old, self.old_root), self.branches(new, self.new_root), path)

    def union(self, old: list[tuple[JsonDict, JsonDict]], new: list[tuple[JsonDict, JsonDict]],
              path: str) -> Iterator[Change]:
        if len(old) == 1 and len(new) == 1:
            yield from self.pair(old[0], new[0], path)
            return
        left, right = list(range(len(old))), list(range(len(new)))
        pairs: list[tuple[int, int]] = []

        def pair(match: Any) -> None:
            for i in list(left):
                for j in right:
                    if match(old[i][1], new[j][1]):
                        pairs.append((i, j))
                        left.remove(i)
                        right.remove(j)
                        break

        pair(lambda a, b: _json(a) == _json(b))
        pair(lambda a, b: self.kind(a) == self.kind(b) and a.get('title') == b.get('title'))
        pair(lambda a, b: self.kind(a) == self.kind(b))
        pair(lambda a, b: {self.kind(a), self.kind(b)} == {'integer', 'number'})
        for i, j in sorted(pairs):
            yield from self.pair(old[i], new[j], path)
        for i in left:
            what = 'null no longer accepted' if self.kind(old[i][1]) == 'null' else \
                f'{self.label(old[i][1])} removed from the union'
            yield self.change(path, what, False, True)
        for j in right:
            what = 'nullable: null accepted' if self.kind(new[j][1]) == 'null' else \
                f'{self.label(new[j][1])} added to the union'
            yield self.change(path, what, True, False)

    def label(self, node: JsonDict) -> str:
        kind = self.kind(node)
        return f'{kind} {node["title"]}' if 'title' in node and kind == 'object' else kind

    # one alternative against another

    def pair(self, old_pair: tuple[JsonDict, JsonDict], new_pair: tuple[JsonDict, JsonDict],
             path: str) -> Iterator[Change]:
        (old_raw, old), (new_raw, new) = old_pair, new_pair
        refs = old_raw.get('$ref'), new_raw.get('$ref')
        if not (isinstance(refs[0], str) and isinstance(refs[1], str)):
            yield from self.branch(old, new, path)
            return
        key = (refs[0], refs[1])
        if key in self.active:  # a recursive model: this pair is being compared further up
            return
        self.active.add(key)
        try:
            yield from self.branch(old, new, path)
        finally:
            self.active.discard(key)

    def branch(self, old: JsonDict, new: JsonDict, path: str) -> Iterator[Change]:
        ok, nk = self.kind(old), self.kind(new)
        if ok != nk:
            yield self.retyped(ok, nk, path)
            return
        yield from self.values(old, new, path)
        yield from self.bounds(old, new, path)
        if ok == 'object':
            yield from self.object(old, new, path)
        elif ok == 'array':
            yield from self.array(old, new, path)
        for key in sorted((set(old) | set(new)) - _HANDLED):
            if key.startswith('x-'):
                continue
            if _json(old.get(key)) != _json(new.get(key)):
                yield self.change(path, f'`{key}` changed (not analysed)', False, False)

    def retyped(self, old: str, new: str, path: str) -> Change:
        if (old == 'integer' and new == 'number') or new == 'any' or old == 'nothing':
            return self.change(path, f'type widened: {old} -> {new}', True, False)
        if (old == 'number' and new == 'integer') or old == 'any' or new == 'nothing':
            return self.change(path, f'type narrowed: {old} -> {new}', False, True)
        return self.change(path, f'type changed: {old} -> {new}', False, False)

    def values(self, old: JsonDict, new: JsonDict, path: str) -> Iterator[Change]:
        """``enum`` and ``const``: the allowed values."""
        before = old['enum'] if 'enum' in old else [old['const']] if 'const' in old else None
        after = new['enum'] if 'enum' in new else [new['const']] if 'const' in new else None
        if before is None and after is None:
            return
        if before is None:
            yield self.change(path, f'restricted to the values {_json(after)}', False, True)
        elif after is None:
            yield self.change(path, 'no longer restricted to a list of values', True, False)
        else:
            olds, news = {_json(v) for v in before}, {_json(v) for v in after}
            if news - olds:
                yield self.change(path, f'enum values added: {", ".join(sorted(news - olds))}', True, False)
            if olds - news:
                yield self.change(path, f'enum values removed: {", ".join(sorted(olds - news))}', False, True)

    def bounds(self, old: JsonDict, new: JsonDict, path: str) -> Iterator[Change]:
        """Constraints: a bound raised/lowered, a pattern or format added, removed or changed."""
        for keys, lower in ((_LOWER, True), (_UPPER, False)):
            for key in keys:
                a, b = old.get(key), new.get(key)
                if a == b:
                    continue
                if a is None or (b is not None and (b > a if lower else b < a)):
                    yield self.change(path, f'`{key}` tightened: {_bound(a)} -> {_bound(b)}', False, True)
                else:
                    yield self.change(path, f'`{key}` loosened: {_bound(a)} -> {_bound(b)}', True, False)
        for key in _EXACT:
            a, b = old.get(key), new.get(key)
            if a == b:
                continue
            if a is None:
                yield self.change(path, f'`{key}` added: {_json(b)}', False, True)
            elif b is None:
                yield self.change(path, f'`{key}` removed (was {_json(a)})', True, False)
            else:
                yield self.change(path, f'`{key}` changed: {_json(a)} -> {_json(b)}', False, False)
        a, b = old.get('multipleOf'), new.get('multipleOf')
        if a != b:
            if a is None or (b is not None and b % a == 0):
                yield self.change(path, f'`multipleOf` tightened: {_bound(a)} -> {_bound(b)}', False, True)
            elif b is None or a % b == 0:
                yield self.change(path, f'`multipleOf` loosened: {_bound(a)} -> {_bound(b)}', True, False)
            else:
                yield self.change(path, f'`multipleOf` changed: {a} -> {b}', False, False)
        if bool(old.get('uniqueItems')) != bool(new.get('uniqueItems')):
            if new.get('uniqueItems'):
                yield self.change(path, '`uniqueItems` required', False, True)
            else:
                yield self.change(path, '`uniqueItems` no longer required', True, False)

    def object(self, old: JsonDict, new: JsonDict, path: str) -> Iterator[Change]:
        before: JsonDict = old.get('properties') or {}
        after: JsonDict = new.get('properties') or {}
        old_required, new_required = set(old.get('required') or ()), set(new.get('required') or ())
        old_extra, new_extra = old.get('additionalProperties', True), new.get('additionalProperties', True)
        old_open, new_open = old_extra is not False, new_extra is not False  # readers ignore unknown fields
        for name in sorted(before.keys() | after.keys() | old_required | new_required):
            where = _join(path, name)
            if name not in before and name not in old_required:
                required = name in new_required
                schema = _as_schema(after.get(name))
                what = ('required field added (no default)' if required else
                        f'field added with default {_json(schema["default"])}' if 'default' in schema else
                        'optional field added')
                if not old_open:
                    what += '; old readers forbid unknown fields'
                yield self.change(where, what, not required, old_open)
            elif name not in after and name not in new_required:
                required = name in old_required
                what = 'required field removed' if required else 'optional field removed'
                if not new_open:
                    what += '; new readers forbid unknown fields'
                yield self.change(where, what, new_open, not required)
            else:
                if name in old_required and name not in new_required:
                    yield self.change(where, 'field became optional', True, False)
                elif name in new_required and name not in old_required:
                    yield self.change(where, 'field became required', False, True)
                yield from self.node(before.get(name, {}), after.get(name, {}), where)
        if isinstance(old_extra, dict) or isinstance(new_extra, dict):  # a map: compare its values
            yield from self.node(old_extra, new_extra, f'{path}{{}}')
        elif old_open != new_open:
            # writers write declared fields only: a reader's setting, recorded but not breaking
            yield self.change(path, 'unknown fields ' + ('forbidden' if old_open else 'allowed'), True, True)

    def array(self, old: JsonDict, new: JsonDict, path: str) -> Iterator[Change]:
        old_prefix, old_items = _tuple_items(old)
        new_prefix, new_items = _tuple_items(new)
        for index in range(max(len(old_prefix), len(new_prefix))):
            a = old_prefix[index] if index < len(old_prefix) else old_items
            b = new_prefix[index] if index < len(new_prefix) else new_items
            yield from self.node(a, b, f'{path}[{index}]')
        yield from self.node(old_items, new_items, f'{path}[]')


def _tuple_items(node: JsonDict) -> tuple[list[Any], Any]:
    """(positional item schemas, schema of the other items): draft 2020-12 or draft 07 tuples."""
    items = node.get('items', True)
    if isinstance(node.get('prefixItems'), list):
        return list(node['prefixItems']), items
    if isinstance(items, list):
        return items, node.get('additionalItems', True)
    return [], items


def _bound(value: Any) -> str:
    return 'none' if value is None else _json(value)

