"""``microagent publish``: send one message by hand, validated against its declaration.

    microagent publish NAME PAYLOAD_JSON --bus DSN [--call [--timeout S]] [--sender NAME] [--prefix P]
    microagent publish NAME PAYLOAD_JSON --broker DSN [--delay S] [--exchange [--topic KEY]]
    microagent publish NAME PAYLOAD_JSON --module SETTINGS [--bus [ENTRY] | --broker [ENTRY]] ...
    common: --module TARGET (repeatable) --header NAME=VALUE (repeatable) --backend PATH

``--module`` takes what ``microagent schema`` takes (a marun settings module, ``module:Agent``, a
module of declarations) or a declarations document (``file://``, ``http(s)://``): importing them
declares NAME. A settings module also says where to send: the DSN and options (the prefix above all)
of the BUS or BROKER entry its agents use, unless a DSN is given (then only its prefix, unless
``--prefix``). The payload is decoded as a receiver would decode it, so a bad field is reported
(exit 2) before anything is sent. The DSN's scheme picks the backend; ``memory://`` lives in one
process, so it is refused. Exit codes: 0 sent (with ``--call``: answered, the answers printed as
JSON), 1 no answer within the timeout or only failed receivers, 2 usage or validation error, 3 the
server is unreachable or failed.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from microagent.backends import UnknownScheme, all_backends, backend_for
from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus, RemoteError
from microagent.cli.config import BackendConfig, ConfigError, backend_class
from microagent.cli.inputs import check_dsn, seconds, seconds_or_zero
from microagent.cli.targets import dsn_of, load_fleet, settings_modules, used_entries
from microagent.dsn import hide_password, scrub
from microagent.errors import CallTimeout, InvalidArgument, MicroAgentError, UsageError
from microagent.exchange import Exchange
from microagent.message import MESSAGE_ID, check_user_headers
from microagent.middleware import Middleware, Next, Sending
from microagent.payload import encode_json
from microagent.queue import Queue
from microagent.signal import Signal

EXIT_OK, EXIT_NO_ANSWER, EXIT_USAGE, EXIT_SERVER = 0, 1, 2, 3
DEFAULT_TIMEOUT = 10.0
DEFAULT_SENDER = 'microagent-cli'
Role = Literal['bus', 'broker']


@dataclass(frozen=True)
class Server:
    """Where a message goes: how to build the client, its DSN, and where its prefix was read."""

    make: Callable[[], AbstractSignalBus | AbstractQueueBroker]
    dsn: str
    source: str = ''


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    publish = commands.add_parser(
        'publish', help='validate a JSON payload against its signal or queue declaration and send it',
        description='Exit codes: 0 sent (--call: answered); 1 no answer within --timeout, or only failed '
                    'receivers; 2 usage or validation error; 3 the server is unreachable or failed.')
    publish.add_argument('name', metavar='NAME', help='the signal (--bus), queue or exchange (--broker)')
    publish.add_argument('payload', metavar='PAYLOAD', help='the payload as JSON, e.g. \'{"user_id": 1}\'')
    where = publish.add_mutually_exclusive_group()
    servers = ', '.join(f'{backend.schemes[0]}://' for backend in all_backends() if not backend.one_process)
    where.add_argument('--bus', metavar='DSN', nargs='?', const='',
                       help=f'send a signal: {servers}; alone, or naming an entry, the BUS of a --module settings')
    where.add_argument('--broker', metavar='DSN', nargs='?', const='',
                       help=f'send a queue message: {servers}; alone, or naming an entry, the BROKER of a --module '
                            'settings')
    publish.add_argument('-m', '--module', action='append', default=[], metavar='TARGET',
                         help='where NAME is declared: settings module, module:Agent, a module of declarations, '
                              'or a declarations document (file://, http(s)://); repeatable')
    publish.add_argument('--header', action='append', default=[], metavar='NAME=VALUE',
                         help='a user header; repeatable')
    publish.add_argument('--call', action='store_true', help='RPC (--bus): wait for the answers, print them as JSON')
    publish.add_argument('--timeout', type=seconds, default=DEFAULT_TIMEOUT, metavar='SECONDS',
                         help='give up on the server, or on an answer, after this long (default: %(default)s)')
    publish.add_argument('--sender', default=DEFAULT_SENDER, help='the sender of a signal (default: %(default)s)')
    publish.add_argument('--prefix', metavar='PREFIX',
                         help="the bus's prefix (default: the BUS entry's of a --module settings, else PUBSUB)")
    publish.add_argument('--delay', type=seconds_or_zero, metavar='SECONDS', help='hold a queue message back this long')
    publish.add_argument('--exchange', action='store_true', help='NAME is an exchange (--broker): publish to it')
    publish.add_argument('--topic', default='', metavar='KEY', help='the routing key of an exchange publish')
    publish.add_argument('--backend', metavar='PATH', help='dotted path of a bus or broker class no scheme names')


class _Sent(Middleware):
    """Keeps the headers of what is sent, to print the message id."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    async def send(self, sending: Sending, call_next: Next) -> Any:
        self.headers = sending.headers[0]
        return await call_next()


