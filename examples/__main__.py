"""The demo: ``python -m examples --duration 10`` (memory backend, one process) or
``python -m examples --redis redis://127.0.0.1:6379/5`` (Redis, one process per agent) or
``python -m examples --nats nats://127.0.0.1:4222`` (NATS with JetStream, one process per agent)."""
from __future__ import annotations

import argparse
import os
import sys

from microagent.cli.marun import run_group
from microagent.logs import FORMATS, LEVELS, setup_logging

INTRO = """\
microagent demo: five agents built on the schemas/ package, on {backend}, for {duration:g}s.
  users     signs up a user every second (periodic task), sends the typed signal user_created,
            asks comments_count over RPC, and reports every 5 s (cron task)
  comments  answers the comments_count RPC
  mailer    receives user_created, queues a welcome Mail on the mailer queue and publishes a Push
            to the push exchange; consumes the mailer queue (the first mail fails once and is retried)
  push      consumes push_android and push_ios (routing keys {{user_id}}.android / {{user_id}}.ios)
  billing   two replicas sharing user_created in a signal group: each user is billed once in all
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m examples', description='Run the microagent demo.')
    parser.add_argument('--duration', type=float, default=10, help='stop after this many seconds (default 10)')
    parser.add_argument('--redis', metavar='DSN', help='run on this Redis server, one process per agent')
    parser.add_argument('--nats', metavar='DSN', help='run on this NATS server (with JetStream), one process per agent')
    parser.add_argument('--log-level', default='INFO', type=str.upper, choices=LEVELS)
    parser.add_argument('--log-format', default='text', choices=FORMATS)
    args = parser.parse_args(argv)
    if args.redis and args.nats:
        parser.error('--redis and --nats: pick one backend')
    if args.redis:
        os.environ['DEMO_REDIS'] = args.redis  # read by examples.settings_redis in every agent process
    if args.nats:
        os.environ['DEMO_NATS'] = args.nats  # read by examples.settings_nats in every agent process
    server = 'Redis' if args.redis else 'NATS' if args.nats else ''
    backend = f'{server}, one process per agent' if server else 'the in-memory backend, in one process'
    print(INTRO.format(backend=backend, duration=args.duration), file=sys.stderr, flush=True)
    setup_logging(args.log_level, args.log_format, 'demo')
    module = f'examples.settings_{server.lower() or "memory"}'
    return run_group([module], single_process=not server, stop_after=args.duration, grace=5,
                     log_level=args.log_level, log_format=args.log_format)


if __name__ == '__main__':
    sys.exit(main())
