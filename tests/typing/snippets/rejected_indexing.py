"""A bus or broker is indexed by a declaration or its name, nothing else."""
from __future__ import annotations

from microagent import AbstractQueueBroker, AbstractSignalBus
from schemas import mailer, user_created


def index(bus: AbstractSignalBus, broker: AbstractQueueBroker) -> None:
    bus[1]  # E: call-overload
    broker[b'mailer']  # E: call-overload
    bus[mailer]  # E: call-overload
    broker[user_created]  # E: call-overload