def publish_command(args: argparse.Namespace) -> int:
    """Run ``microagent publish``; every failure is one line on stderr and an exit code (the
    clients' own reconnection warnings are not shown: the exit code and its line say it)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # and back after: tests call the command in their own process
    try:
        return _publish(args)
    finally:
        root.setLevel(level)


def _publish(args: argparse.Namespace) -> int:
    try:
        headers = _headers(args.header)
        _load(args.module)
        role = _role(args)
        _check_options(args, role)
        declaration = _declaration(args, role)
        message = _validated(declaration, _payload(args.payload))
        server = _server(args, role)
    except (ConfigError, MicroAgentError, ValueError, OSError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except RecursionError:  # msgspec and the codecs bound nesting depth; a payload deeper than that
        return _fail(EXIT_USAGE, 'PAYLOAD is nested too deeply to decode (RecursionError): flatten it')
    return asyncio.run(_send(args, server, declaration, message, headers))


def _fail(code: int, text: str) -> int:
    print(f'microagent publish: error: {text}', file=sys.stderr)
    return code


def _headers(items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        name, sep, value = item.partition('=')
        if not sep or not name:
            raise UsageError(f'--header {item!r}: give NAME=VALUE')
        headers[name] = value
    check_user_headers(headers)
    return headers


def _payload(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f'PAYLOAD is not JSON: {exc}') from None


def _validated(declaration: Signal[Any, Any] | Queue[Any] | Exchange, payload: Any) -> Any:
    """The payload as a receiver decodes it (the model; ``InvalidPayload`` naming each bad field).
    An exchange's payload is checked by the broker against every queue bound to it here."""
    if isinstance(declaration, Exchange):
        return payload
    return declaration.codec.decode(encode_json(payload))


def _role(args: argparse.Namespace) -> Role:
    """``bus`` or ``broker``: as the options say, else as NAME is declared (a signal or a queue)."""
    if args.bus is not None or args.broker is not None:
        return 'bus' if args.bus is not None else 'broker'
    if args.call or args.exchange or args.delay is not None or args.topic:
        return 'bus' if args.call else 'broker'
    signal, queue = args.name in Signal.get_all(), args.name in Queue.get_all()
    if signal != queue:
        return 'bus' if signal else 'broker'
    if signal:
        raise UsageError(f'{args.name!r} is both a signal and a queue: give --bus or --broker')
    where = f'in {", ".join(args.module)}' if args.module else 'anywhere: give --module the module declaring it'
    raise ConfigError(f'neither a signal nor a queue {args.name!r} is declared {where}')


def _check_options(args: argparse.Namespace, role: Role) -> None:
    if role == 'bus' and (args.delay is not None or args.exchange or args.topic):
        raise UsageError('--delay, --exchange and --topic go with --broker, not --bus')
    if role == 'broker' and args.prefix is not None:
        raise UsageError('--prefix is the prefix of a signal bus: give --bus')
    if role == 'broker' and args.call:
        raise UsageError('--call is RPC over a signal bus: give --bus')
    if args.topic and not args.exchange:
        raise UsageError('--topic is the routing key of an exchange: add --exchange')
    if args.timeout <= 0 or (args.delay is not None and args.delay < 0):
        raise UsageError('--timeout must be > 0 and --delay >= 0')


