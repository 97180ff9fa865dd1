"""A priority is an int: a level's name, a float or a misspelt keyword is caught before it runs
(the range, 0 to priorities - 1, is checked on send)."""
from __future__ import annotations

import msgspec

from microagent import AbstractQueueBroker, Queue


class Report(msgspec.Struct):
    report_id: int


reports = Queue('typing_reports_rejected', Report, priorities='high')  # E: call-overload
ranked = Queue('typing_ranked', Report, priorities=3)


async def send(broker: AbstractQueueBroker) -> None:
    await broker[ranked].send(Report(report_id=1), priority='high')  # E: arg-type
    await broker[ranked].send(Report(report_id=1), priority=1.5)  # E: arg-type
    await broker[ranked].send_many([Report(report_id=2)], priority='2')  # E: arg-type
    await broker[ranked].send(Report(report_id=3), priorty=2)  # E: arg-type
    await broker[ranked].send_many([Report(report_id=4)], level=2)  # E: arg-type
