"""Property tests: whatever bytes arrive, decoding raises nothing but ``InvalidPayload`` naming the channel.

Every codec kind (msgspec Struct, dataclass, TypedDict, plain RPC answer types, pydantic, the 1.x dict
codec from a key list, a dict of JSON types and a JSON Schema) and the consumer's receive path
(``Consumer.decode``, with and without ``dto_class``) get random bytes, random JSON and nasty bodies.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, TypedDict

import msgspec
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microagent import InvalidPayload, MicroAgent, Queue, consumer
from microagent.backends.memory import MemoryBroker
from microagent.handlers import Consumer
from microagent.payload import Codec, codec_for, dict_codec

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Touchy(Exception):
    """Not a ValueError nor a TypeError: what a model's own check may raise."""


class Job(msgspec.Struct):
    job_id: int
    text: str = ''

    def __post_init__(self) -> None:
        if self.job_id % 3 == 1:
            raise Touchy(f'job {self.job_id} is cursed')


@dataclass
class DataJob:
    job_id: int
    text: str = ''

    def __post_init__(self) -> None:
        if self.job_id % 3 == 1:
            raise Touchy(f'job {self.job_id} is cursed')


class DictJob(TypedDict):
    job_id: int
    tags: list[str]


class PydanticJob(pydantic.BaseModel):
    job_id: int
    text: str = ''

    @pydantic.field_validator('job_id')
    @classmethod
    def _not_cursed(cls, value: int) -> int:
        if value % 3 == 1:
            raise Touchy(f'job {value} is cursed')
        return value


class PlainDTO:
    """A 1.x ``dto_class``: a plain constructor that may raise anything."""

    def __init__(self, job_id: Any = None, **extra: Any) -> None:
        if isinstance(job_id, int) and job_id % 3 == 1:
            raise Touchy(f'job {job_id} is cursed')
        self.job_id = job_id


CODECS: dict[str, Codec[Any]] = {
    'struct': codec_for(Job, "queue 'q_struct'"),
    'dataclass': codec_for(DataJob, "queue 'q_dataclass'"),
    'typeddict': codec_for(DictJob, "signal 's_typeddict'"),
    'answer int': codec_for(int, "answer of signal 's_answer'"),
    'answer list': codec_for(list[float], "answer of signal 's_answers'"),
    'pydantic': codec_for(PydanticJob, "queue 'q_pydantic'"),
    'keys': dict_codec("signal 's_keys'", ['job_id', 'text']),
    'json types': dict_codec("signal 's_types'", {'job_id': 'integer', 'text': ['string', 'null']}),
    'json schema': dict_codec("queue 'q_schema'", None, {
        'type': 'object', 'required': ['job_id'],
        'properties': {'job_id': {'type': 'integer', 'minimum': 0},
                       'tags': {'type': 'array', 'items': {'type': 'string', 'maxLength': 5}},
                       'kind': {'enum': ['a', 'b']}}}),
}

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
job_like = st.fixed_dictionaries({'job_id': st.integers() | json_values},
                                 optional={'text': json_values, 'tags': json_values, 'kind': json_values})
NASTY = [
    b'{"job_id": 1, "text": "\xff\xfe"}',  # invalid UTF-8 inside a JSON string
    b'"\xc3\x28"',
    b'[' * 100_000 + b']' * 100_000,  # nesting far deeper than any recursion limit
    b'{"a":' * 100_000 + b'1' + b'}' * 100_000,
    b'{"job_id": ' + b'9' * 5000 + b'}',  # huge numbers
    b'{"job_id": 1e999999}', b'1e400', b'-' + b'9' * 400,
    b'NaN', b'Infinity', b'-Infinity', b'{"job_id": NaN}', b'{"job_id": "NaN"}', b'{"job_id": "Infinity"}',
    b'', b'\x00', b'null', b'[]', b'"job"', b'{"job_id": 4}', b'{"job_id": 7, "text": null}',
]
bodies = (st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode())
          | job_like.map(lambda v: json.dumps(v).encode()) | st.sampled_from(NASTY))


def _only_invalid_payload(decode: Any, data: bytes, target: str) -> None:
    try:
        decode(data)
    except InvalidPayload as exc:
        assert target in str(exc)


@pytest.mark.parametrize('kind', sorted(CODECS))
@PROPERTY
@given(data=bodies)
def test_codec_decode_raises_only_invalid_payload(kind: str, data: bytes) -> None:
    codec = CODECS[kind]
    _only_invalid_payload(codec.decode, data, codec.target)


@pytest.mark.parametrize('kind', sorted(CODECS))
@pytest.mark.parametrize('data', NASTY, ids=range(len(NASTY)))
def test_codec_decode_of_nasty_bodies(kind: str, data: bytes) -> None:
    codec = CODECS[kind]
    _only_invalid_payload(codec.decode, data, codec.target)


def test_invalid_utf8_and_deep_nesting_are_invalid_payloads_naming_the_queue() -> None:
    codec = CODECS['struct']
    with pytest.raises(InvalidPayload, match=r"queue 'q_struct'.*(UnicodeDecodeError|Invalid UTF-8)"):
        codec.decode(NASTY[0])
    with pytest.raises(InvalidPayload, match=r"queue 'q_struct'.*RecursionError"):
        codec.decode(NASTY[3])
    with pytest.raises(InvalidPayload, match=r"queue 'q_struct'.*Touchy: job 4 is cursed"):
        codec.decode(b'{"job_id": 4}')


def _consumers() -> list[Consumer]:
    suffix = uuid.uuid4().hex[:8]
    typed_queue = Queue(f'prop_typed_{suffix}', Job)
    legacy = Queue(f'prop_legacy_{suffix}')
    schema = Queue(f'prop_schema_{suffix}', schema={'type': 'object', 'required': ['job_id'],
                                                   'properties': {'job_id': {'type': 'integer'}}})
    pyd = Queue(f'prop_pydantic_{suffix}', PydanticJob)

    class Receiving(MicroAgent):
        @consumer(typed_queue)
        async def typed(self, job: Job) -> None: ...

        @consumer(legacy, dto_class=PlainDTO)
        async def plain_dto(self, **kwargs: Any) -> None: ...

        @consumer(schema, dto_class=DataJob)
        async def model_dto(self, **kwargs: Any) -> None: ...

        @consumer(pyd, dto_class=PydanticJob)
        async def pydantic_dto(self, job: PydanticJob) -> None: ...

    return Receiving(broker=MemoryBroker(f'memory://{suffix}')).consumers


CONSUMERS = _consumers()


@pytest.mark.parametrize('index', range(len(CONSUMERS)), ids=[c.key for c in CONSUMERS])
@PROPERTY
@given(data=bodies)
def test_consumer_receive_path_raises_only_invalid_payload(index: int, data: bytes) -> None:
    receiving = CONSUMERS[index]
    _only_invalid_payload(receiving.decode, data, f'queue {receiving.queue.name!r}')


def test_dto_class_constructor_error_is_an_invalid_payload_naming_the_queue() -> None:
    plain = next(c for c in CONSUMERS if c.dto_class is PlainDTO)
    with pytest.raises(InvalidPayload, match=rf"queue {plain.queue.name!r}.*Touchy: job 4 is cursed"):
        plain.decode(b'{"job_id": 4}')
