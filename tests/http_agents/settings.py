"""marun settings of the HTTP tests: Redis at ``HTTP_TEST_REDIS``, metrics on every agent."""
import os

_DSN = os.environ.get('HTTP_TEST_REDIS', 'redis://127.0.0.1:6379/7')
MIDDLEWARES = ['microagent.ops.metrics.PrometheusMiddleware']
BUS = {'default': {'backend': 'microagent.tools.redis.RedisSignalBus', 'dsn': _DSN}}
BROKER = {'default': {'backend': 'microagent.tools.redis.RedisBroker', 'dsn': _DSN}}
AGENT = {
    'producer': {'backend': 'tests.http_agents.agents.Producer', 'broker': 'default'},
    'worker': {'backend': 'tests.http_agents.agents.Worker', 'bus': 'default', 'broker': 'default'},
}
