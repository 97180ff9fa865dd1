"""A settings module whose fleet declares ``planted_orphan`` with a second contract (planted)."""
from __future__ import annotations

from microagent import Signal
from tests.fleet_planted import AGENT, BROKER, BUS, Refund

orphan_again = Signal('planted_orphan', Refund)  # tests.fleet_planted declares it with Order

__all__ = ['AGENT', 'BROKER', 'BUS', 'orphan_again']
