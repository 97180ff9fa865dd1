"""A traced group, one agent per process: a periodic task sends a signal, a receiver queues a message,
a consumer handles it. Every process exports its spans to memory and writes them as JSON lines to
``$LAUNCHER_TEST_DIR/spans-<pid>.json`` when it exits, so a test can put the trace back together.

``TRACE_TEST_BACKEND`` (redis or amqp) picks the servers, ``TRACE_TEST_ID`` makes names unique."""
import atexit
import os
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_DIR = os.environ.get('LAUNCHER_TEST_DIR', '.')
_ID = os.environ.get('TRACE_TEST_ID', 'default')
_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))
trace.set_tracer_provider(_provider)


def _write_spans() -> None:
    spans = _exporter.get_finished_spans()
    if spans:  # the supervisor imports this module too, and records nothing
        lines = (span.to_json(indent=None) for span in spans)
        Path(_DIR, f'spans-{os.getpid()}.json').write_text('\n'.join(lines))


atexit.register(_write_spans)

if os.environ.get('TRACE_TEST_BACKEND') == 'amqp':
    _DSN = os.environ.get('MICROAGENT_AMQP_DSN', 'amqp://guest:guest@127.0.0.1:5672/')
    BUS = {'default': {'backend': 'microagent.tools.amqp.AMQPSignalBus', 'dsn': _DSN, 'prefix': f'T{_ID}'}}
    BROKER = {'default': {'backend': 'microagent.tools.amqp.AMQPBroker', 'dsn': _DSN}}
else:
    _DSN = 'redis://127.0.0.1:6379/9'
    BUS = {'default': {'backend': 'microagent.tools.redis.RedisSignalBus', 'dsn': _DSN, 'prefix': f'T{_ID}'}}
    BROKER = {'default': {'backend': 'microagent.tools.redis.RedisBroker', 'dsn': _DSN}}

_AGENTS = 'tests.launcher_agents.traced_agents'
MIDDLEWARES = ['microagent.ops.tracing.TracingMiddleware']  # the global provider above
AGENT = {
    name: {'backend': f'{_AGENTS}.{cls}', 'bus': 'default', 'broker': 'default',
           'settings': {'dir': _DIR, 'name': name}}
    for name, cls in (('ticker', 'Ticker'), ('relay', 'Relay'), ('worker', 'Worker'))
}
