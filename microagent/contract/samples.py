"""Example messages from JSON Schemas: what the docs page shows, and what ``microagent.testing``
turns into typed payloads for contract tests and fuzzing.

``sample_json(schema)`` builds a value the schema accepts, from the subset our exporters (msgspec,
pydantic, 1.x declarations) write: ``$ref``/``$defs``, ``allOf``/``anyOf``/``oneOf``, nullable
types, ``enum``/``const``, string formats, lengths and patterns, numeric bounds (exclusive ones
too), arrays, tuples, objects and maps. ``examples`` and ``default`` win when a schema gives them.
Without a seed the result is the same for the same schema (docs stay stable); with one the choices
are random, for variety. Recursive models are cut short: past ``MAX_REF_DEPTH`` nested references
only what is required is built, and a nullable or empty option is preferred.
"""
from __future__ import annotations

import base64
import copy
import datetime
import math
import random
import re
import uuid
from collections.abc import Mapping
from typing import Any

from microagent.contract.regex_sample import regex_sample

__all__ = ['MAX_REF_DEPTH', 'SampleError', 'sample_json']

MAX_REF_DEPTH = 3  # nested $refs before only required parts are built
_GIVE_UP_DEPTH = 60  # a schema that is still nesting here has no finite value
_ANNOTATIONS = ('title', 'description', 'default', 'examples', 'example', '$comment', 'deprecated',
                'readOnly', 'writeOnly', 'discriminator')
_EPOCH = datetime.datetime(2024, 1, 1, 12, 0, tzinfo=datetime.UTC)


class SampleError(ValueError):
    """No example can be built for this schema (an external ``$ref``, a type with no finite value)."""


def _formatted(fmt: str, n: int, rng: random.Random | None) -> str | None:
    """A string in format ``fmt`` (the ``n``-th for variety), None for a format not known here."""
    k = n if rng is None else rng.randrange(10_000)
    when = _EPOCH + datetime.timedelta(days=k, seconds=k * 37)
    values = {
        'date-time': when.isoformat().replace('+00:00', 'Z'),
        'date': when.date().isoformat(),
        'time': when.time().isoformat(),
        'duration': f'PT{k + 1}S',
        'email': f'user{k or ""}@example.com', 'idn-email': f'user{k or ""}@example.com',
        'uri': f'https://example.com/{k or ""}', 'iri': f'https://example.com/{k or ""}',
        'uri-reference': f'/items/{k}', 'iri-reference': f'/items/{k}', 'url': f'https://example.com/{k or ""}',
        'hostname': f'host{k}.example.com', 'idn-hostname': f'host{k}.example.com',
        'ipv4': f'192.0.2.{k % 255}', 'ipv6': f'2001:db8::{k % 65535:x}',
        'decimal': f'{k}.5', 'regex': '.*', 'json-pointer': f'/items/{k}', 'relative-json-pointer': '0',
        'binary': base64.b64encode(f'bytes{k}'.encode()).decode(), 'base64': base64.b64encode(b'bytes').decode(),
        'password': f'secret{k}', 'byte': base64.b64encode(f'bytes{k}'.encode()).decode(),
        'uri-template': 'https://example.com/{id}',
    }
    if fmt.startswith('uuid'):
        version = int(fmt[4:]) if fmt[4:].isdigit() and 1 <= int(fmt[4:]) <= 8 else 4
        return str(uuid.UUID(int=(0x1234_5678_9abc_4def_8123_4567_89ab_cdef + k) % (1 << 128), version=version))
    return values.get(fmt)


