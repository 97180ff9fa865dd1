"""The AsyncAPI 3.0 export: its shape, and acceptance by the official parser (``@asyncapi/parser``,
run by ``tests/asyncapi/validate.mjs``; ``npm install`` runs there first when ``node_modules`` is missing).

Without node or npm the parser tests skip locally and fail when MICROAGENT_REQUIRE_SERVICES is set (CI).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from microagent.cli.schema import dumps
from microagent.contract.asyncapi import asyncapi
from schemas.export import JSON_DIR
from tests.contract.test_schema import refs, resolve
from tests.schema_agents import PushAgent, ReferenceAgent

VALIDATOR = Path(__file__).resolve().parents[1] / 'asyncapi'
NPM_INSTALL = ['npm', 'install', '--no-audit', '--no-fund', '--ignore-scripts']

Validate = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope='module')
def document() -> dict[str, Any]:
    return asyncapi(ReferenceAgent, PushAgent, title='reference', version='2.1.0')


@pytest.fixture(scope='module')
def validate(tmp_path_factory: pytest.TempPathFactory) -> Validate:
    """Validate documents with the official parser, installing it first if needed; one result per document."""
    node, npm = shutil.which('node'), shutil.which('npm')
    if node is None or npm is None:
        message = 'node and npm are needed to run the AsyncAPI parser'
        if os.environ.get('MICROAGENT_REQUIRE_SERVICES'):
            pytest.fail(message + ' and MICROAGENT_REQUIRE_SERVICES is set')
        pytest.skip(message)
    if not (VALIDATOR / 'node_modules' / '@asyncapi' / 'parser').is_dir():
        installed = subprocess.run([npm, *NPM_INSTALL[1:]], cwd=VALIDATOR, capture_output=True, text=True,
                                   timeout=600, check=False)
        assert installed.returncode == 0, f'npm install failed in {VALIDATOR}:\n{installed.stderr}'
    folder = tmp_path_factory.mktemp('asyncapi')

    def run(*documents: dict[str, Any]) -> list[dict[str, Any]]:
        paths = []
        for number, doc in enumerate(documents):
            path = folder / f'document{number}.json'
            path.write_text(dumps(doc))
            paths.append(str(path))
        done = subprocess.run([node, 'validate.mjs', *paths], cwd=VALIDATOR, capture_output=True, text=True,
                              timeout=120, check=False)
        results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{')]
        assert len(results) == len(documents), f'validator output:\n{done.stdout}\n{done.stderr}'
        assert done.returncode == (0 if all(r['valid'] for r in results) else 1), done.stderr
        return results

    return run


def broken_documents(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Valid-looking documents the parser must reject, each broken in one way."""
    no_version = copy.deepcopy(document)
    del no_version['info']['version']
    dangling = copy.deepcopy(document)
    dangling['operations']['ReferenceAgent.welcome']['channel'] = {'$ref': '#/channels/signal.nowhere'}
    bad_schema = copy.deepcopy(document)
    bad_schema['components']['schemas']['Invoice']['properties']['total']['type'] = 'decimal'
    bad_action = copy.deepcopy(document)
    bad_action['operations']['ReferenceAgent.bill']['action'] = 'consume'
    return {'no info.version': no_version, 'dangling $ref': dangling, 'unknown schema type': bad_schema,
            'unknown action': bad_action}


