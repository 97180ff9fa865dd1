"""Payload JSON Schemas, ``info()`` and the ``microagent schema`` command, and the drift check of the
checked-in ``schemas/json/`` files."""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import msgspec
import pydantic
import pytest

from microagent import MicroAgent, Signal, receiver
from microagent.backends.memory import MemoryBroker, MemorySignalBus
from microagent.cli.schema import schema_command
from microagent.contract.asyncapi import asyncapi
from microagent.contract.info import agent_info
from microagent.payload import JSON_SCHEMA_DIALECT
from microagent.testing.mocks import BrokerMock, BusMock
from schemas import export, user_created
from tests.schema_agents import Category, Order, PushAgent, ReferenceAgent

REFERENCE = 'tests.schema_agents:ReferenceAgent'


def resolve(document: Any, pointer: str) -> Any:
    """The node a local ``$ref`` (``#/a/b``) points to in ``document``."""
    assert pointer.startswith('#/'), pointer
    node = document
    for part in pointer[2:].split('/'):
        node = node[part.replace('~1', '/').replace('~0', '~')]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node['$ref']] if isinstance(node.get('$ref'), str) else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


# payload schemas and providing_args

def test_typed_payload_schema_is_a_standalone_draft_2020_12_document() -> None:
    schema = user_created.codec.schema
    assert schema['$schema'] == JSON_SCHEMA_DIALECT == 'https://json-schema.org/draft/2020-12/schema'
    assert '$ref' not in schema and '$defs' not in schema  # the model itself is at the top
    assert schema['type'] == 'object' and schema['title'] == 'UserCreated'
    assert schema['required'] == ['email', 'user_id']
    assert list(schema['properties']) == ['user_id', 'email', 'name']


def test_nested_models_stay_in_defs_and_every_ref_resolves(unique: str) -> None:
    schema = Signal(f'nested_{unique}', Order).codec.schema
    assert schema['properties']['shipTo'] == {'$ref': '#/$defs/Address'}
    assert resolve(schema, '#/$defs/Address')['required'] == ['city']
    recursive = Signal(f'recursive_{unique}', Category).codec.schema
    assert recursive['$ref'] == '#/$defs/Category'  # a self-referencing root cannot be inlined
    for document in (schema, recursive):
        for ref in refs(document):
            assert isinstance(resolve(document, ref), dict)


def test_providing_args_of_typed_models_are_their_required_wire_fields(unique: str) -> None:
    class Renamed(msgspec.Struct, rename='camel'):
        user_id: int
        full_name: str = ''

    @dataclass
    class Plain:
        user_id: int
        note: str = ''

    class Total(TypedDict):
        user_id: int
        note: NotRequired[str]

    class Aliased(pydantic.BaseModel):
        user_id: int = pydantic.Field(alias='userId')
        note: str = ''

    assert Signal(f'renamed_{unique}', Renamed).providing_args == ['userId']
    assert Signal(f'plain_{unique}', Plain).providing_args == ['user_id']
    assert Signal(f'total_{unique}', Total).providing_args == ['user_id']
    assert Signal(f'aliased_{unique}', Aliased).providing_args == ['userId']
    assert Signal(f'answer_{unique}', int).providing_args == []
    assert Signal(name=f'legacy_{unique}', providing_args=['b', 'a']).providing_args == ['b', 'a']


def test_legacy_declarations_are_object_schemas_with_their_required_keys(unique: str) -> None:
    keys = Signal(name=f'keys_{unique}', providing_args=['user_id', 'email']).codec.schema
    assert keys == {'$schema': JSON_SCHEMA_DIALECT, 'type': 'object',
                    'properties': {'user_id': {}, 'email': {}}, 'required': ['email', 'user_id']}
    typed = Signal(name=f'types_{unique}', providing_args={'user_id': 'integer', 'note': ['string', 'null']})
    assert typed.codec.schema['properties'] == {'user_id': {'type': 'integer'}, 'note': {'type': ['string', 'null']}}
    given = Signal(name=f'given_{unique}', schema={'type': 'object', 'required': ['x'],
                                                    'properties': {'x': {'type': 'integer'}}})
    assert given.codec.schema['$schema'] == JSON_SCHEMA_DIALECT and given.codec.schema['required'] == ['x']


# info()

