"""The demo group on NATS (core NATS signals, JetStream queues), one process per agent; the server
comes from ``$DEMO_NATS``.

    DEMO_NATS=nats://127.0.0.1:4222 marun examples.settings_nats
"""
import os

from examples.settings_memory import AGENT

NATS = os.environ.get('DEMO_NATS', 'nats://127.0.0.1:4222')

BUS = {'default': {'backend': 'microagent.tools.nats.NATSSignalBus', 'dsn': NATS, 'prefix': 'DEMO'}}
BROKER = {'default': {'backend': 'microagent.tools.nats.NATSBroker', 'dsn': NATS}}

__all__ = ['AGENT', 'BROKER', 'BUS']