def keys(node: Any) -> set[str]:
    """Every key of every object in a JSON document."""
    if isinstance(node, dict):
        return set(node).union(*(keys(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(keys(value) for value in node))
    return set()


# what the official parser says

def test_parser_accepts_the_export_and_rejects_broken_documents(document: dict[str, Any],
                                                                validate: Validate) -> None:
    broken = broken_documents(document)
    results = validate(document, *broken.values())
    assert results[0]['valid'], results[0]['errors']
    assert results[0]['errors'] == [] and results[0]['warnings'] == []
    for (why, _), result in zip(broken.items(), results[1:], strict=True):
        assert not result['valid'], f'the parser accepted a document with {why}'
        assert result['errors'], why


def test_parser_accepts_the_checked_in_demo_document(validate: Validate) -> None:
    demo = json.loads((JSON_DIR / 'asyncapi.json').read_text())
    [result] = validate(demo)
    assert result['valid'] and result['warnings'] == [], result


# the document's shape

def test_channels_for_every_signal_queue_and_exchange(document: dict[str, Any]) -> None:
    assert document['asyncapi'] == '3.0.0'
    assert document['info']['title'] == 'reference' and document['info']['version'] == '2.1.0'
    channels = document['channels']
    assert sorted(channels) == sorted([
        'signal.user_created', 'signal.schema_ref_order_placed', 'signal.schema_ref_category_added',
        'signal.schema_ref_price_asked', 'signal.comments_count', 'signal.schema_ref_started',
        'signal.schema_ref_typed', 'signal.response', 'queue.mailer', 'queue.schema_ref_invoices',
        'queue.schema_ref_notes', 'queue.schema_ref_jobs', 'queue.push_android', 'queue.push_ios',
        'exchange.push', 'exchange.schema_ref_events'])
    created = channels['signal.user_created']
    assert created['address'] == '{prefix}:user_created:{sender}'
    assert created['parameters']['prefix']['default'] == 'PUBSUB'
    assert channels['queue.mailer']['address'] == 'mailer'
    push = channels['exchange.push']
    assert push['address'] == 'push' and list(push['messages']) == ['Push']
    assert push['x-microagent']['routes'] == {'push_android': ['*.android'], 'push_ios': ['*.ios']}
    assert channels['exchange.schema_ref_events']['x-microagent']['routes'] == {'schema_ref_notes': ['#']}


def test_an_operation_per_receiver_and_consumer(document: dict[str, Any]) -> None:
    operations = document['operations']
    assert sorted(operations) == sorted([
        'ReferenceAgent.welcome', 'ReferenceAgent.catalogue.schema_ref_order_placed',
        'ReferenceAgent.catalogue.schema_ref_category_added', 'ReferenceAgent.price', 'ReferenceAgent.count',
        'ReferenceAgent.started', 'ReferenceAgent.typed', 'ReferenceAgent.send_mail', 'ReferenceAgent.bill',
        'ReferenceAgent.note', 'ReferenceAgent.job', 'PushAgent.android', 'PushAgent.ios', 'PushAgent.count'])
    assert all(op['action'] == 'receive' for op in operations.values())
    mail = operations['ReferenceAgent.send_mail']
    assert mail['channel'] == {'$ref': '#/channels/queue.mailer'}
    assert mail['x-microagent'] == {'handler': 'ReferenceAgent.send_mail', 'timeout': 30.0, 'concurrency': 4,
                                    'max_retries': 5, 'options': {'concurrency': 4, 'max_retries': 5}}
    assert operations['ReferenceAgent.catalogue.schema_ref_category_added']['x-microagent']['timeout'] == 5.0


def test_rpc_receivers_reply_with_the_answer_schema(document: dict[str, Any]) -> None:
    price = document['operations']['ReferenceAgent.price']
    answer = resolve(document, price['reply']['messages'][0]['$ref'])
    answer = resolve(document, answer['$ref'])
    assert price['reply']['channel'] == {'$ref': '#/channels/signal.response'}
    assert answer['payload']['additionalProperties'] == {'$ref': '#/components/schemas/Invoice'}
    count = resolve(document, document['operations']['PushAgent.count']['reply']['messages'][0]['$ref'])
    assert resolve(document, count['$ref'])['payload']['additionalProperties'] == {'type': 'integer'}
    assert 'reply' not in document['operations']['ReferenceAgent.welcome']


def test_payload_schemas_are_components_with_defs_hoisted(document: dict[str, Any]) -> None:
    schemas = document['components']['schemas']
    assert schemas['Order']['properties']['shipTo'] == {'$ref': '#/components/schemas/Address'}
    assert schemas['Order']['properties']['lines']['items']['items'] == [{'type': 'string'}, {'type': 'integer'}]
    assert schemas['Category']['properties']['children']['items'] == {'$ref': '#/components/schemas/Category'}
    assert schemas['schema_ref_started_payload']['required'] == ['name', 'user_id']
    assert not {'$defs', '$schema', 'prefixItems'} & keys(document)  # draft 2020-12 only
    for ref in refs(document):
        assert isinstance(resolve(document, ref), dict), ref
    message = resolve(document, document['channels']['signal.user_created']['messages']['UserCreated']['$ref'])
    assert message['contentType'] == 'application/json'
    assert message['payload'] == {'$ref': '#/components/schemas/UserCreated'}


def test_same_input_same_output_classes_or_instances() -> None:
    from microagent.testing.mocks import BrokerMock, BusMock

    first = dumps(asyncapi(ReferenceAgent, PushAgent))
    assert dumps(asyncapi(ReferenceAgent, PushAgent, ReferenceAgent)) == first
    agent = ReferenceAgent(bus=BusMock(), broker=BrokerMock())
    with_servers = asyncapi(agent, PushAgent)
    with_servers.pop('servers', None)  # an instance adds its bus and broker as servers, nothing else
    assert dumps(with_servers) == first


def test_servers_come_from_dsns_with_the_password_hidden() -> None:
    doc = asyncapi(PushAgent, servers={'main': 'redis://user:s3cret@cache.example:6380/2'})
    assert doc['servers'] == {'main': {'host': 'user:***@cache.example:6380', 'protocol': 'redis',
                                       'pathname': '/2', 'description': 'DSN redis://user:***@cache.example:6380/2'}}
    assert 's3cret' not in dumps(doc)


def test_declared_sends_are_send_operations(validate: Validate) -> None:
    from examples.mailer import MailerAgent
    from examples.users import UserAgent

    doc = asyncapi(UserAgent, MailerAgent, servers={'bus': 'redis://:pw@localhost:6379/0'})
    sends = {key: op for key, op in doc['operations'].items() if op['action'] == 'send'}
    assert set(sends) == {'UserAgent.sends.user_created', 'UserAgent.sends.comments_count',
                          'MailerAgent.sends.mailer', 'MailerAgent.sends.push'}
    assert 'reply' in sends['UserAgent.sends.comments_count']
    assert sends['MailerAgent.sends.push']['channel'] == {'$ref': '#/channels/exchange.push'}
    assert len(sends['MailerAgent.sends.push']['messages']) == 1  # both bound queues carry Push
    amqp = asyncapi(UserAgent, MailerAgent, servers={'mq': 'amqp://guest:secret@localhost:5672/'})
    assert amqp['channels']['queue.mailer']['bindings']['amqp']['queue']['name'] == 'mailer'
    assert amqp['channels']['exchange.push']['bindings']['amqp']['exchange']['type'] == 'topic'
    assert 'bindings' not in doc['channels']['queue.mailer']  # a redis fleet gets no AMQP bindings
    assert [result['valid'] for result in validate(doc, amqp)] == [True, True]
    with pytest.raises(ValueError, match='at least one agent'):
        asyncapi()
