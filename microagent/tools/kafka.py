"""1.x had an experimental ``KafkaBroker`` here. This project has no Kafka backend: there is no Kafka
server on its machines to test one against, and an untested broker would lose messages quietly.
Importing this module raises ``KafkaNotSupported``, an ``ImportError`` that names the backends there are.
"""
from __future__ import annotations

from microagent.errors import MicroAgentError

#: the modules of ``microagent.tools`` that do provide a bus and a broker
SUPPORTED_BACKENDS = ('memory', 'redis', 'amqp')


class KafkaNotSupported(MicroAgentError, ImportError):
    """``import microagent.tools.kafka``: there is no Kafka backend."""


raise KafkaNotSupported(
    'microagent has no Kafka backend (1.x KafkaBroker is not kept: no Kafka server to test it against); '
    'the supported backends are microagent.tools.' + ', microagent.tools.'.join(SUPPORTED_BACKENDS),
    name='microagent.tools.kafka')