def test_info_from_the_class_has_the_1x_keys_and_every_handler() -> None:
    info = agent_info(ReferenceAgent)
    assert list(info)[:7] == ['name', 'bus', 'broker', 'periodic', 'cron', 'receivers', 'consumers']
    assert info['name'] == 'ReferenceAgent' and info['bus'] is None and info['broker'] is None
    assert info['periodic'] == [{'name': 'tick', 'period': 5.0, 'timeout': 2.0, 'start_after': 1.0}]
    assert info['cron'] == [{'name': 'hourly', 'spec': '0 * * * *', 'timeout': 10.0, 'tz': None}]
    receivers = {(r['handler'], r['signal']): r['timeout'] for r in info['receivers']}
    assert receivers[('ReferenceAgent.catalogue', 'schema_ref_order_placed')] == 5.0
    assert receivers[('ReferenceAgent.catalogue', 'schema_ref_category_added')] == 5.0
    assert receivers[('ReferenceAgent.welcome', 'user_created')] == 60.0
    consumers = {c['queue']: c for c in info['consumers']}
    assert consumers['mailer'] == {'handler': 'ReferenceAgent.send_mail', 'queue': 'mailer', 'timeout': 30.0,
                                   'options': {'concurrency': 4, 'max_retries': 5},
                                   'concurrency': 4, 'max_retries': 5}
    notes = consumers['schema_ref_notes']
    assert (notes['options'], notes['concurrency'], notes['max_retries']) == ({'autoack': True}, 32, 3)
    job = consumers['schema_ref_jobs']
    assert (job['dto_class'], job['dto_name']) == ('tests.schema_agents.LegacyDTO', 'obj')
    assert job['dto_schema']['required'] == ['user_id']


def test_info_lists_the_payload_and_answer_schema_of_every_channel_used() -> None:
    info = agent_info(ReferenceAgent)
    assert set(info['signals']) == {r['signal'] for r in info['receivers']}
    assert set(info['queues']) == {c['queue'] for c in info['consumers']}
    price = info['signals']['schema_ref_price_asked']
    assert price['payload']['title'] == 'Order'
    assert price['answer']['title'] == 'Invoice' and price['answer']['required'] == ['invoice_id']
    assert info['signals']['comments_count']['answer'] == {'$schema': JSON_SCHEMA_DIALECT, 'type': 'integer'}
    assert 'answer' not in info['signals']['user_created']
    assert info['signals']['schema_ref_started']['providing_args'] == ['name', 'user_id']
    assert info['queues']['mailer']['payload']['properties']['to']['pattern'] == r'^[^@\s]+@[^@\s]+$'
    assert info['queues']['schema_ref_notes']['exchange'] == 'schema_ref_events'
    for entry in [*info['signals'].values(), *info['queues'].values()]:
        assert entry['payload']['$schema'] == JSON_SCHEMA_DIALECT


def test_info_is_json_and_stable_and_a_copy() -> None:
    text = json.dumps(agent_info(ReferenceAgent), sort_keys=False)
    assert json.dumps(agent_info(ReferenceAgent), sort_keys=False) == text
    info = agent_info(ReferenceAgent)
    info['signals']['user_created']['payload']['required'].append('oops')
    assert user_created.codec.schema['required'] == ['email', 'user_id']


def test_info_of_an_instance_names_its_bus_and_broker_without_password() -> None:
    agent = ReferenceAgent(bus=MemorySignalBus('memory://admin:s3cret@bus/1'),
                           broker=MemoryBroker('memory://admin:s3cret@broker/1'))
    info = agent.info()
    assert info['bus'] == 'MemorySignalBus(memory://admin:***@bus/1)'
    assert info['broker'] == 'MemoryBroker(memory://admin:***@broker/1)'
    assert 's3cret' not in json.dumps(info)
    assert {**info, 'bus': None, 'broker': None} == agent_info(ReferenceAgent)
    assert PushAgent(broker=BrokerMock(), bus=BusMock()).info()['name'] == 'PushAgent'


def test_info_rejects_what_is_not_an_agent() -> None:
    with pytest.raises(TypeError, match='neither a MicroAgent class nor an instance'):
        agent_info(int)  # type: ignore[arg-type]


# the command

