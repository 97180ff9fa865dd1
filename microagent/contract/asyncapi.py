"""An AsyncAPI 3.0 document of several agents: a channel per signal, queue and exchange they use,
a ``receive`` operation per receiver and consumer (with the RPC reply), a ``send`` operation per
declared send, the payload schemas under ``components``, and the servers with credentials hidden.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from microagent.backends import UnknownScheme, backend_for
from microagent.contract.info import (
    AgentLike,
    Described,
    JsonDict,
    agent_class,
    consumer_info,
    grouping_info,
    handler_specs,
)
from microagent.dsn import hide_password
from microagent.errors import InvalidArgument
from microagent.exchange import Exchange
from microagent.handlers import ConsumerSpec, ReceiverSpec
from microagent.queue import Queue
from microagent.sends import Sendable
from microagent.signal import Signal

ASYNCAPI_VERSION = '3.0.0'
DEFAULT_PREFIX = 'PUBSUB'
RESPONSE_CHANNEL = 'signal.response'


_SCHEMA_MAPS = ('properties', 'patternProperties', 'dependentSchemas', 'definitions')


_SCHEMA_LISTS = ('allOf', 'anyOf', 'oneOf')


_SCHEMA_ONE = ('additionalProperties', 'not', 'if', 'then', 'else', 'contains', 'propertyNames',
               'unevaluatedItems', 'unevaluatedProperties', 'additionalItems')


_COMPONENT_KEY = re.compile(r'[^A-Za-z0-9._-]')


def _to_asyncapi(node: Any, refs: dict[str, str]) -> Any:
    """Rewrite one schema: ``#/$defs/X`` refs to components, ``prefixItems`` to draft 07 ``items``,
    OpenAPI-style ``discriminator`` objects to the property name AsyncAPI expects."""
    if not isinstance(node, dict):
        return node
    out: JsonDict = {}
    for key, value in node.items():
        if key in ('$schema', '$defs'):
            continue
        if key == '$ref' and isinstance(value, str) and value.startswith('#/$defs/'):
            out[key] = refs[value]
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _to_asyncapi(sub, refs) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_to_asyncapi(sub, refs) for sub in value]
        elif key in _SCHEMA_ONE or (key == 'items' and 'prefixItems' not in node):
            out[key] = _to_asyncapi(value, refs)
        elif key == 'prefixItems':
            out['items'] = [_to_asyncapi(sub, refs) for sub in value]
            if 'items' in node:
                out['additionalItems'] = _to_asyncapi(node['items'], refs)
        elif key == 'items':
            continue  # with prefixItems: became additionalItems
        elif key == 'discriminator' and isinstance(value, dict):
            out[key] = value.get('propertyName')
        else:
            out[key] = value
    return out


class _Components:
    """Named components: a name is reused for the same content, suffixed for a different one."""

    def __init__(self) -> None:
        self.items: dict[str, JsonDict] = {}

    def key_for(self, preferred: str, value: JsonDict) -> str:
        base = _COMPONENT_KEY.sub('_', preferred) or 'Payload'
        key, n = base, 1
        while key in self.items and self.items[key] != value:
            n += 1
            key = f'{base}_{n}'
        return key

    def claim(self, preferred: str, value: JsonDict) -> str:
        key = self.key_for(preferred, value)
        self.items[key] = value
        return key

    def sorted(self) -> dict[str, JsonDict]:
        return {key: self.items[key] for key in sorted(self.items)}


class _AsyncAPI:
    """Builds the document; channels and operations are keyed so output does not depend on order."""

    def __init__(self) -> None:
        self.schemas = _Components()
        self.messages = _Components()
        self.channels: dict[str, JsonDict] = {}
        self.operations = _Components()
        self._message_keys: dict[tuple[str, str], str] = {}

    def schema(self, schema: JsonDict, fallback: str) -> JsonDict:
        """The AsyncAPI form of a standalone payload schema: a ``$ref`` to a component for a named
        model or an object, the schema inline for plain types (an ``int`` answer)."""
        defs: JsonDict = schema.get('$defs', {})
        names = {f'#/$defs/{name}': f'#/components/schemas/{_COMPONENT_KEY.sub("_", name)}' for name in defs}
        keys = {name: self.schemas.key_for(name, _to_asyncapi(defs[name], names)) for name in sorted(defs)}
        refs = {f'#/$defs/{name}': f'#/components/schemas/{key}' for name, key in keys.items()}
        for name, key in keys.items():
            self.schemas.items[key] = _to_asyncapi(defs[name], refs)
        body: JsonDict = _to_asyncapi(schema, refs)
        if '$ref' in body or not ('title' in body or body.get('type') == 'object'):
            return body
        key = self.schemas.claim(str(body.get('title') or fallback), body)
        return {'$ref': f'#/components/schemas/{key}'}

    def message(self, kind: str, name: str, preferred: str, schema: JsonDict) -> str:
        """Register the message carrying ``schema`` (one per model: declarations sharing a model share
        it); its component key."""
        if (kind, name) not in self._message_keys:
            payload = self.schema(schema, preferred)
            body = {'name': preferred, 'title': preferred, 'contentType': 'application/json', 'payload': payload}
            self._message_keys[kind, name] = self.messages.claim(preferred, body)
        return self._message_keys[kind, name]

    def channel(self, channel_id: str, body: JsonDict, message_keys: Iterable[str]) -> None:
        channel = self.channels.setdefault(channel_id, {**body, 'messages': {}})
        for key in message_keys:
            channel['messages'][key] = {'$ref': f'#/components/messages/{key}'}

    def signal(self, signal: Signal[Any, Any]) -> tuple[str, str]:
        """The channel id and message key of a signal (and its answer, for RPC signals)."""
        preferred = _payload_name(signal.model, signal.name)
        key = self.message('signal', signal.name, preferred, signal.codec.schema)
        channel_id = f'signal.{signal.name}'
        self.channel(channel_id, {
            'address': f'{{prefix}}:{signal.name}:{{sender}}',
            'title': signal.name,
            'description': f'Signal `{signal.name}` (pub/sub). 1.x providing_args: '
                           f'{", ".join(sorted(signal.providing_args)) or "none"}.',
            'parameters': {
                'prefix': {'description': 'The bus prefix.', 'default': DEFAULT_PREFIX},
                'sender': {'description': 'The name the sending service gives itself.'},
            },
            'x-microagent': {'kind': 'signal', 'name': signal.name, 'rpc': signal.answer_codec is not None},
        }, [key])
        return channel_id, key

    def answer(self, signal: Signal[Any, Any]) -> str:
        """The message key of an RPC signal's answers on the shared response channel."""
        assert signal.answer_codec is not None
        answers = {
            'type': 'object',
            'description': f'Answers to `{signal.name}`, by answering handler ("Agent.method").',
            'additionalProperties': self.schema(signal.answer_codec.schema, f'{signal.name}_answer'),
        }
        key = self.messages.claim(f'{signal.name}.answer', {
            'name': f'{signal.name}.answer', 'title': f'Answers to {signal.name}',
            'contentType': 'application/json', 'payload': answers,
        })
        self.channel(RESPONSE_CHANNEL, {
            'address': '{prefix}:response:{bus_uid}#{request_id}',
            'title': 'RPC answers',
            'description': 'Answers to RPC signals, published for the bus that asked.',
            'parameters': {
                'prefix': {'description': 'The bus prefix.', 'default': DEFAULT_PREFIX},
                'bus_uid': {'description': 'The unique id of the asking bus.'},
                'request_id': {'description': 'The id of the request.'},
            },
            'x-microagent': {'kind': 'response'},
        }, [key])
        return key

    def queue(self, queue: Queue[Any]) -> tuple[str, str]:
        preferred = _payload_name(queue.model, queue.name)
        key = self.message('queue', queue.name, preferred, queue.codec.schema)
        channel_id = f'queue.{queue.name}'
        extension: JsonDict = {'kind': 'queue', 'name': queue.name}
        description = f'Work queue `{queue.name}`: each message is handled once.'
        if queue.exchange:
            extension.update(exchange=queue.exchange, topics=list(queue.topics))
            description += (f' Bound to exchange `{queue.exchange}`'
                            + (f' for routing keys {", ".join(queue.topics)}.' if queue.topics else '.'))
            self.channel(f'exchange.{queue.exchange}', {
                'address': queue.exchange,
                'title': queue.exchange,
                'description': f'Exchange `{queue.exchange}`: routes each message to its bound queues.',
                'x-microagent': {'kind': 'exchange', 'name': queue.exchange, 'routes': {}},
            }, [key])
            routes = self.channels[f'exchange.{queue.exchange}']['x-microagent']['routes']
            routes[queue.name] = list(queue.topics) or ['#']
        self.channel(channel_id, {'address': queue.name, 'title': queue.name, 'description': description,
                                  'x-microagent': extension}, [key])
        return channel_id, key

    def operation(self, name: str, body: JsonDict) -> None:
        self.operations.claim(name, body)

    def document(self, title: str, version: str, description: str) -> JsonDict:
        channels = {}
        for channel_id in sorted(self.channels):
            channel = self.channels[channel_id]
            channel['messages'] = dict(sorted(channel['messages'].items()))
            ext = channel['x-microagent']
            if 'routes' in ext:
                ext['routes'] = dict(sorted(ext['routes'].items()))
            channels[channel_id] = channel
        return {
            'asyncapi': ASYNCAPI_VERSION,
            'info': {'title': title, 'version': version, 'description': description},
            'defaultContentType': 'application/json',
            'channels': channels,
            'operations': self.operations.sorted(),
            'components': {'messages': self.messages.sorted(), 'schemas': self.schemas.sorted()},
        }


