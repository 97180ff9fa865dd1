"""``await check_contract(AgentA, AgentB)``: does each agent handle an example of everything it
declares it receives? It runs the agents on a private memory backend (``TestGroup``), sends an example of every
signal it receives and every queue it consumes, and raises ``ContractFailed`` naming each handler
that did not handle its example, and why (its exception, a refused RPC answer, a timeout).

Each example carries a header, so a handler's own traffic (a receiver that queues work for the
agent's consumer) is told apart from it. A consumer's example counts as handled once an attempt
succeeds (its retries are part of the contract) and as failed once they are spent.
"""
from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from microagent.agent import MicroAgent
from microagent.broker import AbstractQueueBroker
from microagent.contract.examples import example, examples
from microagent.errors import InvalidPayload
from microagent.message import current_message
from microagent.payload import Codec
from microagent.queue import Queue
from microagent.signal import Signal

__all__ = ['CASE_HEADER', 'ContractCase', 'ContractFailed', 'ContractReport', 'check_contract']

CASE_HEADER = 'microagent-contract-case'
DEFAULT_CONTRACT_TIMEOUT = 10.0
SENDER = 'contract-check'


@dataclass
class ContractCase:
    """One example sent to one agent: which handlers may take it and how it ended."""

    agent: str
    kind: str  # 'signal' or 'queue'
    name: str
    handlers: tuple[str, ...]  # the receiver, or the consumers of the queue ("Agent.method")
    example: Any
    error: str | None = None  # why the last attempt failed; None once one succeeded
    attempts: int = 0
    done: bool = False
    answer_codec: Codec[Any] | None = field(default=None, repr=False)
    max_retries: int = 0

    @property
    def ok(self) -> bool:
        return self.done and self.error is None

    def describe(self) -> str:
        status = 'handled' if self.ok else f'FAILED: {self.error}'
        return f'{" / ".join(self.handlers)} ({self.kind} {self.name}): {status}; example {self.example!r}'


@dataclass
class ContractReport:
    """Every case of a check, in the order sent."""

    cases: list[ContractCase]

    @property
    def failures(self) -> list[ContractCase]:
        return [case for case in self.cases if not case.ok]

    def __str__(self) -> str:
        failed = self.failures
        head = (f'{len(failed)} of {len(self.cases)} inbound examples were not handled' if failed
                else f'all {len(self.cases)} inbound examples were handled')
        return '\n'.join([head, *(f'  {case.describe()}' for case in (failed or self.cases))])


class ContractFailed(AssertionError):
    """An agent did not handle an example of what it declares it receives; ``report`` says which."""

    def __init__(self, report: ContractReport) -> None:
        super().__init__(str(report))
        self.report = report


def _watch(handler: Callable[..., Awaitable[Any]], key: str, cases: dict[str, ContractCase],
           changed: asyncio.Event) -> Callable[..., Awaitable[Any]]:
    """``handler``, recording how each call on a contract example of this handler ends."""
    @functools.wraps(handler)
    async def watched(*args: Any, **kwargs: Any) -> Any:
        message = current_message()
        case = cases.get(message.headers.get(CASE_HEADER, '')) if message is not None else None
        if message is None or case is None or key not in case.handlers or case.done:
            return await handler(*args, **kwargs)
        case.attempts += 1
        try:
            result = await handler(*args, **kwargs)
        except BaseException as exc:
            case.error = (f'{key} raised {type(exc).__name__}: {exc}' if isinstance(exc, Exception)
                          else f'{key} was cancelled ({type(exc).__name__}: its timeout?)')
            case.done = case.kind == 'signal' or message.attempt > case.max_retries
            changed.set()
            raise
        case.error = None
        if case.answer_codec is not None:
            try:
                case.answer_codec.encode(result)
            except InvalidPayload as exc:
                case.error = f'{key} answered {result!r}, which the answer type refuses: {exc}'
        case.done = True
        changed.set()
        return result
    return watched


