"""The ``microagent`` command.

    microagent run MODULE [MODULE ...] [marun options]      run a group, exactly like ``marun``
    microagent schema TARGET [TARGET ...] [--asyncapi [--title T] [--version V]] [-o FILE]
    microagent schema diff OLD NEW [--require backward|forward|full|none] [--format text|json]
    microagent check SETTINGS [SETTINGS ...] [--format text|json] [--strict]
    microagent docs SETTINGS [SETTINGS ...] [-o DIR]                 DIR/index.html, self-contained
    microagent dead-letters list QUEUE --broker DSN [--reason TEXT | --reason-re REGEX] [--limit N] [--json]
    microagent dead-letters show QUEUE POSITION --broker DSN [--json]
    microagent dead-letters requeue QUEUE [POSITION ...] --broker DSN [--reason ...] [--dry-run]
    microagent dead-letters purge QUEUE [POSITION ...|--all] --broker DSN [--reason ...] [--dry-run]
    microagent dead-letters list SIGNAL@GROUP --bus DSN ...          a signal group's dead letters
    microagent publish NAME PAYLOAD_JSON [--bus [DSN|ENTRY] [--call] | --broker [DSN|ENTRY]] [--module TARGET ...]

The DSN's scheme picks the backend (``--backend`` names a class of your own). Exit codes of
``dead-letters``: 0 done, 1 no dead letter matched, 2 usage or configuration error (an unknown
queue included), 3 the broker (or bus) is unreachable or failed. ``publish`` (see ``publish.py``): 0 sent,
1 no answer to ``--call`` within the timeout, 2 usage or validation error, 3 the server is unreachable.

Backends and the schema module are imported only by the subcommand that needs them, so
``microagent run`` works without the Redis client installed.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any, TypeVar

import msgspec

from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.cli.config import ConfigError, backend_class
from microagent.cli.inputs import build, seconds
from microagent.dsn import hide_password, scrub
from microagent.errors import InvalidArgument, UsageError
from microagent.groups import split_store_name
from microagent.transport import DeadLetter, SelectDeadLetter

T = TypeVar('T')
DEFAULT_TIMEOUT = 10.0
#: exit codes of ``microagent dead-letters``, for scripts
EXIT_OK, EXIT_NONE, EXIT_USAGE, EXIT_BROKER = 0, 1, 2, 3
ACTIONS = {'list': 'show the oldest dead letters, one line each (#position, 0 the oldest)',
           'show': 'show one dead letter in full: body, headers, reason, attempts, time',
           'requeue': 'put dead letters back on their queue as attempt 1 (all, or those picked)',
           'purge': 'delete dead letters for good (those picked, or --all)'}


def _add_dead_letters(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dead = commands.add_parser(
        'dead-letters', help="list, show, requeue or purge a queue's dead letters",
        description='Exit codes: 0 done; 1 no dead letter matched (none, or none the position or '
                    'reason picks); 2 usage or configuration error, unknown queue included; '
                    '3 the broker is unreachable or failed.')
    actions = dead.add_subparsers(dest='action', required=True, metavar='ACTION')
    for name, text in ACTIONS.items():
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument('queue', metavar='QUEUE')
        if name == 'show':
            action.add_argument('positions', type=int, nargs=1, metavar='POSITION',
                                help='as list shows it (#0 is the oldest)')
        elif name != 'list':
            action.add_argument('positions', type=int, nargs='*', metavar='POSITION',
                                help='only these letters, as list shows them (#0 is the oldest)')
        where = action.add_mutually_exclusive_group(required=True)
        where.add_argument('--broker', metavar='DSN',
                           help='its scheme picks the backend (microagent.backends lists them)')
        where.add_argument('--bus', metavar='DSN',
                           help="a signal group's dead letters: QUEUE is its store, SIGNAL@GROUP")
        action.add_argument('--backend', metavar='PATH',
                            help='dotted path of a broker (or bus) class, for a backend no scheme names')
        action.add_argument('--timeout', type=seconds, default=DEFAULT_TIMEOUT, metavar='SECONDS',
                            help='give up on the broker after this long (default: %(default)s)')
        if name != 'show':
            pick = action.add_mutually_exclusive_group()
            pick.add_argument('--reason', metavar='TEXT', help='only letters whose reason contains TEXT')
            pick.add_argument('--reason-re', metavar='REGEX',
                              help='only letters whose reason matches REGEX (re.search)')
        if name in ('list', 'show'):
            action.add_argument('--json', action='store_true', help='one JSON object per letter and line')
        if name == 'list':
            action.add_argument('--limit', type=int, default=100, help='at most this many (default: 100)')
        if name in ('requeue', 'purge'):
            action.add_argument('--dry-run', action='store_true', help='list what would be done, change nothing')
        if name == 'purge':
            action.add_argument('--all', action='store_true', help='purge every dead letter of the queue')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='microagent', description='Typed, DTO-first microagents.')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    commands.add_parser('run', help='run a group of agents (same as marun; see microagent run --help)',
                        add_help=False)

    schema = commands.add_parser('schema', help="print agents' info() with payload schemas, or AsyncAPI",
                                 epilog='microagent schema diff OLD NEW: are two exports compatible? '
                                        '(see microagent schema diff --help)')
    schema.add_argument('targets', nargs='+', metavar='TARGET',
                        help='marun settings module, module:Agent, module:declaration or a module of declarations')
    schema.add_argument('--asyncapi', action='store_true', help='one AsyncAPI 3.0 document of every target')
    schema.add_argument('--title', help='the AsyncAPI info.title (default: the names of the agents or declarations)')
    schema.add_argument('--version', default='1.0.0',
                        help="the AsyncAPI info.version: the contract's version (default: %(default)s)")
    schema.add_argument('-o', '--output', metavar='FILE', help='write to FILE instead of stdout')

    check = commands.add_parser('check', help="check a fleet's topology: what is received but never sent, ...",
                                description='Exit 0: no error (warnings allowed unless --strict); 1: problems; '
                                            '2: a target cannot be loaded.')
    check.add_argument('targets', nargs='+', metavar='SETTINGS', help='marun settings module (or module:Agent)')
    check.add_argument('--format', choices=('text', 'json'), default='text', help='default: %(default)s')
    check.add_argument('--strict', action='store_true', help='warnings fail too')

    docs = commands.add_parser('docs', help='write a self-contained HTML page of a fleet: diagram and schemas')
    docs.add_argument('targets', nargs='+', metavar='SETTINGS', help='marun settings module (or module:Agent)')
    docs.add_argument('-o', '--output', default='site', metavar='DIR', help='default: %(default)s/')

    _add_dead_letters(commands)
    from microagent.cli.publish import add_parser

    add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``microagent`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ['run']:  # every marun option, untouched
        from microagent.cli.marun import main as marun

        return marun(argv[1:], prog='microagent run')
    if argv[:2] == ['schema', 'diff']:
        from microagent.cli.schema_diff import diff_main

        return diff_main(argv[2:])
    args = build_parser().parse_args(argv)
    if args.command == 'schema':
        return _schema(args)
    if args.command == 'check':
        from microagent.cli.check import check_command

        return check_command(args.targets, args.format, args.strict)
    if args.command == 'docs':
        from microagent.cli.docs import docs_command

        return docs_command(args.targets, args.output)
    if args.command == 'publish':
        from microagent.cli.publish import publish_command

        return publish_command(args)
    try:
        return asyncio.run(_dead_letters(args))
    except ConfigError as exc:
        print(f'microagent: error: {exc}', file=sys.stderr)
        return EXIT_USAGE


def _schema(args: argparse.Namespace) -> int:
    from microagent.cli import schema  # looked up at call time, so tests can stand in for it

    if not args.asyncapi and (args.title is not None or args.version != '1.0.0'):
        print('microagent schema: --title and --version are those of an AsyncAPI document: add --asyncapi',
              file=sys.stderr)
        return EXIT_USAGE
    return schema.schema_command(args.targets, args.asyncapi, args.output, title=args.title, version=args.version)


def _picker(args: argparse.Namespace) -> SelectDeadLetter | None:
    """The letters the positions and reason filter pick (all must hold); None: every letter."""
    positions = set(getattr(args, 'positions', None) or ())
    reason: str | None = getattr(args, 'reason', None)
    regex: str | None = getattr(args, 'reason_re', None)
    if not positions and reason is None and regex is None:
        return None
    try:
        pattern = re.compile(regex) if regex is not None else None
    except re.error as exc:
        raise ConfigError(f'--reason-re: {regex!r} is not a regular expression: {exc}') from None
    if any(position < 0 for position in positions):
        raise ConfigError('POSITION: a position is >= 0, as list shows it (#0 is the oldest)')

    def pick(position: int, letter: DeadLetter) -> bool:
        return ((not positions or position in positions)
                and (reason is None or reason in letter.reason)
                and (pattern is None or pattern.search(letter.reason) is not None))
    return pick


async def _dead_letters(args: argparse.Namespace) -> int:
    picker = _picker(args)
    if args.action == 'purge' and picker is None and not args.all:
        raise ConfigError('purge: name the POSITIONs, a --reason or --reason-re, or --all for every letter')
    role = 'broker' if args.broker else 'bus'
    dsn: str = args.broker or args.bus
    where = hide_password(dsn)
    owner, store = _store_of(args, dsn)
    try:
        async with asyncio.timeout(args.timeout):
            await _first_use(store, role, dsn)
            return await _act(store, args, picker, where)
    except ConfigError:
        raise
    except TimeoutError:
        print(f'microagent: error: {role} {where}: no answer within {args.timeout:g}s', file=sys.stderr)
        return EXIT_BROKER
    except Exception as exc:  # a CLI reports the failure in one line instead of a traceback
        print(f'microagent: error: {role} {where}: {type(exc).__name__}: {scrub(str(exc), dsn)}', file=sys.stderr)
        return EXIT_BROKER
    finally:
        with suppress(Exception):
            async with asyncio.timeout(args.timeout):
                await owner.close()


def _store_of(args: argparse.Namespace, dsn: str) -> tuple[AbstractQueueBroker | AbstractSignalBus,
                                                            AbstractQueueBroker]:
    """What holds the dead letters: the broker, or the bus's groups (and what to close after)."""
    if args.broker:
        factory: Any = backend_class(dsn, args.backend, 'broker', AbstractQueueBroker, 'queue broker')  # a backend's
        broker: AbstractQueueBroker = build('--broker', dsn, lambda: factory(dsn))  # own class takes a DSN
        return broker, broker
    try:
        split_store_name(args.queue)
    except InvalidArgument as exc:
        raise ConfigError(f'--bus: {exc}') from None
    bus_factory: Any = backend_class(dsn, args.backend, 'bus', AbstractSignalBus, 'signal bus')
    bus: AbstractSignalBus = build('--bus', dsn, lambda: bus_factory(dsn))
    try:
        return bus, bus.groups
    except UsageError as exc:
        raise ConfigError(f'--bus: {exc}') from None


