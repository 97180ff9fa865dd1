"""The envelope: outgoing headers (fresh and inherited), W3C Trace Context, user header rules,
``Message`` read back from headers, and the Redis frame (round trips, bare 1.x bodies, malformed bytes)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Collection
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microagent.backends.redis.frame import FRAME_MAGIC, FrameError, frame, unframe
from microagent.errors import InvalidPayload
from microagent.message import (
    STANDARD_HEADERS,
    Envelope,
    InvalidHeader,
    Message,
    current_message,
    handling,
    new_headers,
    new_headers_many,
    new_message_id,
    new_traceparent,
    parse_traceparent,
    reset_current_message,
    set_current_message,
)
from microagent.transport import BusTransport, Deliver, DeliverReply

HEX32 = re.compile(r'[0-9a-f]{32}')
W3C = re.compile(r'00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})')
PARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'


def _message(**fields: Any) -> Message:
    return Message(**{'message_id': 'm1', 'correlation_id': 'c1', 'sent_at': 1.0, **fields})


# outgoing headers

def test_fresh_headers_start_a_conversation_and_a_trace() -> None:
    before = time.time()
    headers = new_headers()
    after = time.time()
    assert HEX32.fullmatch(headers['message-id'])
    assert before - 0.001 <= float(headers['sent-at']) <= after  # to the millisecond, truncated
    assert headers.keys() == {'message-id', 'sent-at'}  # the rest is derived on receipt: not sent
    received = Message.from_headers(headers)
    assert received.correlation_id == received.message_id == headers['message-id'] and received.attempt == 1
    assert received.traceparent is not None
    match = W3C.fullmatch(received.traceparent)
    assert match is not None and match[3] == '01'  # a sampled root, so tracers downstream record it
    assert received.trace_id == headers['message-id']
    assert parse_traceparent(received.traceparent) is not None


def test_message_ids_are_unique() -> None:
    ids = {new_message_id() for _ in range(10_000)} | {new_headers()['message-id'] for _ in range(1000)}
    assert len(ids) == 11_000


def test_a_forked_process_makes_other_message_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then leave at once
        os.write(write, new_message_id().encode())
        os._exit(0)
    os.close(write)
    mine = new_message_id()
    os.waitpid(pid, 0)
    with os.fdopen(read, 'rb') as pipe:
        theirs = pipe.read().decode()
    assert HEX32.fullmatch(theirs) and theirs != mine
    assert theirs[:20] != mine[:20]  # another per-process prefix, not just another counter value


def test_rpc_addresses_go_in_the_headers() -> None:
    headers = new_headers(reply_to='PUBSUB:response', request_id='r42')
    assert headers['reply-to'] == 'PUBSUB:response'
    assert headers['request-id'] == 'r42'


def test_headers_sent_while_handling_inherit_correlation_and_trace() -> None:
    handled = _message(correlation_id='conversation', traceparent=PARENT, tracestate='vendor=1')
    with handling(handled) as current:
        assert current_message() is current is handled
        headers = new_headers()
    assert headers['correlation-id'] == 'conversation'
    assert headers['message-id'] not in ('m1', 'conversation')
    assert headers['tracestate'] == 'vendor=1'
    parent, child = parse_traceparent(PARENT), parse_traceparent(headers['traceparent'])
    assert parent is not None and child is not None
    assert child[0] == parent[0]  # the same trace
    assert child[1] != parent[1]  # a new span, child of the handled message's
    assert child[2] == parent[2]  # the caller's sampling decision is kept
    assert current_message() is None
    assert 'correlation-id' not in new_headers()  # a new conversation again


def test_headers_of_a_batch_are_those_of_as_many_single_sends() -> None:
    fresh = new_headers_many(3, {'tenant': 'acme'})
    assert len({headers['message-id'] for headers in fresh}) == 3
    for headers in fresh:
        assert headers.keys() == new_headers({'tenant': 'acme'}).keys()
        received = Message.from_headers(headers)
        assert received.correlation_id == received.trace_id == headers['message-id']
        assert dict(received.headers) == {'tenant': 'acme'}
    handled = _message(correlation_id='conversation', traceparent=PARENT, tracestate='vendor=1')
    with handling(handled):
        batch, single = new_headers_many(2), new_headers()
    parent = parse_traceparent(PARENT)
    assert parent is not None
    for headers in batch:
        assert headers.keys() == single.keys()
        child = parse_traceparent(headers['traceparent'])
        assert child is not None and (child[0], child[2]) == (parent[0], parent[2]) and child[1] != parent[1]
        assert (headers['correlation-id'], headers['tracestate']) == ('conversation', 'vendor=1')
    assert new_headers_many(0) == []


def test_a_handled_message_without_a_valid_trace_starts_one() -> None:
    for traceparent in (None, 'garbage', '00-' + '0' * 32 + '-00f067aa0ba902b7-01'):
        with handling(_message(traceparent=traceparent, tracestate='vendor=1')):
            headers = new_headers()
        assert headers['correlation-id'] == 'c1'
        assert 'traceparent' not in headers and 'tracestate' not in headers  # no trace, no state passed on
        assert Message.from_headers(headers).trace_id == headers['message-id']  # it starts one


def test_set_and_reset_current_message() -> None:
    token = set_current_message(_message(correlation_id='outer'))
    try:
        inner = set_current_message(_message(correlation_id='inner'))
        assert new_headers()['correlation-id'] == 'inner'
        reset_current_message(inner)
        assert new_headers()['correlation-id'] == 'outer'
    finally:
        reset_current_message(token)
    assert current_message() is None


async def test_concurrent_handlers_each_inherit_their_own_message() -> None:
    started = asyncio.Event()

    async def handle(correlation_id: str) -> tuple[str, str]:
        with handling(_message(correlation_id=correlation_id)):
            await started.wait()  # both handlers run at once
            spawned = asyncio.create_task(asyncio.sleep(0, new_headers()))  # a task the handler starts
            return new_headers()['correlation-id'], (await spawned)['correlation-id']

    tasks = [asyncio.create_task(handle(name)) for name in ('a', 'b')]
    await asyncio.sleep(0)
    started.set()
    assert await asyncio.gather(*tasks) == [('a', 'a'), ('b', 'b')]


# W3C Trace Context

@pytest.mark.parametrize('value', [
    PARENT,
    '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00',
    '01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future-fields',  # a later version
])
def test_valid_traceparents(value: str) -> None:
    assert parse_traceparent(value) == ('4bf92f3577b34da6a3ce929d0e0e4736', '00f067aa0ba902b7', value[53:55])


@pytest.mark.parametrize('value', [
    '', 'garbage', PARENT.upper(), PARENT + '-', PARENT[:-1], ' ' + PARENT,
    'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',  # version ff is forbidden
    '00-00000000000000000000000000000000-00f067aa0ba902b7-01',  # all-zero trace id
    '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01',  # all-zero parent id
    '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra',  # version 00 has four fields
    '00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01',
])
def test_invalid_traceparents(value: str) -> None:
    assert parse_traceparent(value) is None


def test_new_traceparent_is_a_child_or_a_root() -> None:
    child = new_traceparent(PARENT)
    assert W3C.fullmatch(child) and child[:36] == PARENT[:36] and child[36:52] != PARENT[36:52]
    roots = {new_traceparent(), new_traceparent('not a traceparent')}
    assert all(W3C.fullmatch(root) and root[3:35] != PARENT[3:35] for root in roots) and len(roots) == 2


# user headers

def test_user_headers_travel_under_their_own_names() -> None:
    headers = new_headers({'tenant': 'acme', 'X-Request-Source': 'web', 'empty': ''})
    assert headers['tenant'] == 'acme' and headers['X-Request-Source'] == 'web' and headers['empty'] == ''
    assert new_headers({'n' * 255: 'long name'})['n' * 255] == 'long name'
    assert {'message-id', 'sent-at'} <= headers.keys()


@pytest.mark.parametrize('name', [*sorted(STANDARD_HEADERS), 'Message-ID', 'TRACEPARENT'])
def test_a_user_header_may_not_override_a_standard_one(name: str) -> None:
    with pytest.raises(InvalidHeader, match=f"header '{name}': is a standard header .* may not override it"):
        new_headers({'tenant': 'acme', name: 'mine'})


@pytest.mark.parametrize('name', ['x-attempt', 'X-Reason', 'x-dead-at', 'x-death', 'x-first-death-queue',
                                  'Nats-Msg-Id'])
def test_names_transports_own_are_reserved(name: str) -> None:
    with pytest.raises(InvalidHeader, match=f"header '{name}': is reserved for transports"):
        new_headers({name: 'mine'})


@pytest.mark.parametrize(('headers', 'error'), [
    ({'': 'v'}, "header '': a header name is 1 to 255 printable ASCII characters, without spaces or \":\""),
    ({'n' * 256: 'v'}, f"header '{'n' * 256}': a header name is 1 to 255"),
    ({'two words': 'v'}, "header 'two words': a header name"),
    ({'a:b': 'v'}, "header 'a:b': a header name"),
    ({'tenant\n': 'v'}, "header 'tenant\\\\n': a header name"),
    ({'pays': 'v', 'café': 'v'}, "header 'café': a header name"),
    ({'tenant': 3}, "header 'tenant': a header value is a str, not int"),
    ({'tenant': 'a\r\nb'}, "header 'tenant': a header value may not contain a line break"),
])
def test_bad_user_headers_are_refused_by_name(headers: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidHeader, match=error) as caught:
        new_headers(headers)
    assert isinstance(caught.value, ValueError)


# Message, read back from headers

def test_message_from_the_headers_it_was_sent_with() -> None:
    sent = new_headers({'tenant': 'acme'}, reply_to='PUBSUB:response', request_id='r1')
    received = {**sent, 'x-attempt': '3', 'x-death': '[]'}  # what a transport adds is not the user's
    message = Message.from_headers(received, attempt=3, redelivered=True)
    assert message.message_id == sent['message-id'] == message.correlation_id
    assert message.sent_at == float(sent['sent-at'])
    assert (message.attempt, message.redelivered) == (3, True)
    assert message.traceparent == f"00-{sent['message-id']}-{sent['message-id'][16:]}-01"
    assert message.trace_id == sent['message-id'] and message.tracestate is None
    assert (message.reply_to, message.request_id) == ('PUBSUB:response', 'r1')
    assert dict(message.headers) == {'tenant': 'acme'}


def test_message_is_immutable() -> None:
    message = Message.from_headers({'message-id': 'm', 'tenant': 'acme'})
    with pytest.raises(AttributeError):
        message.attempt = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        message.headers['tenant'] = 'other'  # type: ignore[index]


def test_message_of_a_bare_1x_body() -> None:
    before = time.time()
    message = Message.from_headers(None, attempt=2)
    assert HEX32.fullmatch(message.message_id) and message.correlation_id == message.message_id
    assert message.sent_at >= before and message.attempt == 2 and not message.redelivered
    assert message.traceparent is message.trace_id is message.reply_to is message.request_id is None
    assert dict(message.headers) == {}
    assert Message.from_headers({}).message_id != Message.from_headers({}).message_id


def test_message_from_a_1x_rpc_channel() -> None:
    message = Message.from_headers({'request-id': 'r9', 'reply-to': 'PUBSUB:response'})
    assert (message.request_id, message.reply_to, message.attempt) == ('r9', 'PUBSUB:response', 1)
    assert message.correlation_id == message.message_id


def test_bad_standard_headers_received_are_replaced_not_fatal() -> None:
    before = time.time()
    message = Message.from_headers({'message-id': 'm', 'sent-at': 'yesterday', 'attempt': 'second',
                                    'traceparent': 'bogus', 'tracestate': 'vendor=1'})
    assert message.message_id == message.correlation_id == 'm'
    assert message.sent_at >= before and message.attempt == 1
    assert message.traceparent is None and message.tracestate is None
    assert Message.from_headers({'sent-at': 'nan', 'attempt': '-4'}).attempt == 1
    assert Message.from_headers({'attempt': '4'}).attempt == 4
    assert Message.from_headers({'attempt': '4'}, attempt=5).attempt == 5


# the Redis frame

def test_frame_round_trip() -> None:
    headers = new_headers({'tenant': 'acmé', 'note': '{"json": "inside"}\t'})
    body = b'{"user_id": 1, "text": "line\\nbreak"}'
    data = frame(body, headers)
    assert data.startswith(FRAME_MAGIC)
    assert unframe(data) == Envelope(body, headers)
    assert frame(body, None) == body  # no headers: the bare 1.x body


@pytest.mark.parametrize('body', [b'{"user_id": 1}', b' \r\n\t{"a": []}', b'[1, 2]', b'"text"', b'3', b'null',
                                  b'\xef\xbb\xbf{"bom": true}', b'', b'not json at all'])
def test_bare_1x_bodies_are_accepted_as_they_are(body: bytes) -> None:
    assert unframe(body) == Envelope(body, None)


@pytest.mark.parametrize(('data', 'error'), [
    (b'\x1e', 'not a microagent envelope frame or an unknown version'),
    (b'\x1eMA2{}\n{}', 'not a microagent envelope frame or an unknown version'),
    (b'\x1eXYZ{}\n{}', 'not a microagent envelope frame or an unknown version'),
    (b'\x1eMA1{"message-id": "m"}', 'without the end of its header line'),
    (b'\x1eMA1\n{}', 'envelope headers are not a JSON object of strings'),
    (b'\x1eMA1["m"]\n{}', 'envelope headers are not a JSON object of strings'),
    (b'\x1eMA1{"attempt": 1}\n{}', 'envelope headers are not a JSON object of strings'),
    (b'\x1eMA1{"a": "\xff"}\n{}', 'envelope headers are not a JSON object of strings'),
])
def test_malformed_frames_raise_one_error_naming_the_target(data: bytes, error: str) -> None:
    with pytest.raises(FrameError, match=f"Invalid payload for queue 'mailer': .*{error}") as caught:
        unframe(data, "queue 'mailer'")
    assert isinstance(caught.value, InvalidPayload)


_framelike = st.builds(lambda name, value, tail: FRAME_MAGIC + b'{"' + name + b'":"' + value + b'"}' + tail,
                       st.binary(max_size=8), st.binary(max_size=8), st.binary(max_size=8))


@settings(deadline=None, max_examples=300)
@given(st.binary() | st.binary().map(lambda tail: FRAME_MAGIC + tail) | _framelike)
def test_unframe_raises_nothing_but_frame_error(data: bytes) -> None:
    try:
        envelope = unframe(data)
    except FrameError:
        assert data.startswith(b'\x1e')
        return
    if data.startswith(b'\x1e'):
        assert envelope.headers is not None and data.endswith(envelope.body)
    else:
        assert envelope == Envelope(data, None)


@settings(deadline=None)
@given(st.dictionaries(st.text(), st.text()), st.binary())
def test_frame_round_trips_any_headers_and_body(headers: dict[str, str], body: bytes) -> None:
    assert unframe(frame(body, headers)) == Envelope(body, headers)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(deadline=None)
@given(_json_values, st.sampled_from([None, 0, 2]), st.text(' \t\r\n', max_size=3))
def test_no_json_text_is_taken_for_a_frame(value: object, indent: int | None, space: str) -> None:
    for body in (msgspec.json.encode(value), (space + json.dumps(value, indent=indent)).encode()):
        assert unframe(body) == Envelope(body, None)


# the envelope through a transport, as the engine will use it

class _LoopbackBus:
    """A bus transport over one in-process channel, with Redis's framing on its "wire"."""

    def __init__(self) -> None:
        self.reply_to = 'loopback:replies'
        self.deliver: Deliver | None = None
        self.names: set[str] = set()

    async def publish(self, name: str, sender: str, envelope: Envelope) -> None:
        wire = frame(*envelope)
        if self.deliver is not None and name in self.names:
            await self.deliver(name, sender, unframe(wire, f'signal {name!r}'))

    async def subscribe(self, names: Collection[str], deliver: Deliver) -> None:
        self.names.update(names)
        self.deliver = deliver

    async def receive_replies(self, deliver: DeliverReply) -> None:
        raise NotImplementedError

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        raise NotImplementedError

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        self.deliver = None


async def test_a_chain_of_messages_keeps_one_conversation_and_trace() -> None:
    bus: BusTransport = _LoopbackBus()
    seen: list[Message] = []

    async def deliver(name: str, sender: str, envelope: Envelope) -> None:  # the engine's part
        message = Message.from_headers(envelope.headers)
        seen.append(message)
        if name == 'user_created':
            with handling(message):  # the handler sends the next signal
                await bus.publish('mail_sent', 'mailer', Envelope(b'{}', new_headers({'tenant': 'acme'})))

    await bus.subscribe({'user_created', 'mail_sent'}, deliver)
    await bus.publish('user_created', 'users', Envelope(b'{"user_id": 1}', new_headers()))
    first, second = seen
    assert second.correlation_id == first.correlation_id == first.message_id != second.message_id
    assert second.trace_id == first.trace_id is not None and second.traceparent != first.traceparent
    assert dict(first.headers) == {} and dict(second.headers) == {'tenant': 'acme'}
    await bus.close()
