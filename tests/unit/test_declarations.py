"""Signal and Queue declarations, registries and JSON declaration files."""
from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import msgspec
import pydantic
import pytest

from microagent import (
    DeclarationError,
    Exchange,
    InvalidPayload,
    Queue,
    QueueNotFound,
    Signal,
    SignalNotFound,
    configure,
    load_queues,
    load_signals,
    load_stuff,
)


class Created(msgspec.Struct):
    user_id: int


class Other(msgspec.Struct):
    user_id: int


def test_registry_by_name_and_attribute(unique: str) -> None:
    signal = Signal(f'reg_{unique}', Created)
    queue = Queue(f'reg_{unique}', Created)
    assert Signal.get(f'reg_{unique}') is signal
    assert getattr(Signal, f'reg_{unique}') is signal
    assert Signal.get_all()[f'reg_{unique}'] is signal
    assert Queue.get(f'reg_{unique}') is queue and getattr(Queue, f'reg_{unique}') is queue
    assert repr(signal) == f'<Signal reg_{unique}>'
    with pytest.raises(SignalNotFound, match=f"missing_{unique}"):
        Signal.get(f'missing_{unique}')
    with pytest.raises(QueueNotFound, match=f"missing_{unique}"):
        getattr(Queue, f'missing_{unique}')


def test_redeclaring_with_the_same_contract_is_fine_and_another_contract_is_an_error(unique: str) -> None:
    Signal(f'same_{unique}', Created)
    Signal(f'same_{unique}', Created)
    with pytest.raises(DeclarationError, match=f"signal 'same_{unique}' is already declared"):
        Signal(f'same_{unique}', Other)
    with pytest.raises(DeclarationError):
        Signal(f'same_{unique}', Created, returns=int)
    Queue(name=f'legacy_{unique}')
    Queue(name=f'legacy_{unique}')
    with pytest.raises(DeclarationError, match='already declared'):
        Queue(name=f'legacy_{unique}', exchange='x')


@pytest.mark.parametrize('name', ['', 'has space', 'a:b', 'a#b', 'ümlaut'])
def test_names_that_would_break_channels_are_refused(name: str) -> None:
    with pytest.raises(DeclarationError, match='name'):
        Signal(name, Created)


CONTROL_TAILS = ['\n', '\r\n', '\t', '\x00', '\x1b[31m', ' ']


@pytest.mark.parametrize('tail', CONTROL_TAILS)
def test_a_name_with_a_trailing_control_character_is_refused_everywhere(unique: str, tail: str) -> None:
    """`re.match` with `$` took 'mailer\\n' (a key 'mailer\\n:dead' on Redis): the whole name must fit."""
    name = f'ctl_{unique}{tail}'
    with pytest.raises(DeclarationError, match=r"signal name .* must be non-empty letters"):
        Signal(name, Created)
    with pytest.raises(DeclarationError, match=r"queue name .* must be non-empty letters"):
        Queue(name, Created)
    with pytest.raises(DeclarationError, match=r"exchange name .* must be non-empty letters"):
        Exchange(name, 'topic')
    with pytest.raises(DeclarationError, match=r"exchange name .* must be non-empty letters"):
        Queue(f'ctlq_{unique}', Created, exchange=name)
    with pytest.raises(DeclarationError, match='name'):
        configure({'signals': [{'name': name, 'providing_args': []}]})
    with pytest.raises(DeclarationError, match='name'):
        configure({'queues': [{'name': name}]})
    assert name not in Signal.get_all() and name not in Queue.get_all() and name not in Exchange.get_all()


def test_a_bad_queue_name_declares_no_exchange_either(unique: str) -> None:
    with pytest.raises(DeclarationError, match='queue name'):
        Queue(f'q_{unique}\n', Created, exchange=f'ex_{unique}', topics=['a.*'])
    assert f'ex_{unique}' not in Exchange.get_all()


def test_a_routing_key_with_a_trailing_newline_matches_no_topic(unique: str) -> None:
    queue = Queue(f'nl_{unique}', Created, exchange=f'nl_{unique}', topics=['*.android', 'a.b'])
    assert queue.routes(f'nl_{unique}', '1.android') and queue.routes(f'nl_{unique}', 'a.b')
    assert not queue.routes(f'nl_{unique}', '1.android\n')
    assert not queue.routes(f'nl_{unique}', 'a.b\n')


