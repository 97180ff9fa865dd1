"""``python -m benchmarks``: every backend's table, Redis then RabbitMQ (their defaults)."""
from __future__ import annotations

import asyncio
import sys

from . import bench_amqp, bench_redis

asyncio.run(bench_redis.main())
sys.argv = sys.argv[:1]
bench_amqp.main()
