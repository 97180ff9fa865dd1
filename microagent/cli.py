"""The ``microagent`` command.

    microagent run MODULE [MODULE ...] [marun options]      run a group, exactly like ``marun``
    microagent schema TARGET [TARGET ...] [--asyncapi] [-o FILE]
    microagent dead-letters list QUEUE --broker DSN [--limit N] [--json]
    microagent dead-letters requeue QUEUE --broker DSN

Backends and the schema module are imported only by the subcommand that needs them, so
``microagent run`` works without the Redis client installed.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

import msgspec

from .broker import AbstractQueueBroker
from .config import ConfigError, import_object
from .dsn import hide_password, scrub

DEFAULT_BROKER = 'microagent.tools.redis.RedisBroker'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='microagent', description='Typed, DTO-first microagents.')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    commands.add_parser('run', help='run a group of agents (same as marun; see microagent run --help)',
                        add_help=False)

    schema = commands.add_parser('schema', help="print agents' info() with payload schemas, or AsyncAPI")
    schema.add_argument('targets', nargs='+', metavar='TARGET', help='module:Agent')
    schema.add_argument('--asyncapi', action='store_true', help='one AsyncAPI 3.0 document of every target')
    schema.add_argument('-o', '--output', metavar='FILE', help='write to FILE instead of stdout')

    dead = commands.add_parser('dead-letters', help="list or requeue a queue's dead letters")
    actions = dead.add_subparsers(dest='action', required=True, metavar='ACTION')
    for name, text in (('list', 'show the oldest dead letters'), ('requeue', 'put every dead letter back')):
        action = actions.add_parser(name, help=text)
        action.add_argument('queue', metavar='QUEUE')
        action.add_argument('--broker', required=True, metavar='DSN', help='e.g. redis://localhost:6379/0')
        action.add_argument('--backend', default=DEFAULT_BROKER, metavar='PATH',
                            help='dotted path of the broker class (default: %(default)s)')
        if name == 'list':
            action.add_argument('--limit', type=int, default=100, help='at most this many (default: 100)')
            action.add_argument('--json', action='store_true', help='one JSON object per line')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``microagent`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ['run']:  # every marun option, untouched
        from .launcher import main as marun

        return marun(argv[1:], prog='microagent run')
    args = build_parser().parse_args(argv)
    if args.command == 'schema':
        return _schema(args.targets, args.asyncapi, args.output)
    try:
        return asyncio.run(_dead_letters(args))
    except ConfigError as exc:
        print(f'microagent: error: {exc}', file=sys.stderr)
        return 2


def _schema(targets: list[str], asyncapi: bool, output: str | None) -> int:
    from . import schema  # looked up at call time, so tests can stand in for it

    return schema.schema_command(targets, asyncapi, output)


async def _dead_letters(args: argparse.Namespace) -> int:
    factory = import_object(args.backend, '--backend')
    if not (isinstance(factory, type) and issubclass(factory, AbstractQueueBroker)):
        raise ConfigError(f'--backend: {args.backend!r} is not a queue broker class')
    broker = factory(args.broker)
    try:
        if args.action == 'requeue':
            count = await broker.requeue_dead_letters(args.queue)
            print(f'Requeued {count} dead letters on queue {args.queue!r} ({hide_password(args.broker)})')
            return 0
        total = await broker.dead_letter_count(args.queue)
        letters = await broker.dead_letters(args.queue, args.limit)
    except Exception as exc:  # a CLI reports the failure in one line instead of a traceback
        print(f'microagent: error: broker {hide_password(args.broker)}: {type(exc).__name__}: '
              f'{scrub(str(exc), args.broker)}',
              file=sys.stderr)
        return 1
    finally:
        await broker.close()
    if args.json:
        for letter in letters:
            print(msgspec.json.encode(letter.to_dict()).decode())
        return 0
    print(f'{total} dead letters on queue {args.queue!r} ({hide_password(args.broker)})'
          + (f', the oldest {len(letters)}:' if letters and len(letters) < total else ':' if letters else ''))
    for letter in letters:
        when = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(letter.time))
        print(f'- {when}  attempts: {letter.attempts}  reason: {letter.reason}')
        print(f'  {letter.body.decode("utf-8", "replace")}')
    return 0
