"""What the Redis backend puts on the wire and how it reads it back: the format, the 1.x channel
names, the RPC reply address, frames, and the packing of commands.

Redis has no message headers, so an envelope travels as the frame of ``message.frame`` (magic, JSON
headers, newline, the 1.x body). With ``wire='1.x'`` a bus or broker sends the bare 1.x body instead,
which 1.x agents read (headers are then not carried). Both formats are read always: a frame starts
with 0x1E, which JSON never does.

Channels, as 1.x names them: a signal ``{prefix}:{name}:{sender}``, an RPC request the same with
``#{request-id}``, its answers ``{prefix}:response:{answering bus uid}#{request-id}``.

An RPC request is taken for a 1.x one in one place, ``request``: it came bare. Its reply address is
then a ``BareReplyTo``, which the engine hands back to the transport's ``reply`` with the answer, and
``answer`` sends that answer bare, whatever the wire, so a 1.x caller can read it.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import msgspec
from redis.asyncio.connection import Connection

from microagent.backends.redis.frame import FRAME_MAGIC, FrameError, frame, unframe
from microagent.errors import InvalidArgument
from microagent.message import REPLY_TO, REQUEST_ID, Envelope
from microagent.signal import RESPONSE_SIGNAL
from microagent.transport import NO_CONTEXT, Delivery

__all__ = ['HIREDIS', 'WIRES', 'BareReplyTo', 'FrameHeaders', 'HiredisPacking', 'Wire', 'answer', 'answered',
           'delivery_of', 'is_legacy', 'parse_channel', 'read_frame', 'reply_address', 'request', 'sent',
           'signal_channel', 'stored']

try:  # redis[hiredis], the extra microagent[redis] installs
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - a plain redis-py
    _hiredis_pack = None  # type: ignore[assignment]

#: hiredis' command packer is there (``HiredisPacking`` works)
HIREDIS = _hiredis_pack is not None

#: what a Redis bus or broker sends: the framed envelope (default) or the bare 1.x body
Wire = Literal['envelope', '1.x']
WIRES: tuple[Wire, ...] = ('envelope', '1.x')


def is_legacy(wire: str) -> bool:
    """True for the 1.x wire; an unknown name is an error rather than a silent default."""
    if wire not in WIRES:
        raise InvalidArgument(f"wire must be 'envelope' or '1.x', got {wire!r}")
    return wire == '1.x'


# channels and RPC addresses


def reply_address(prefix: str) -> str:
    """Where a bus's callers get answers: ``{prefix}:response`` (answerers add their uid and the id)."""
    return f'{prefix}:{RESPONSE_SIGNAL}'


def signal_channel(head: str, name: str, sender: str, request_id: str | None) -> str:
    """The channel of a signal (``head`` is ``{prefix}:``), of an RPC request with its id."""
    return f'{head}{name}:{sender}#{request_id}' if request_id else f'{head}{name}:{sender}'


def parse_channel(head: str, channel: str) -> tuple[str, str, str] | None:
    """(signal name or ``response``, sender or answering uid, request id or ''), or None for a
    channel of another prefix."""
    if not channel.startswith(head):
        return None
    name, _, rest = channel[len(head):].partition(':')
    sender, _, request_id = rest.partition('#')
    return name, sender, request_id


class BareReplyTo(str):
    """The reply address of a request that came bare (from a 1.x caller). Only ``request`` makes
    one; an address read from a frame is a plain ``str``, so the answer's format follows from the
    address alone, and nothing needs remembering until the answer is sent."""

    __slots__ = ()


def request(envelope: Envelope, request_id: str, reply_to: str) -> Envelope:
    """A request read from ``...#{request_id}``, with the RPC addresses of the channel where its
    headers lack them. A bare body is a 1.x request: its reply address is a ``BareReplyTo``."""
    headers = envelope.headers
    if headers is None:
        return Envelope(envelope.body, {REQUEST_ID: request_id, REPLY_TO: BareReplyTo(reply_to)})
    if REQUEST_ID in headers and REPLY_TO in headers:
        return envelope
    added = dict(headers)
    added.setdefault(REQUEST_ID, request_id)
    added.setdefault(REPLY_TO, reply_to)
    return Envelope(envelope.body, added)


def answered(envelope: Envelope, request_id: str) -> Envelope:
    """An answer read from ``...#{request_id}``, with the request id where its headers lack it (bare)."""
    headers = envelope.headers
    if headers is not None and REQUEST_ID in headers:
        return envelope
    return Envelope(envelope.body, {**(headers or {}), REQUEST_ID: request_id})


def answer(reply_to: str, uid: str, envelope: Envelope, legacy: bool) -> tuple[str, bytes]:
    """(channel, data) of an answer to ``reply_to`` from the bus ``uid``: bare on the 1.x wire and
    to a 1.x request (``BareReplyTo``), framed otherwise."""
    request_id = envelope.headers.get(REQUEST_ID, '') if envelope.headers else ''
    return f'{reply_to}:{uid}#{request_id}', sent(envelope, legacy or isinstance(reply_to, BareReplyTo))


# frames


def sent(envelope: Envelope, legacy: bool) -> bytes:
    """What is sent for an envelope: the bare body on the 1.x wire (or without headers), else its frame."""
    return envelope.body if legacy or envelope.headers is None else frame(envelope.body, envelope.headers)


