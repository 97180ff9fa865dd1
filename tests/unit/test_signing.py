"""The signature itself: what it covers (body, every header the engine and the user set) and what it
leaves out (``attempt`` and the names transports keep for their own bookkeeping, which they rewrite
on retries and dead letters), keys of any list verifying, and the metric of refused messages."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microagent.errors import InvalidArgument
from microagent.message import ATTEMPT, SIGNATURE, Envelope
from microagent.signing import BAD_SIGNATURE, UNSIGNED, SigningKeys
from tests.helpers import eventually

KEY, OTHER = 'unit-test-fleet-key-01234', 'unit-test-other-key-01234'
NAMES = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=':'), min_size=1,
                max_size=12).filter(lambda name: name.lower() not in (ATTEMPT, SIGNATURE)
                                    and not name.lower().startswith(('x-', 'nats-')))
HEADERS = st.dictionaries(NAMES, st.text(max_size=20), max_size=6)


@given(st.binary(max_size=200), HEADERS)
def test_a_signed_message_verifies_with_any_key_of_the_list(body: bytes, headers: dict[str, str]) -> None:
    signed = SigningKeys([KEY, OTHER]).sign(Envelope(body, headers))
    assert SigningKeys([OTHER, KEY]).check(signed) is None
    assert SigningKeys(KEY).check(signed) is None
    assert SigningKeys(OTHER).check(signed) == BAD_SIGNATURE


@given(st.binary(max_size=200), HEADERS, st.data())
def test_any_change_to_the_body_or_a_header_breaks_the_signature(body: bytes, headers: dict[str, str],
                                                                 data: st.DataObject) -> None:
    keys = SigningKeys(KEY)
    signed = keys.sign(Envelope(body, headers))
    assert signed.headers is not None
    tampered = [Envelope(body + b' ', signed.headers), Envelope(body, {**signed.headers, 'rpc-error': '{}'})]
    if headers:
        name = data.draw(st.sampled_from(sorted(headers)))
        tampered.append(Envelope(body, {**signed.headers, name: headers[name] + '!'}))
        tampered.append(Envelope(body, {k: v for k, v in signed.headers.items() if k != name}))
    for envelope in tampered:
        assert keys.check(envelope) == BAD_SIGNATURE


@given(st.binary(min_size=16, max_size=150), st.binary(max_size=300))
def test_the_signature_is_standard_hmac_sha256_of_the_content(key: bytes, body: bytes) -> None:
    import hashlib
    import hmac

    signed = SigningKeys(key).sign(Envelope(body, {'message-id': 'm1'}))
    assert signed.headers is not None
    content = b'[["message-id","m1"]]' + body
    assert signed.headers[SIGNATURE] == hmac.new(key, content, hashlib.sha256).hexdigest()


def test_attempt_and_transport_headers_may_change_the_signature_stays() -> None:
    keys = SigningKeys(KEY)
    signed = keys.sign(Envelope(b'{"a":1}', {'message-id': 'm1', 'attempt': '1'}))
    assert signed.headers is not None
    rewritten = {**signed.headers, 'attempt': '3', 'x-attempt': '3', 'x-reason': 'boom', 'Nats-Sequence': '9'}
    assert keys.check(Envelope(signed.body, rewritten)) is None


@pytest.mark.parametrize('envelope', [Envelope(b'{}'), Envelope(b'{}', {}), Envelope(b'{}', {SIGNATURE: ''})])
def test_a_message_without_a_signature_is_unsigned(envelope: Envelope) -> None:
    assert SigningKeys(KEY).check(envelope) == UNSIGNED


@pytest.mark.parametrize(('keys', 'says'), [
    ('short', 'signing_key[0]: a key must be at least 16 bytes long, this one has 5'),
    ([KEY, b'x'], 'signing_key[1]: a key must be at least 16 bytes long, this one has 1'),
    ([], 'a non-empty list of keys is expected, got list'),
    ([KEY, 3], 'signing_key[1]: a key is a str or bytes, got int'),
])
def test_bad_keys_are_refused_naming_the_key_by_index(keys: object, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says.replace('[', r'\[').replace(']', r'\]')):
        SigningKeys(keys)  # type: ignore[arg-type]


async def test_refused_messages_are_a_prometheus_counter_by_kind_name_and_reason() -> None:
    import prometheus_client

    from microagent import Signal, receiver
    from microagent.agent import MicroAgent
    from microagent.backends.memory import MemoryHub, MemorySignalBus
    from microagent.ops.metrics import PrometheusMiddleware
    from microagent.signing import rejected

    registry = prometheus_client.CollectorRegistry()
    PrometheusMiddleware(registry)
    signal = Signal('unit_signed_event', providing_args=['n'])

    class Listener(MicroAgent):
        @receiver(signal)
        async def heard(self, **kwargs: object) -> None:
            pass

    hub = MemoryHub()
    before = rejected.get(('signal', signal.name, UNSIGNED), 0)
    async with Listener(bus=MemorySignalBus(hub=hub, signing_key=KEY)):
        await MemorySignalBus(hub=hub).unit_signed_event.send('stranger', n=1)
        await eventually(lambda: _counted(signal.name, before))
    text = prometheus_client.generate_latest(registry).decode()
    line = f'microagent_messages_rejected_total{{kind="signal",name="{signal.name}",reason="unsigned"}} {before + 1}.0'
    assert line in text


async def _counted(name: str, before: int) -> bool:
    from microagent.signing import rejected

    return rejected.get(('signal', name, UNSIGNED), 0) > before
