"""``python -m benchmarks``: every backend's table, Redis, RabbitMQ, then NATS (their defaults), then
what the middlewares cost per message (memory backend)."""
from __future__ import annotations

import asyncio
import sys

from . import bench_amqp, bench_middleware, bench_nats, bench_redis

asyncio.run(bench_redis.main())
sys.argv = sys.argv[:1]
bench_amqp.main()
bench_nats.main()
asyncio.run(bench_middleware.main(20_000, 5))