_headers_decoder = msgspec.json.Decoder(dict[str, str])
_headers_encoder = msgspec.json.Encoder()
_HEADERS_AT = len(FRAME_MAGIC)


def stored(envelopes: Sequence[Envelope], legacy: bool) -> list[bytes]:
    """What Redis stores for each envelope: its frame (``message.frame``, inlined: this is the
    producer's hot path), or with the 1.x wire the bare body."""
    if legacy:
        return [envelope.body for envelope in envelopes]
    encode = _headers_encoder.encode
    try:
        return [body if headers is None else FRAME_MAGIC + encode(headers) + b'\n' + body
                for body, headers in envelopes]
    except TypeError:  # headers in a mapping msgspec does not encode (not a dict): the general way
        return [frame(body, headers) for body, headers in envelopes]


class FrameHeaders(Mapping[str, str]):
    """The headers of a frame, parsed on first use: a consumer whose handlers never ask for their
    ``message`` never pays for JSON it does not need. ``read_frame`` checked the header line's
    shape; should its JSON still be invalid, the first use raises the ``FrameError``."""

    __slots__ = ('_data', '_end', '_parsed', '_target')

    def __init__(self, data: bytes, end: int, target: str) -> None:
        self._data = data  # the whole frame; the header line is data[len(FRAME_MAGIC):end]
        self._end = end
        self._target = target
        self._parsed: dict[str, str] | None = None

    def _headers(self) -> dict[str, str]:
        parsed = self._parsed
        if parsed is None:
            try:
                parsed = self._parsed = _headers_decoder.decode(self._data[_HEADERS_AT:self._end])
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                raise FrameError(self._target, [f'envelope headers are not a JSON object of strings: {exc}']) from None
        return parsed

    def __getitem__(self, name: str) -> str:
        return self._headers()[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._headers().get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._headers()

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._headers())

    def __eq__(self, other: object) -> bool:
        return self._headers() == other

    __hash__ = None  # type: ignore[assignment]  # a mapping, as a dict

    def __repr__(self) -> str:
        return f'<headers {self._data[_HEADERS_AT:min(self._end, 200)]!r}>'


_new_envelope = tuple.__new__  # Envelope(...) without its Python-level __new__: the consumer's hot path


def read_frame(data: bytes, target: str) -> Envelope:
    """The envelope in stored bytes, its headers left unparsed: ``unframe``'s checks but the JSON's
    (the magic, an end of the header line, a line shaped like a JSON object). Raises ``FrameError``."""
    if not data or data[0] != 0x1E:
        return _new_envelope(Envelope, (data, None))
    end = data.find(b'\n', _HEADERS_AT)
    if end < 0 or data[end - 1] != 0x7D or data[_HEADERS_AT] != 0x7B or not data.startswith(FRAME_MAGIC):
        return unframe(data, target)  # raises the FrameError that says what is wrong, or parses all
    return _new_envelope(Envelope, (data[end + 1:], FrameHeaders(data, end, target)))


class _Malformed(Delivery[bytes]):
    """A fetched message whose frame is malformed. Reading its envelope raises the ``FrameError`` (an
    ``InvalidPayload`` naming the queue) inside the engine's decoding, so it is dead-lettered like
    any undecodable body, with the stored bytes."""

    __slots__ = ('_target',)

    def __init__(self, data: bytes, target: str, attempt: int = 1, redelivered: bool = False) -> None:
        self.token = data
        self._target = target
        self.attempt = attempt
        self.redelivered = redelivered
        self.context = NO_CONTEXT

    @property
    def envelope(self) -> Envelope:  # type: ignore[override]  # read-only: nothing to set
        return unframe(self.token, self._target)  # raises

    def __repr__(self) -> str:
        return f'<Delivery attempt {self.attempt} (malformed frame): {self.token[:60]!r}>'


def delivery_of(data: bytes, target: str, attempt: int = 1, redelivered: bool = False) -> Delivery[bytes]:
    """The delivery of stored bytes; ``token`` is those bytes. Frames are checked here, their headers
    parsed only on use (see ``FrameHeaders``)."""
    try:
        return Delivery(read_frame(data, target), data, attempt, redelivered)
    except FrameError:
        return _Malformed(data, target, attempt, redelivered)


# commands


class HiredisPacking(Connection):
    """A TCP connection that packs commands with hiredis' C packer. redis-py's asyncio connection packs
    in Python, about a microsecond per argument: more than a message's whole envelope costs, on the
    producer's and the consumer's hot paths (RPUSH of a batch, the fetch and ack scripts). redis-py 8
    with hiredis calls the same packer, but only after encoding every argument in a Python generator:
    still 2.5 to 5 times this one's cost (PUBLISH of a signal 2.8-3.8 against 0.6-1.1 us, RPUSH of 500
    frames 140-350 against 44-83 us, measured side by side on redis-py 8.2)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        command = args[0]
        if (isinstance(command, str) and ' ' in command) or (isinstance(command, bytes) and b' ' in command):
            args = (*command.split(), *args[1:])  # 'CLIENT SETNAME': words are arguments, as redis-py does
        try:
            return [_hiredis_pack(args)]
        except TypeError:  # an argument hiredis cannot pack: redis-py packs it, or says why it cannot
            return super().pack_command(*args)