class _Sampler:
    def __init__(self, root: Mapping[str, Any], rng: random.Random | None) -> None:
        self.root = root
        self.rng = rng

    # references and combinations

    def resolve(self, ref: str) -> Any:
        if not ref.startswith('#'):
            raise SampleError(f'cannot follow the external $ref {ref!r}')
        node: Any = self.root
        for part in ref[1:].lstrip('/').split('/') if ref != '#' else ():
            part = part.replace('~1', '/').replace('~0', '~')
            if not isinstance(node, Mapping) or part not in node:
                raise SampleError(f'$ref {ref!r} points at nothing')
            node = node[part]
        return node

    def expand(self, node: Any, refs: int) -> tuple[dict[str, Any], int]:
        """``node`` with its ``$ref`` and ``allOf`` merged in; the count of references followed."""
        if node is True or node is None:
            return {}, refs
        if node is False:
            raise SampleError('a schema `false` accepts no value')
        if not isinstance(node, Mapping):
            raise SampleError(f'a schema must be an object, got {node!r}')
        out = dict(node)
        while '$ref' in out:
            target, refs = self.resolve(out.pop('$ref')), refs + 1
            if refs > _GIVE_UP_DEPTH:
                raise SampleError('the schema nests references without end: it has no finite value')
            base, refs = self.expand(target, refs)
            out = {**base, **{k: v for k, v in out.items() if k not in _ANNOTATIONS or k == 'examples'}}
        for part in out.pop('allOf', ()):
            sub, refs = self.expand(part, refs)
            out = _merge(out, sub)
        return out, refs

    # values

    def value(self, node: Any, refs: int = 0, n: int = 0, name: str = '') -> Any:
        schema, refs = self.expand(node, refs)
        shallow = refs > MAX_REF_DEPTH
        given = self.given(schema, shallow, n)
        if given is not _NONE:
            return given
        for key in ('anyOf', 'oneOf'):
            if key in schema:
                rest = {k: v for k, v in schema.items() if k not in (key, *_ANNOTATIONS)}
                option = self.choose([self.expand(o, refs) for o in schema[key]], shallow)
                return self.value(_merge(rest, option[0]) if rest else option[0], option[1], n, name)
        kind = schema.get('type')
        if isinstance(kind, list):
            kinds = [k for k in kind if k != 'null'] or ['null']
            kind = 'null' if shallow and 'null' in kind else kinds[0] if self.rng is None else self.rng.choice(kind)
        if kind is None:
            kind = ('object' if {'properties', 'additionalProperties', 'required'} & schema.keys() else
                    'array' if {'items', 'prefixItems'} & schema.keys() else
                    'string' if {'pattern', 'format', 'minLength', 'maxLength'} & schema.keys() else
                    'number' if {'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'} & schema.keys() else
                    'any')
        if kind == 'string':
            return self._string(schema, refs, n, name)
        method = getattr(self, f'_{kind}', None)
        if method is None:
            raise SampleError(f'unknown JSON Schema type {kind!r}')
        return method(schema, refs, n)

    def given(self, schema: dict[str, Any], shallow: bool, n: int) -> Any:
        """What the schema itself offers: an example, the const, an enum value, a non-null default."""
        for key in ('examples', 'example'):
            found = schema.get(key)
            if key == 'examples' and isinstance(found, list) and found:
                return copy.deepcopy(found[n % len(found)] if self.rng is None else self.rng.choice(found))
            if key == 'example' and found is not None:
                return copy.deepcopy(found)
        if 'const' in schema:
            return copy.deepcopy(schema['const'])
        if isinstance(schema.get('enum'), list) and schema['enum']:
            values = schema['enum']
            return copy.deepcopy(values[n % len(values)] if self.rng is None else self.rng.choice(values))
        default = schema.get('default')
        if 'default' in schema and (default is not None or shallow) and (self.rng is None or self.rng.random() < 0.3):
            return copy.deepcopy(default)
        return _NONE

    def choose(self, options: list[tuple[dict[str, Any], int]], shallow: bool) -> tuple[dict[str, Any], int]:
        """An option of a union: the first non-null one (random with a seed); deep inside a
        recursive model a null or reference-free one, which ends the nesting."""
        if not options:
            raise SampleError('an empty anyOf/oneOf accepts no value')
        if shallow:
            finite = [o for o in options if o[0].get('type') == 'null'] or [o for o in options if o[1] <= MAX_REF_DEPTH]
            options = finite or options
            return options[0]
        real = [o for o in options if o[0].get('type') != 'null'] or options
        return real[0] if self.rng is None else self.rng.choice(options)

    def _any(self, schema: dict[str, Any], refs: int, n: int) -> Any:
        return f'value{n or ""}' if self.rng is None else self.rng.choice([n, f'value{n}', True, None])

    def _null(self, schema: dict[str, Any], refs: int, n: int) -> None:
        return None

    def _boolean(self, schema: dict[str, Any], refs: int, n: int) -> bool:
        return n % 2 == 0 if self.rng is None else self.rng.random() < 0.5

    def _integer(self, schema: dict[str, Any], refs: int, n: int) -> int:
        low, high = _bounds(schema)
        lo = None if low is None else math.floor(low[0]) + 1 if low[1] else math.ceil(low[0])
        hi = None if high is None else math.ceil(high[0]) - 1 if high[1] else math.floor(high[0])
        if lo is not None and hi is not None and lo > hi:
            raise SampleError(f'no integer lies between the bounds of {schema}')
        if self.rng is None:
            value = 1 + n
        else:
            start = lo if lo is not None else (hi - 1000 if hi is not None else -1000)
            value = self.rng.randint(start, hi if hi is not None else start + 2000)
        if lo is not None:
            value = max(value, lo)
        if hi is not None:
            value = min(value, hi)
        step = schema.get('multipleOf')
        if isinstance(step, int | float) and step > 0:
            multiple = math.ceil(value / step) * step
            if hi is not None and multiple > hi:
                multiple = math.floor(hi / step) * step
            if (lo is not None and multiple < lo) or not float(multiple).is_integer():
                raise SampleError(f'no integer multiple of {step} lies between the bounds of {schema}')
            value = int(multiple)
        return value

    def _number(self, schema: dict[str, Any], refs: int, n: int) -> float | int:
        low, high = _bounds(schema)
        step = schema.get('multipleOf')
        if isinstance(step, int | float) and step > 0 and float(step).is_integer():
            return self._integer(schema, refs, n)
        lo, hi = (-1e6 if low is None else low[0]), (1e6 if high is None else high[0])
        if low is None and high is not None:
            lo = hi - 1000
        if high is None and low is not None:
            hi = lo + 1000
        if lo > hi or (lo == hi and ((low and low[1]) or (high and high[1]))):
            raise SampleError(f'no number lies between the bounds of {schema}')
        if self.rng is None:
            want = 1.5 + n
            if not lo <= want <= hi or (low and low[1] and want == lo) or (high and high[1] and want == hi):
                want = lo + (hi - lo) / 2 if low or high else want
        else:
            want = self.rng.uniform(lo, hi)
            if (low and low[1] and want <= lo) or (high and high[1] and want >= hi):
                want = lo + (hi - lo) / 2
        if isinstance(step, int | float) and step > 0:
            k = math.ceil(want / step)
            want = k * step
        return want

    def _string(self, schema: dict[str, Any], refs: int, n: int, name: str = '') -> str:
        low, high = int(schema.get('minLength', 0)), schema.get('maxLength')
        fmt = schema.get('format')
        if schema.get('contentEncoding') == 'base64':
            fmt = 'binary'
        text = _formatted(fmt, n, self.rng) if isinstance(fmt, str) else None
        if text is not None:
            return text
        hinted = _hint(name) if fmt is None and 'pattern' not in schema else None
        text = _formatted(hinted, n, self.rng) if hinted else None
        if text is not None and len(text) >= low and (high is None or len(text) <= high):
            return text  # any string fits: one that reads like the field's name says
        pattern = schema.get('pattern')
        if isinstance(pattern, str):
            rng = self.rng or random.Random(n)
            for attempt in range(50):  # the first try is the shortest readable match, unless the n-th is asked
                text = regex_sample(pattern, self.rng or (rng if attempt or n else None))
                if re.search(pattern, text) and len(text) >= low and (high is None or len(text) <= high):
                    return text
            raise SampleError(f'no string matching {pattern!r} of length {low}..{high} was found')
        if self.rng is None:
            base = 'example' if not n else f'example{n}'
        else:
            base = ''.join(self.rng.choice('abcdefghijklmnopqrstuvwxyz ') for _ in range(self.rng.randint(1, 12)))
        if high is not None and len(base) > int(high):
            base = base[len(base) - int(high):] if n else base[:int(high)]
        if len(base) < low:
            base = (base * (low // max(len(base), 1) + 1))[:low] if base else 'x' * low
        return base

    def _array(self, schema: dict[str, Any], refs: int, n: int) -> list[Any]:
        low, high = int(schema.get('minItems', 0)), schema.get('maxItems')
        prefix = list(schema.get('prefixItems', ()))
        items = schema.get('items', {} if not prefix else False)
        if isinstance(items, list):  # draft 07 tuple form
            prefix, items = items, schema.get('additionalItems', False)
        out = [self.value(sub, refs, n) for sub in prefix]
        if items is False:
            return out
        shallow = refs > MAX_REF_DEPTH
        extra = 0 if shallow else 3
        want = max(low, min(extra, 1)) if self.rng is None else self.rng.randint(low, low + extra)
        if high is not None:
            want = min(want, int(high))
        want = max(want - len(out), 0)
        unique = bool(schema.get('uniqueItems'))
        seen: list[Any] = [*out]
        k = n
        while len(out) < len(prefix) + want:
            item = self.value(items, refs, k)
            k += 1
            if unique and item in seen:
                if k - n > 50 + want:
                    if len(out) >= low:
                        break  # fewer than hoped, as many as needed
                    raise SampleError(f'cannot find {low} distinct items for {schema}')
                continue
            seen.append(item)
            out.append(item)
        return out

    def _object(self, schema: dict[str, Any], refs: int, n: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get('properties') or {}
        required = list(schema.get('required') or ())
        shallow = refs > MAX_REF_DEPTH
        out: dict[str, Any] = {}
        for key, sub in properties.items():
            if key in required or (not shallow and (self.rng is None or self.rng.random() < 0.5)):
                out[key] = self.value(sub, refs, n, key)
        for key in required:
            if key not in out:
                out[key] = self.value(properties.get(key, {}), refs, n, key)
        extra = schema.get('additionalProperties', {} if not properties else False)
        if extra is False or (extra is None):
            return out
        low = int(schema.get('minProperties', 0))
        high = schema.get('maxProperties')
        if properties and len(out) >= low:
            return out  # a model that allows extra keys: its own fields are the example
        want = max(low, 0 if shallow else 1) if self.rng is None else self.rng.randint(low, low if shallow else low + 2)
        if high is not None:
            want = min(want, int(high))
        names = schema.get('propertyNames')
        k = n
        while len(out) < want:
            key = self._string(self.expand(names, refs)[0], refs, k) if isinstance(names, Mapping) else (
                f'key{k}' if k else 'key')
            k += 1
            if key in out:
                if k - n > 50 + want:
                    raise SampleError(f'cannot find {want} distinct keys for {schema}')
                continue
            out[key] = self.value(extra, refs, k)
        return out


def _hint(name: str) -> str | None:
    """The format a plain string field's name suggests (``email``, ``created_at``): a readable
    example, and one a msgspec ``datetime`` (whose schema is a bare string) accepts."""
    name = name.lower()
    if 'email' in name:
        return 'email'
    if name.endswith(('_at', '_time', 'timestamp')) or name in ('time', 'datetime', 'created', 'updated'):
        return 'date-time'
    if name.endswith('_date') or name == 'date':
        return 'date'
    if name.endswith(('url', 'uri', 'link', 'href')):
        return 'uri'
    if name.endswith('uuid'):
        return 'uuid'
    return None


_NONE = object()  # ``given`` found nothing (None is a value)


def _bounds(schema: Mapping[str, Any]) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
    """(lower, exclusive), (upper, exclusive): draft 2020-12 numbers or draft 4 booleans."""
    def bound(inclusive: str, exclusive: str) -> tuple[float, bool] | None:
        ex = schema.get(exclusive)
        if isinstance(ex, bool):  # draft 4 / OpenAPI 3.0
            return (float(schema[inclusive]), ex) if inclusive in schema else None
        found = [(float(schema[inclusive]), False)] if inclusive in schema else []
        if isinstance(ex, int | float):
            found.append((float(ex), True))
        if not found:
            return None
        tighter = max if inclusive == 'minimum' else min
        return tighter(found, key=lambda b: (b[0], b[1]) if inclusive == 'minimum' else (b[0], not b[1]))
    return bound('minimum', 'exclusiveMinimum'), bound('maximum', 'exclusiveMaximum')


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``allOf`` parts as one schema: properties and required united, the rest the later one's."""
    out = {**base, **extra}
    if 'properties' in base and 'properties' in extra:
        out['properties'] = {**base['properties'], **extra['properties']}
    if 'required' in base and 'required' in extra:
        out['required'] = list(dict.fromkeys([*base['required'], *extra['required']]))
    return out


def sample_json(schema: Mapping[str, Any], *, seed: int | None = None) -> Any:
    """A JSON value ``schema`` accepts: the same one every time without ``seed``, a random one with."""
    return _Sampler(schema, None if seed is None else random.Random(seed)).value(schema)