def test_schema_command_prints_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert schema_command([REFERENCE], asyncapi=False, output=None) == 0
    assert json.loads(capsys.readouterr().out) == agent_info(ReferenceAgent)
    assert schema_command([REFERENCE, 'tests.schema_agents:PushAgent'], asyncapi=False, output=None) == 0
    assert [info['name'] for info in json.loads(capsys.readouterr().out)] == ['ReferenceAgent', 'PushAgent']


def test_schema_command_writes_asyncapi(tmp_path: Path) -> None:
    target = tmp_path / 'asyncapi.json'
    assert schema_command([REFERENCE, 'tests.schema_agents:PushAgent'], asyncapi=True, output=str(target)) == 0
    document = json.loads(target.read_text())
    assert document == asyncapi(ReferenceAgent, PushAgent, title='ReferenceAgent, PushAgent')


@pytest.mark.parametrize(('target', 'error'), [
    ('tests.helpers', 'neither a settings module (AGENT, BUS, BROKER) nor a module of'),
    ('tests.no_such_module:Agent', "cannot import 'tests.no_such_module'"),
    ('tests.schema_agents:Missing', "has no attribute 'Missing'"),
    ('tests.schema_agents:Order', 'neither an agent class nor a Signal, Queue or Exchange'),
])
def test_schema_command_names_a_bad_target(target: str, error: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert schema_command([target], asyncapi=False, output=None) == 2
    captured = capsys.readouterr()
    assert captured.out == ''
    assert target in captured.err and error in captured.err


def test_schema_command_reports_an_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schema_command([REFERENCE], asyncapi=False, output=str(tmp_path / 'missing' / 'x.json')) == 1
    assert 'cannot write' in capsys.readouterr().err


def test_a_class_defined_anywhere_works_without_bus(unique: str) -> None:
    signal = Signal(f'local_{unique}', Order)

    class Local(MicroAgent):
        @receiver(signal)
        async def got(self, order: Order) -> None: ...

    info = agent_info(Local)
    assert info['receivers'] == [{'handler': 'Local.got', 'signal': signal.name, 'timeout': 60.0}]
    assert info['signals'][signal.name]['providing_args'] == ['lines', 'orderId', 'shipTo']


# schemas/json

def test_checked_in_schemas_json_matches_the_code() -> None:
    """The drift check: a compatible change of the code passes with a reminder, a breaking one fails."""
    ok, text = export.check()
    assert ok, text
    if text:
        warnings.warn(text, stacklevel=1)


def test_export_writes_every_declaration_and_the_demo_asyncapi(tmp_path: Path) -> None:
    assert export.differences(tmp_path) == sorted(export.exported())
    export.write(tmp_path)
    assert export.differences(tmp_path) == []
    names = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob('*.json'))
    assert names == ['asyncapi.json', 'queues/mailer.json', 'queues/push_android.json', 'queues/push_ios.json',
                     'signals/comment_posted.json', 'signals/comments_count.answer.json',
                     'signals/comments_count.json', 'signals/user_created.json', 'signals/user_deleted.json']
    demo = json.loads((tmp_path / 'asyncapi.json').read_text())
    assert set(demo['operations']) == {'CommentAgent.count', 'MailerAgent.send_mail', 'MailerAgent.welcome',
                                       'PushAgent.android', 'PushAgent.ios', 'UserAgent.sends.user_created',
                                       'UserAgent.sends.comments_count', 'MailerAgent.sends.mailer',
                                       'MailerAgent.sends.push'}
    (tmp_path / 'queues' / 'mailer.json').write_text('{}\n')
    (tmp_path / 'signals' / 'gone.json').write_text('{}\n')
    assert export.differences(tmp_path) == ['queues/mailer.json', 'signals/gone.json']
    assert export.write(tmp_path) == ['queues/mailer.json', 'signals/gone.json']
    assert not (tmp_path / 'signals' / 'gone.json').exists() and export.differences(tmp_path) == []


def test_schema_command_imports_from_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], unique: str) -> None:
    module = f'service_{unique}'
    (tmp_path / f'{module}.py').write_text('from tests.schema_agents import PushAgent as Agent\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', [p for p in sys.path if p not in ('', str(tmp_path))])
    monkeypatch.delitem(sys.modules, module, raising=False)
    assert schema_command([f'{module}:Agent'], asyncapi=False, output=None) == 0
    assert json.loads(capsys.readouterr().out)['name'] == 'PushAgent'
    monkeypatch.delitem(sys.modules, module)
