"""``python -m benchmarks``: every backend's table, Redis then RabbitMQ."""
from __future__ import annotations

import asyncio

from . import bench_amqp, bench_redis

asyncio.run(bench_redis.main())
asyncio.run(bench_amqp.main())
