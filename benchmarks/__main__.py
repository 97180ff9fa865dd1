"""``python -m benchmarks [--quick]``: every backend's table, Redis, RabbitMQ, then NATS (their
defaults), then what the middlewares cost per message (memory backend). ``--quick`` (or
``MICROAGENT_BENCH_QUICK=1``) runs a fifth of the messages, still in 5 alternating rounds."""
from __future__ import annotations

import asyncio
import os
import sys

if '--quick' in sys.argv:
    os.environ['MICROAGENT_BENCH_QUICK'] = '1'

from . import bench_amqp, bench_middleware, bench_nats, bench_redis
from .harness import QUICK, ROUNDS

asyncio.run(bench_redis.main())
sys.argv = sys.argv[:1]
bench_amqp.main()
bench_nats.main()
asyncio.run(bench_middleware.main(4000 if QUICK else 20_000, ROUNDS))