def _payload_name(model: Any, declaration: str) -> str:
    return str(getattr(model, '__name__', '')) or f'{declaration}_payload'


def _operation(action: str, channel_id: str, key: str, summary: str, extension: JsonDict) -> JsonDict:
    return {'action': action, 'channel': {'$ref': f'#/channels/{channel_id}'},
            'messages': [{'$ref': f'#/channels/{channel_id}/messages/{key}'}],
            'summary': summary, 'x-microagent': extension}


def asyncapi(*agents: AgentLike, title: str = 'microagent', version: str = '1.0.0',
             description: str | None = None, servers: Mapping[str, str] | None = None,
             declarations: Iterable[Sendable] = ()) -> JsonDict:
    """An AsyncAPI 3.0 document of ``agents`` (classes or instances): a channel per signal, queue and
    exchange they use, a ``receive`` operation per receiver and consumer (with the RPC reply), the
    messages and their payload schemas under ``components``; a ``send`` operation per declared send;
    ``servers`` (name -> DSN) and the buses and brokers of instances as servers, passwords hidden."""
    doc = _AsyncAPI()
    classes = list(dict.fromkeys(agent_class(agent) for agent in agents))
    declarations = list(declarations)
    if not classes and not declarations:
        raise InvalidArgument('asyncapi() needs at least one agent')
    for item in declarations:  # channels only (and RPC answers): no agent of these documents uses them
        if isinstance(item, Signal):
            doc.signal(item)
            if item.answer_codec is not None:
                doc.answer(item)
        elif isinstance(item, Queue):
            doc.queue(item)
    for cls in classes:
        for attr, spec in handler_specs(cls):
            handler = f'{cls.__name__}.{attr}'
            if isinstance(spec, ReceiverSpec):
                channel_id, key = doc.signal(spec.signal)
                operation = _operation('receive', channel_id, key, f'{handler} receives signal {spec.signal.name}',
                                       {'handler': handler, 'timeout': spec.timeout, **grouping_info(cls, cls, spec)})
                if spec.signal.answer_codec is not None:
                    answer = doc.answer(spec.signal)
                    operation['reply'] = {
                        'channel': {'$ref': f'#/channels/{RESPONSE_CHANNEL}'},
                        'messages': [{'$ref': f'#/channels/{RESPONSE_CHANNEL}/messages/{answer}'}],
                    }
                several = sum(isinstance(s, ReceiverSpec) for s in cls._specs[attr]) > 1
                doc.operation(f'{handler}.{spec.signal.name}' if several else handler, operation)
            elif isinstance(spec, ConsumerSpec):
                channel_id, key = doc.queue(spec.queue)
                info = consumer_info(handler, spec)
                extension = {'handler': handler, 'timeout': spec.timeout, 'options': info['options'],
                             'concurrency': spec.concurrency, 'max_retries': spec.max_retries}
                if spec.dto_class is not None:
                    extension.update(dto_class=info['dto_class'], dto_name=info['dto_name'])
                doc.operation(handler, _operation('receive', channel_id, key,
                                                  f'{handler} consumes queue {spec.queue.name}', extension))
        _send_operations(doc, cls)
    names = ', '.join(cls.__name__ for cls in classes)
    document = doc.document(title, version, description or f'Signals and queues of the agents {names}.')
    found = {**_instance_servers(agents), **(servers or {})}
    if found:
        document['servers'] = {name: server_object(dsn) for name, dsn in sorted(found.items())}
    if any(server['protocol'].startswith('amqp') for server in document.get('servers', {}).values()):
        _amqp_bindings(document['channels'])
    return document