def _load(targets: list[str]) -> None:
    """Import every target, which declares what it holds."""
    from microagent.loader import load_stuff

    documents = [t for t in targets if t.startswith(('file://', 'http://', 'https://'))]
    for document in documents:
        load_stuff(document)
    modules = [t for t in targets if t not in documents]
    if modules:
        load_fleet(modules)


def _declaration(args: argparse.Namespace, role: Role) -> Signal[Any, Any] | Queue[Any] | Exchange:
    kind = 'signal' if role == 'bus' else 'exchange' if args.exchange else 'queue'
    known: Mapping[str, Signal[Any, Any] | Queue[Any] | Exchange]
    if kind == 'signal':
        known = Signal.get_all()
    elif kind == 'queue':
        known = Queue.get_all()
    else:
        known = Exchange.get_all()
    if args.name in known:
        return known[args.name]
    where = (f'in {", ".join(args.module)}' if args.module
             else 'anywhere: name the module that declares it with --module')
    names = ', '.join(sorted(known)[:20]) or 'none'
    raise ConfigError(f'{kind} {args.name!r} is not declared {where} (declared {kind}s: {names})')


def _server(args: argparse.Namespace, role: Role) -> Server:
    """Where to send: ``--bus``/``--broker`` DSN, or the entry of a ``--module`` settings module its
    agents use (its DSN and options, the prefix above all: a call on another prefix is never answered)."""
    value: str | None = args.bus if role == 'bus' else args.broker
    modules = settings_modules(args.module)
    entries = used_entries(modules, role)
    if value and '://' in value:  # a DSN; the prefix still from the settings, unless --prefix
        check_dsn(f'--{role}', value)
        factory = _class(value, args.backend, role, one_process_ok=False)
        prefix, source = (args.prefix, '--prefix') if args.prefix is not None else _one_prefix(entries)
        options: dict[str, Any] = {} if prefix is None else {'prefix': prefix}
        keys = next((entry.options['signing_key'] for entry in entries if 'signing_key' in entry.options), None)
        if keys is not None:  # the fleet's key too: its agents refuse what is not signed with it
            options['signing_key'] = keys
        return Server(lambda: factory(value, **options), value, source)
    entry = _entry(value, entries, role, modules)
    dsn = dsn_of(entry) or ''
    with suppress(UnknownScheme):
        if dsn and backend_for(dsn).one_process:
            raise ConfigError(f'{entry.label}: {hide_password(dsn)} lives in one process, nothing outside it would '
                              f'get the message: give --{role} with the DSN of a server')
    factory = entry.factory if args.backend is None else _class(dsn, args.backend, role)
    options = dict(entry.options)
    source = entry.label
    if args.prefix is not None:
        options['prefix'], source = args.prefix, '--prefix'
    return Server(lambda: factory(**options), dsn, source)


def _class(dsn: str, backend: str | None, role: Role, *,
           one_process_ok: bool = True) -> Callable[..., AbstractSignalBus | AbstractQueueBroker]:
    if role == 'bus':
        return backend_class(dsn, backend, 'bus', AbstractSignalBus, 'signal bus', one_process_ok=one_process_ok)
    return backend_class(dsn, backend, 'broker', AbstractQueueBroker, 'queue broker', one_process_ok=one_process_ok)


def _one_prefix(entries: list[BackendConfig]) -> tuple[str | None, str]:
    """The prefix the settings' buses share (None: the bus's default), and where it was read."""
    prefixes = {entry.options.get('prefix') for entry in entries}
    if len(prefixes) > 1:
        found = ', '.join(f"{entry.label} {entry.options.get('prefix', 'PUBSUB')!r}" for entry in entries)
        raise UsageError(f'the agents use buses with different prefixes ({found}): give --prefix')
    return (prefixes.pop(), entries[0].label) if entries else (None, '')