def test_topics_need_an_exchange(unique: str) -> None:
    with pytest.raises(DeclarationError, match='topics need an exchange'):
        Queue(f'q_{unique}', Created, topics=['a.*'])


@pytest.mark.parametrize(('topic', 'key', 'matches'), [
    ('*.android', '1.android', True), ('*.android', 'android', False), ('*.android', '1.2.android', False),
    ('#', '', True), ('#', 'a.b.c', True), ('a.#', 'a', True), ('a.#', 'a.b.c', True), ('a.#', 'b.a', False),
    ('#.z', 'z', True), ('#.z', 'x.y.z', True), ('a.*.c', 'a.b.c', True), ('a.#.c', 'a.c', True),
    ('a.#.c', 'a.x.y.c', True), ('a.b', 'a.b', True), ('a.b', 'a.bb', False),
])
def test_topic_globs_follow_amqp(unique: str, topic: str, key: str, matches: bool) -> None:
    queue = Queue(f'topic_{unique}', Created, exchange='ex', topics=[topic])
    assert queue.routes('ex', key) is matches
    assert not queue.routes('other', key)


def test_legacy_providing_args_list_requires_those_keys(unique: str) -> None:
    signal = Signal(name=f'list_{unique}', providing_args=['user_id', 'email'])
    assert signal.providing_args == ['user_id', 'email']
    assert signal.codec.encode({'user_id': 1, 'email': 'e', 'extra': True})
    with pytest.raises(InvalidPayload, match='missing required field `email`'):
        signal.codec.encode({'user_id': 1})


def test_legacy_providing_args_types_are_enforced(unique: str) -> None:
    signal = Signal(name=f'types_{unique}', providing_args={'user_id': 'integer', 'note': ['string', 'null'],
                                                            'score': 'number'})
    assert signal.codec.decode(b'{"user_id": 1, "note": null, "score": 1}') == {'user_id': 1, 'note': None,
                                                                                'score': 1}
    with pytest.raises(InvalidPayload, match=r'\$.user_id'):
        signal.codec.decode(b'{"user_id": "1", "note": "n", "score": 2.5}')
    with pytest.raises(InvalidPayload, match='missing required field `score`'):
        signal.codec.encode({'user_id': 1, 'note': None})
    with pytest.raises(DeclarationError, match="unknown JSON type 'integr'"):
        Signal(name=f'types_bad_{unique}', providing_args={'user_id': 'integr'})


def test_payload_given_as_json_schema_is_enforced(unique: str) -> None:
    schema = {'type': 'object', 'required': ['user_id', 'tags'], 'properties': {
        'user_id': {'type': 'integer', 'minimum': 1},
        'tags': {'type': 'array', 'items': {'type': 'string', 'maxLength': 3}},
        'kind': {'enum': ['a', 'b']},
        'address': {'type': 'object', 'required': ['city'], 'properties': {'city': {'type': 'string'}}},
        'score': {'type': ['number', 'null']},
        'any': {},
    }}
    queue = Queue(name=f'schema_{unique}', schema=schema)
    good = {'user_id': 1, 'tags': ['x'], 'kind': 'a', 'address': {'city': 'Oslo'}, 'score': None, 'any': [1]}
    assert queue.codec.decode(json.dumps(good)) == good
    for bad, where in [({'user_id': 0, 'tags': []}, 'user_id'), ({'user_id': 1, 'tags': ['long']}, 'tags'),
                       ({'user_id': 1, 'tags': [], 'kind': 'c'}, 'kind'),
                       ({'user_id': 1, 'tags': [], 'address': {}}, 'city'),
                       ({'user_id': 1}, 'tags')]:
        with pytest.raises(InvalidPayload, match=where):
            queue.codec.encode(bad)
    assert queue.codec.schema['properties'] == schema['properties']
    with pytest.raises(DeclarationError, match="unsupported JSON Schema type 'date'"):
        Queue(name=f'schema_bad_{unique}', schema={'type': 'object', 'properties': {'d': {'type': 'date'}}})


@dataclasses.dataclass
class DataModel:
    user_id: int


class DictModel(TypedDict):
    user_id: int