async def _first_use(store: AbstractQueueBroker, role: str, dsn: str) -> None:
    """One round trip: a client that reads its DSN only when it connects refuses it here, with a
    ValueError, which is the user's error (exit 2), not the server's (exit 3)."""
    try:
        await store.ping()
    except ValueError as exc:
        raise ConfigError(f'--{role}: the DSN {hide_password(dsn)} is malformed: {scrub(str(exc), dsn)}') from None


async def _act(broker: AbstractQueueBroker, args: argparse.Namespace, picker: SelectDeadLetter | None,
               where: str) -> int:
    name = args.queue
    if not await broker.queue_exists(name):
        raise ConfigError(f'queue {name!r} is not declared on {where} and has no messages or dead letters')
    on = f'on queue {name!r} ({where})'
    if args.action in ('requeue', 'purge') and not args.dry_run:
        if args.action == 'requeue':
            count, done = await broker.requeue_dead_letters(name, picker), 'Requeued'
        else:
            count, done = await broker.purge_dead_letters(name, picker), 'Purged'
        print(f'{done} {count} dead letters {on}')
        return EXIT_OK if count else EXIT_NONE
    total = await broker.dead_letter_count(name)
    letters = await broker.dead_letters(name, total) if total else []
    if args.action == 'show':
        [position] = args.positions
        if position >= len(letters):
            print(f'microagent: no dead letter #{position} {on}: it has {len(letters)}', file=sys.stderr)
            return EXIT_NONE
        _show(letters[position], position, on, args.json)
        return EXIT_OK
    picked = [(i, letter) for i, letter in enumerate(letters) if picker is None or picker(i, letter)]
    if args.action == 'list':
        _list(picked, total, picker is not None, on, args.limit, args.json)
    else:
        print(f'Would {args.action} {len(picked)} dead letters {on}' + (':' if picked else ''))
        for position, letter in picked:
            _line(position, letter)
    return EXIT_OK if picked else EXIT_NONE