def _entry(value: str | None, entries: list[BackendConfig], role: Role, modules: list[str]) -> BackendConfig:
    """The settings entry ``--bus``/``--broker`` names, or the only one the agents use."""
    section = 'BUS' if role == 'bus' else 'BROKER'
    if not modules:
        raise UsageError(f'give --{role} DSN, or --module a settings module whose agents use a {section} entry')
    if value:
        picked = [entry for entry in entries if entry.label.endswith(f'{section}[{value!r}]')]
        if not picked:
            raise ConfigError(f'--{role} {value!r}: neither a DSN nor a {section} entry the agents of '
                              f'{", ".join(modules)} use ({_labels(entries)})')
        entries = picked
    if not entries:
        raise ConfigError(f'no agent of {", ".join(modules)} uses a {section} entry: give --{role} DSN')
    if len(entries) > 1:
        raise UsageError(f'the agents of {", ".join(modules)} use {len(entries)} different {section} entries '
                         f'({_labels(entries)}): give --{role} with the name of one, or a DSN')
    return entries[0]


def _labels(entries: list[BackendConfig]) -> str:
    return ', '.join(f'{entry.label} {hide_password(dsn_of(entry) or "?")}' for entry in entries) or 'none'


async def _send(args: argparse.Namespace, server: Server,
                declaration: Signal[Any, Any] | Queue[Any] | Exchange, message: Any, headers: dict[str, str]) -> int:
    where = hide_password(server.dsn)
    try:
        client = server.make()
    except (ConfigError, MicroAgentError, ValueError, TypeError) as exc:
        return _fail(EXIT_USAGE, f'{where}: {scrub(str(exc), server.dsn)}')
    sent = _Sent()
    client.use(sent)
    try:
        async with asyncio.timeout(args.timeout + (1 if args.call else 0)):  # the call's own timeout first
            answers, note = await _deliver(args, client, declaration, message, headers)
    except CallTimeout as exc:
        prefix = getattr(client, 'prefix', None)
        return _fail(EXIT_NO_ANSWER, f'{exc}: asked on {where} with prefix {prefix!r} '
                                     f'({server.source or "the default"}); only receivers on that server and '
                                     'prefix hear it: check --prefix, or give --module their settings module')
    except RemoteError as exc:
        return _fail(EXIT_NO_ANSWER, f'only failed receivers answered: {exc}')
    except (UsageError, ValueError) as exc:  # InvalidPayload (an exchange's queues), InvalidHeader
        return _fail(EXIT_USAGE, str(exc))
    except TimeoutError:
        return _fail(EXIT_SERVER, f'{where}: no answer from the server within {args.timeout:g}s')
    except Exception as exc:  # a CLI reports the failure in one line instead of a traceback
        return _fail(EXIT_SERVER, f'{where}: {type(exc).__name__}: {scrub(str(exc), server.dsn)}')
    finally:
        with suppress(Exception):
            async with asyncio.timeout(args.timeout):
                await client.close()
    if answers is not None:
        print(answers)
    kind = type(declaration).__name__.lower()
    print(f'Sent {kind} {args.name!r} to {where}{note} (message id {sent.headers.get(MESSAGE_ID, "?")})',
          file=sys.stderr if answers is not None else sys.stdout)
    return EXIT_OK


async def _deliver(args: argparse.Namespace, client: AbstractSignalBus | AbstractQueueBroker,
                   declaration: Signal[Any, Any] | Queue[Any] | Exchange, message: Any,
                   headers: dict[str, str]) -> tuple[str | None, str]:
    """Send; the answers as one JSON object for ``--call`` (else None), and a note on the send."""
    if isinstance(declaration, Signal):
        if not isinstance(client, AbstractSignalBus):
            raise UsageError(f'--backend: a signal needs a signal bus class, not {type(client).__name__}')
        bound = client[declaration]
        if not args.call:
            await bound.send(args.sender, message, headers=headers)
            return None, ''
        answers = await bound.call(args.sender, message, timeout=args.timeout, headers=headers)
        codec = declaration.answer_codec
        raw = {key: msgspec.Raw(codec.encode(value) if codec else encode_json(value)) for key, value in answers.items()}
        return encode_json(raw).decode(), ''
    if not isinstance(client, AbstractQueueBroker):
        raise UsageError(f'--backend: a {type(declaration).__name__.lower()} needs a broker class, '
                         f'not {type(client).__name__}')
    if isinstance(declaration, Exchange):
        count = await client.publish(declaration.name, message, args.topic, headers=headers)
        return None, f' with routing key {args.topic!r}: {count} queue(s)'
    await client[declaration].send(message, delay=args.delay, headers=headers)
    return None, ''
