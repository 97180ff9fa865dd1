"""The demo group on Redis, one process per agent; the server comes from ``$DEMO_REDIS``.

    DEMO_REDIS=redis://127.0.0.1:6379/5 marun examples.settings_redis
"""
import os

from examples.settings_memory import AGENT

REDIS = os.environ.get('DEMO_REDIS', 'redis://127.0.0.1:6379/5')

BUS = {'default': {'backend': 'microagent.tools.redis.RedisSignalBus', 'dsn': REDIS, 'prefix': 'DEMO'}}
BROKER = {'default': {'backend': 'microagent.tools.redis.RedisBroker', 'dsn': REDIS}}

__all__ = ['AGENT', 'BROKER', 'BUS']