def _amqp_bindings(channels: JsonDict) -> None:
    """AMQP channel bindings: a queue channel is a queue, an exchange channel routes by key."""
    for channel in channels.values():
        ext = channel['x-microagent']
        if ext['kind'] == 'queue':
            binding: JsonDict = {'is': 'queue', 'queue': {'name': ext['name'], 'durable': True}}
        elif ext['kind'] == 'exchange':
            exchange = Exchange.get_all().get(ext['name'])
            binding = {'is': 'routingKey', 'exchange': {'name': ext['name'], 'durable': True,
                                                        'type': exchange.type if exchange else 'topic'}}
        else:
            continue
        channel['bindings'] = {'amqp': {**binding, 'bindingVersion': '0.3.0'}}


def _send_operations(doc: _AsyncAPI, cls: type[Described]) -> None:
    """A ``send`` operation per declared send: signals (with the RPC reply), queues, exchanges."""
    for item in cls.sends:
        name = f'{cls.__name__}.sends.{item.name}'
        if isinstance(item, Signal):
            channel_id, key = doc.signal(item)
            operation = _operation('send', channel_id, key, f'{cls.__name__} sends signal {item.name}',
                                   {'agent': cls.__name__, 'rpc': item.answer_codec is not None})
            if item.answer_codec is not None:
                answer = doc.answer(item)
                operation['reply'] = {'channel': {'$ref': f'#/channels/{RESPONSE_CHANNEL}'},
                                      'messages': [{'$ref': f'#/channels/{RESPONSE_CHANNEL}/messages/{answer}'}]}
            doc.operation(name, operation)
        elif isinstance(item, Queue):
            channel_id, key = doc.queue(item)
            doc.operation(name, _operation('send', channel_id, key, f'{cls.__name__} sends to queue {item.name}',
                                           {'agent': cls.__name__}))
        else:
            bound = [queue for queue in Queue.get_all().values() if queue.exchange == item.name]
            keys = list(dict.fromkeys(doc.queue(queue)[1] for queue in sorted(bound, key=lambda q: q.name)))
            channel_id = f'exchange.{item.name}'
            doc.channel(channel_id, {'address': item.name, 'title': item.name,
                                     'description': f'Exchange `{item.name}` ({item.type}).',
                                     'x-microagent': {'kind': 'exchange', 'name': item.name, 'routes': {}}}, [])
            operation = {'action': 'send', 'channel': {'$ref': f'#/channels/{channel_id}'},
                         'messages': [{'$ref': f'#/channels/{channel_id}/messages/{key}'} for key in keys],
                         'summary': f'{cls.__name__} publishes to exchange {item.name}',
                         'x-microagent': {'agent': cls.__name__}}
            doc.operation(name, operation)


def _instance_servers(agents: Iterable[Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for agent in agents:
        for role in ('bus', 'broker'):
            conn = None if isinstance(agent, type) else getattr(agent, role, None)
            if conn is not None and conn.dsn:
                found[f'{agent_class(agent).__name__}.{role}'] = conn.dsn
    return found


def server_object(dsn: str) -> JsonDict:
    """An AsyncAPI server from a DSN, credentials hidden (``redis://:***@host:6379/0``)."""
    shown = hide_password(dsn)
    scheme, _, rest = shown.partition('://')
    host, slash, path = rest.partition('/')
    protocol = _protocol(dsn, scheme)
    server: JsonDict = {'host': host or 'localhost', 'protocol': protocol or 'unknown',
                        'description': f'DSN {shown}'}
    if slash and path:
        server['pathname'] = '/' + path
    return server


def _protocol(dsn: str, scheme: str) -> str:
    """The AsyncAPI protocol of a DSN: the registry's for its backend (a Redis Cluster speaks redis)."""
    try:
        return backend_for(dsn).protocol(scheme)
    except UnknownScheme:
        return scheme
