"""1.x had an experimental ``KafkaBroker`` here. This project has no Kafka backend: there is no Kafka
server on its machines to test one against, and an untested broker would lose messages quietly.
Importing this module raises ``KafkaNotSupported``, an ``ImportError`` that names the backends there are.
"""
from __future__ import annotations

from microagent.backends import all_backends
from microagent.errors import MicroAgentError

#: the backends there are, from the registry
SUPPORTED_BACKENDS = tuple(f'microagent.tools.{b.name}' if b.package.startswith('microagent.backends.') else b.package
                           for b in all_backends())


class KafkaNotSupported(MicroAgentError, ImportError):
    """``import microagent.tools.kafka``: there is no Kafka backend."""


raise KafkaNotSupported(
    'microagent has no Kafka backend (1.x KafkaBroker is not kept: no Kafka server to test it against); '
    'the supported backends are ' + ', '.join(SUPPORTED_BACKENDS) + ' (a backend of your own registers through '
    'the entry point group microagent.backends)',
    name='microagent.tools.kafka')
