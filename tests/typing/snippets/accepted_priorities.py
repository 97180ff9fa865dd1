"""Priority levels: a queue declared with ``priorities`` takes ``priority=`` on send and send_many."""
from __future__ import annotations

import msgspec

from microagent import AbstractQueueBroker, Queue


class Report(msgspec.Struct):
    report_id: int


reports: Queue[Report] = Queue('typing_reports', Report, priorities=5)
levels: int | None = reports.priorities


async def send(broker: AbstractQueueBroker, urgent: bool) -> None:
    await broker[reports].send(Report(report_id=1), priority=4)
    await broker[reports].send(Report(report_id=2), priority=4 if urgent else 0, delay=1.5)
    await broker[reports].send_many([Report(report_id=3)], priority=1)
    await broker[reports].send_many([Report(report_id=4)], priority=None)