def _list(picked: list[tuple[int, DeadLetter]], total: int, filtered: bool, on: str, limit: int,
          as_json: bool) -> None:
    shown = picked[:max(limit, 0)]
    if as_json:
        for position, letter in shown:
            print(msgspec.json.encode({'position': position, **letter.to_dict()}).decode())
        return
    head = f'{len(picked)} of {total} dead letters {on} match' if filtered else f'{total} dead letters {on}'
    print(head + (f', the oldest {len(shown)}:' if shown and len(shown) < len(picked) else ':' if shown else ''))
    for position, letter in shown:
        _line(position, letter)


def _when(letter: DeadLetter) -> str:
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(letter.time))


def _line(position: int, letter: DeadLetter) -> None:
    print(f'#{position}  {_when(letter)}  attempts: {letter.attempts}  reason: {letter.reason}')
    print(f'  {letter.body.decode("utf-8", "replace")}')


def _show(letter: DeadLetter, position: int, on: str, as_json: bool) -> None:
    if as_json:
        print(msgspec.json.encode({'position': position, **letter.to_dict()}).decode())
        return
    headers = letter.envelope.headers or {}
    print(f'Dead letter #{position} {on}')
    print(f'time:     {_when(letter)} ({letter.time:.3f})')
    print(f'attempts: {letter.attempts}')
    print(f'reason:   {letter.reason}')
    print('headers:' + ('' if headers else '  none'))
    for key, value in headers.items():
        print(f'  {key}: {value}')
    print('body:')
    print(letter.body.decode('utf-8', 'replace'))
