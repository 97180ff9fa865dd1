"""The test kit keeps the declarations' types: a probe's models, what was sent, the agents of a group."""
from __future__ import annotations

from microagent import MicroAgent, Queue, Signal, consumer
from microagent.testing import TestGroup
from schemas import CountQuery, comments_count

queries = Queue('typing_kit_queries', CountQuery)


class Counter(MicroAgent):
    @consumer(queries)
    async def count(self, query: CountQuery) -> None: ...


async def check(group: TestGroup, signal: Signal[CountQuery, int]) -> None:
    models: list[CountQuery] = await group.handler(Counter.count).wait(1)
    wrong: list[str] = await group.handler(Counter.count).wait(1)  # E: assignment
    sent: list[CountQuery] = group.sent.messages(queries)
    texts: list[str] = group.sent.messages(queries)  # E: arg-type
    answers: list[dict[str, int]] = group.sent.answers(comments_count)
    group.sent.answers(signal)[0]['Counter.count'].upper()  # E: attr-defined
    agent: Counter = group[Counter]
    agent.missing()  # E: attr-defined
    print(models, wrong, sent, texts, answers)