async def _check_group(classes: tuple[type[MicroAgent], ...], settings: dict[str, Any] | None, n: int,
                       seed: int | None, timeout: float) -> list[ContractCase]:
    from microagent.testing.group import TestGroup

    cases: dict[str, ContractCase] = {}
    changed = asyncio.Event()
    sends: list[tuple[str, Signal[Any, Any] | Queue[Any], Any]] = []
    async with TestGroup(*classes, settings=settings) as group:
        def add(agent: MicroAgent, kind: str, declaration: Signal[Any, Any] | Queue[Any], handlers: tuple[str, ...],
                answer: Codec[Any] | None, retries: int) -> None:
            values = examples(declaration, n, seed) if seed is not None else [
                _canonical(declaration, i) for i in range(n)]
            for value in values:
                case_id = uuid.uuid4().hex
                cases[case_id] = ContractCase(type(agent).__name__, kind, declaration.name, handlers, value,
                                              answer_codec=answer, max_retries=retries)
                sends.append((case_id, declaration, value))

        for agent in group.agents:
            for receiver in agent.receivers:
                # named ``Agent.method`` as consumers are, not by the 1.x answer key (a qualname)
                receiver.handler = _watch(receiver.handler, receiver.name, cases, changed)
                add(agent, 'signal', receiver.signal, (receiver.name,), receiver.signal.answer_codec, 0)
            by_queue: dict[str, list[Any]] = {}
            for consumer in agent.consumers:
                consumer.handler = _watch(consumer.handler, consumer.key, cases, changed)
                by_queue.setdefault(consumer.queue.name, []).append(consumer)
            for consumers in by_queue.values():
                add(agent, 'queue', consumers[0].queue, tuple(c.key for c in consumers), None,
                    max(c.max_retries for c in consumers))
        for case_id, declaration, value in sends:
            headers = {CASE_HEADER: case_id}
            if isinstance(declaration, Signal):
                await group.bus[declaration].send(SENDER, value, headers=headers)
            else:
                await group.broker[declaration].send(value, headers=headers)
        await _wait(cases, changed, timeout)
        for case in cases.values():
            if not case.done:
                await _explain(group.broker, case, timeout)
    return list(cases.values())


def _canonical(declaration: Signal[Any, Any] | Queue[Any], i: int) -> Any:
    """The deterministic example first; then seeded ones (``n`` > 1 without a seed)."""
    return example(declaration) if i == 0 else example(declaration, seed=i)


async def _wait(cases: dict[str, ContractCase], changed: asyncio.Event, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not all(case.done for case in cases.values()):
                changed.clear()
                await changed.wait()
    except TimeoutError:
        pass  # the cases still open say so


async def _explain(broker: AbstractQueueBroker, case: ContractCase, timeout: float) -> None:
    """Why a case did not end: still failing, dead-lettered unseen (refused), or never delivered."""
    if case.attempts:
        case.error = f'still failing after {case.attempts} attempts within {timeout}s; last: {case.error}'
        return
    reasons = []
    if case.kind == 'queue':
        reasons = [letter.reason for letter in await broker.dead_letters(case.name)]
    case.error = (f'not handled within {timeout}s' + (f'; dead letters of {case.name}: {reasons}' if reasons else
                                                       ' (never delivered to the handler)'))


async def check_contract(*agents: type[MicroAgent], settings: dict[str, Any] | None = None, n: int = 1,
                         seed: int | None = None, timeout: float = DEFAULT_CONTRACT_TIMEOUT,
                         raise_on_failure: bool = True) -> ContractReport:
    """Run the agents together on a private memory backend (give those an agent sends to, as in
    the fleet: a queue bound to an exchange exists once its consumer runs), send ``n`` examples of
    every signal and queue each receives, and wait until each is handled; ``ContractFailed`` names
    what was not (or, ``raise_on_failure=False``, the report says it). ``seed``: random examples."""
    report = ContractReport(await _check_group(agents, settings, n, seed, timeout))
    if raise_on_failure and report.failures:
        raise ContractFailed(report)
    return report
