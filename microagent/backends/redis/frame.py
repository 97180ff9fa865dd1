"""The Redis frame: how an envelope (body and headers) is one Redis string.

``b'\\x1eMA1'``, the headers as one JSON object (msgspec escapes every line break inside strings),
``b'\\n'``, then the body. JSON text starts with whitespace or a value, never with 0x1E (ASCII record
separator), so a receiver tells a frame from a bare 1.x body by its first byte. AMQP and NATS carry
headers natively and never frame.
"""
from __future__ import annotations

from collections.abc import Mapping

import msgspec

from microagent.errors import InvalidPayload
from microagent.message import Envelope

FRAME_MAGIC = b'\x1eMA1'  # record separator, "MA", frame version 1
_FRAME_MARK = FRAME_MAGIC[:1]
_headers_encoder = msgspec.json.Encoder()
_headers_decoder = msgspec.json.Decoder(dict[str, str])


class FrameError(InvalidPayload):
    """Bytes that start like a framed envelope (0x1E) but are not a valid one: an unknown frame
    version, no end of the header line, or headers that are not a JSON object of strings. The only
    error ``unframe`` raises; as an ``InvalidPayload`` the engine drops or dead-letters the message."""


def frame(body: bytes, headers: Mapping[str, str] | None) -> bytes:
    """The bytes Redis carries for an envelope: the frame, or the bare body when there are no headers."""
    if headers is None:
        return body
    if type(headers) is not dict:
        headers = dict(headers)
    return b''.join((FRAME_MAGIC, _headers_encoder.encode(headers), b'\n', body))


def unframe(data: bytes, target: str = 'a message') -> Envelope:
    """The envelope in bytes read from Redis: a frame, or a bare 1.x body (headers None), which is
    returned as is for the payload codec to judge. Raises only ``FrameError`` (naming ``target``,
    e.g. "queue 'mailer'"), on bytes that start with 0x1E and are not a valid frame."""
    if not data.startswith(_FRAME_MARK):
        return Envelope(data, None)
    if not data.startswith(FRAME_MAGIC):
        raise FrameError(target, [f'not a microagent envelope frame or an unknown version: {data[:8]!r}'])
    end = data.find(b'\n', len(FRAME_MAGIC))
    if end < 0:
        raise FrameError(target, ['envelope frame without the end of its header line'])
    try:
        headers = _headers_decoder.decode(memoryview(data)[len(FRAME_MAGIC):end])
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec checks UTF-8 in strings with the codec
        raise FrameError(target, [f'envelope headers are not a JSON object of strings: {exc}']) from None
    return Envelope(data[end + 1:], headers)
