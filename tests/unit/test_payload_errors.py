"""An invalid payload names every failing field, for each kind of payload model."""
from __future__ import annotations

import dataclasses
from typing import Annotated, TypedDict

import msgspec
import pydantic
import pytest

from microagent import InvalidPayload, Queue, Signal
from microagent.backends.memory import MemoryBroker, MemorySignalBus
from microagent.payload import codec_for, dict_codec


class Address(msgspec.Struct):
    city: str
    zip: str


class User(msgspec.Struct, rename='camel'):
    user_id: int
    email: str
    address: Address
    age: Annotated[int, msgspec.Meta(ge=0)] = 0


@dataclasses.dataclass
class UserData:
    user_id: int
    email: str


class UserDict(TypedDict):
    user_id: int
    email: str


class UserModel(pydantic.BaseModel):
    user_id: int
    email: str


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    user_id: int
    email: str


def errors_of(model: object, data: bytes) -> list[str]:
    with pytest.raises(InvalidPayload) as caught:
        codec_for(model, "queue 'users'").decode(data)
    assert str(caught.value).startswith("Invalid payload for queue 'users': ")
    return caught.value.errors


def test_struct_reports_every_field_with_its_wire_name_and_nested_path() -> None:
    assert errors_of(User, b'{"userId": "one", "address": {"city": "Oslo"}, "age": -1}') == [
        'Expected `int`, got `str` - at `$.userId`',
        'Object missing required field `email`',
        'Object missing required field `zip` - at `$.address`',
        'Expected `int` >= 0 - at `$.age`',
    ]


def test_dataclass_and_typeddict_report_every_field() -> None:
    expected = ['Expected `int`, got `str` - at `$.user_id`', 'Expected `str`, got `int` - at `$.email`']
    assert errors_of(UserData, b'{"user_id": "one", "email": 1}') == expected
    assert errors_of(UserDict, b'{"user_id": "one", "email": 1}') == expected
    assert errors_of(UserDict, b'{}') == ['Object missing required field `user_id`',
                                          'Object missing required field `email`']


def test_pydantic_reports_every_field() -> None:
    errors = errors_of(UserModel, b'{"user_id": "one"}')
    assert [error.split(':')[0] for error in errors] == ['user_id', 'email']


def test_an_error_that_is_no_single_field_comes_first_and_the_fields_follow() -> None:
    assert errors_of(Strict, b'{"extra": 1, "user_id": 1, "email": 2}') == [
        'Object contains unknown field `extra`', 'Expected `str`, got `int` - at `$.email`']


def test_a_payload_that_is_not_an_object_keeps_its_one_error() -> None:
    assert errors_of(User, b'[1, 2]') == ['Expected `object`, got `array`']
    assert errors_of(int, b'"one"') == ['Expected `int`, got `str`']


def test_a_1x_dict_declaration_reports_every_missing_key_and_every_typed_field() -> None:
    keys = dict_codec("signal 'user'", ['user_id', 'email', 'name'])
    with pytest.raises(InvalidPayload) as caught:
        keys.from_kwargs({'name': 'a'})
    assert caught.value.errors == ['missing required field `user_id`', 'missing required field `email`']

    typed = dict_codec("signal 'user'", {'user_id': 'integer', 'email': 'string', 'name': 'string'})
    with pytest.raises(InvalidPayload) as caught:
        typed.decode(b'{"user_id": "one", "name": 5}')
    assert caught.value.errors == ['missing required field `email`', 'Expected `int`, got `str` - at `$.user_id`',
                                   'Expected `str`, got `int` - at `$.name`']

    schema = dict_codec("signal 'user'", None, {
        'type': 'object', 'required': ['user_id'],
        'properties': {'user_id': {'type': 'integer', 'minimum': 1}, 'email': {'type': 'string'}}})
    with pytest.raises(InvalidPayload) as caught:
        schema.from_kwargs({'user_id': 0, 'email': 5})
    assert caught.value.errors == ['Expected `int` >= 1 - at `$.user_id`',
                                   'Expected `str | null`, got `int` - at `$.email`']


async def test_send_names_every_failing_field_and_publishes_nothing() -> None:
    signal = Signal('payload_errors_user', UserData)
    queue = Queue('payload_errors_user', UserData)
    bus, broker = MemorySignalBus(), MemoryBroker()
    invalid = UserData(user_id='one', email=2)  # type: ignore[arg-type]
    with pytest.raises(InvalidPayload, match=r"signal 'payload_errors_user'.*\$\.user_id.*\$\.email"):
        await bus[signal].send('test', invalid)
    with pytest.raises(InvalidPayload, match=r"queue 'payload_errors_user'.*\$\.user_id.*\$\.email"):
        await broker[queue].send(invalid)
    assert await broker.queue_length(queue.name) == 0