class PydanticModel(pydantic.BaseModel):
    user_id: int


@pytest.mark.parametrize('model', [Created, DataModel, DictModel, PydanticModel])
def test_every_model_kind_validates_both_ways(unique: str, model: type) -> None:
    signal: Signal[Any, Any] = Signal(f'kind_{unique}', model)
    instance = signal.codec.decode(b'{"user_id": 5}')
    assert signal.codec.to_kwargs(instance) == {'user_id': 5}
    assert json.loads(signal.codec.encode(instance)) == {'user_id': 5}
    assert signal.codec.from_kwargs({'user_id': 6}) == signal.codec.decode(b'{"user_id": 6}')
    with pytest.raises(InvalidPayload, match=f"signal 'kind_{unique}'.*user_id"):
        signal.codec.decode(b'{"user_id": "five"}')
    with pytest.raises(InvalidPayload, match='user_id'):
        signal.codec.from_kwargs({'user_id': 'six'})
    assert 'user_id' in json.dumps(signal.codec.schema)


def test_a_model_that_is_not_a_type_is_refused(unique: str) -> None:
    with pytest.raises(DeclarationError, match='payload model'):
        Signal(f'bad_model_{unique}', 'not a type')  # type: ignore[call-overload]


@pytest.fixture
def declarations_file(tmp_path: Path, unique: str) -> Path:
    path = tmp_path / 'stuff.json'
    path.write_text(json.dumps({
        'signals': [{'name': f'file_started_{unique}', 'providing_args': []},
                    {'name': f'file_created_{unique}', 'providing_args': ['user_id']}],
        'queues': [{'name': f'file_mailer_{unique}'},
                   {'name': f'file_push_{unique}', 'exchange': 'ex', 'topics': ['*.push']}],
    }))
    return path


def test_load_stuff_from_a_file(declarations_file: Path, unique: str) -> None:
    signals, queues = load_stuff(f'file://{declarations_file}')
    created = getattr(signals, f'file_created_{unique}')
    assert created is Signal.get(f'file_created_{unique}') and created.providing_args == ['user_id']
    assert getattr(queues, f'file_push_{unique}').topics == ('*.push',)
    assert getattr(load_signals(f'file://{declarations_file}'), f'file_started_{unique}').name.endswith(unique)
    assert Queue.get(f'file_mailer_{unique}') in list(load_queues(f'file://{declarations_file}'))
    with pytest.raises(AttributeError, match="'nothing' is not declared"):
        _ = signals.nothing


@pytest.fixture
def served(declarations_file: Path) -> Iterator[str]:
    body = declarations_file.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}/stuff.json'
    server.shutdown()


def test_load_stuff_over_http(served: str, unique: str) -> None:
    signals, _ = load_stuff(served)
    assert getattr(signals, f'file_created_{unique}').providing_args == ['user_id']


def test_configure_takes_documents_and_urls(unique: str, declarations_file: Path) -> None:
    signals, queues = configure({'signals': [{'name': f'conf_{unique}', 'providing_args': {'n': 'integer'}}]},
                                f'file://{declarations_file}')
    assert getattr(signals, f'conf_{unique}').providing_args == ['n']
    assert getattr(queues, f'file_mailer_{unique}').name == f'file_mailer_{unique}'


@pytest.mark.parametrize(('document', 'message'), [
    ({'signals': [{'providing_args': []}]}, 'signal declaration without a name'),
    ({'queues': [{'exchange': 'x'}]}, 'queue declaration without a name'),
    (['not', 'an', 'object'], 'JSON object'),
])
def test_bad_declaration_documents(document: object, message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        configure(document)  # type: ignore[arg-type]


def test_unknown_source_scheme() -> None:
    with pytest.raises(DeclarationError, match='file://, http:// or https://'):
        load_stuff('ftp://example/stuff.json')


class Aliased(pydantic.BaseModel):
    user_id: int = pydantic.Field(alias='userId')


def test_pydantic_aliases_round_trip_on_the_wire(unique: str) -> None:
    queue = Queue(f'aliased_{unique}', Aliased)
    data = queue.codec.encode(Aliased(userId=3))
    assert json.loads(data) == {'userId': 3}
    assert queue.codec.decode(data) == Aliased(userId=3)
