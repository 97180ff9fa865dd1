"""Examples of declarations and the contract check (microagent.testing): every declaration of the
reference schema package and the demo has a valid example; the demo fleet handles every example it
declares it receives; a planted failing handler is named, with why."""
from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import Any

import msgspec
import pytest

import schemas
from examples.comments import CommentAgent
from examples.mailer import MailerAgent
from examples.push import PushAgent
from examples.users import UserAgent
from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.cli.targets import load_fleet
from microagent.contract.samples import SampleError
from microagent.errors import UsageError
from microagent.testing import ContractFailed, check_contract, example, examples

SUFFIX = uuid.uuid4().hex[:8]


def reference_declarations() -> list[Signal[Any, Any] | Queue[Any]]:
    found = {id(value): value for value in vars(schemas).values() if isinstance(value, Signal | Queue)}
    fleet = load_fleet(['examples.settings_memory'])
    for agent in fleet.agents:
        found.update({id(s): s for s in agent.receives()})
        found.update({id(spec.queue): spec.queue for spec in agent.consumes()})
        found.update({id(item): item for item in agent.cls.sends if isinstance(item, Signal | Queue)})
    return sorted(found.values(), key=lambda d: (d.kind, d.name))


@pytest.mark.parametrize('declaration', reference_declarations(), ids=lambda d: f'{d.kind}:{d.name}')
def test_every_reference_declaration_has_valid_examples(declaration: Signal[Any, Any] | Queue[Any]) -> None:
    payload = example(declaration)
    assert declaration.model is None or isinstance(payload, declaration.model)
    assert declaration.codec.decode(declaration.codec.encode(payload)) == payload  # valid on the wire too
    assert example(declaration) == payload  # the same every time
    varied = examples(declaration, 20, seed=7)
    assert len(varied) == 20 and varied == examples(declaration, 20, seed=7)
    assert len({declaration.codec.encode(item) for item in varied}) > 1  # varied indeed
    if isinstance(declaration, Signal) and declaration.answer_codec is not None:
        answer = example(declaration, answer=True)
        declaration.answer_codec.encode(answer)
        assert all(isinstance(item, int) for item in examples(declaration, 5, answer=True))


def test_the_reference_examples_read_well() -> None:
    assert example(schemas.user_created) == schemas.UserCreated(user_id=1, email='user@example.com', name='')
    assert example(schemas.comments_count, answer=True) == 1
    mail = example(schemas.mailer)
    assert '@' in mail.to and 1 <= len(mail.subject) <= 200
    assert example(schemas.Push) == example(schemas.push_ios)  # a model type works as well


def test_answer_examples_need_an_rpc_signal() -> None:
    with pytest.raises(UsageError, match='no RPC signal'):
        example(schemas.user_created, answer=True)
    with pytest.raises(UsageError, match='only an RPC signal'):
        examples(schemas.mailer, answer=True)  # type: ignore[call-overload]


class Stamp(msgspec.Struct):
    at: datetime.datetime  # a bare string in the schema: naive or aware
    clock: datetime.time
    counts: dict[int, int]


def test_example_fixes_what_the_schema_leaves_out() -> None:
    stamp = example(Stamp)
    assert isinstance(stamp.at, datetime.datetime) and isinstance(stamp.clock, datetime.time)
    assert all(isinstance(key, int) for key in stamp.counts)


def test_a_declaration_without_an_example_is_named() -> None:
    legacy = Signal(f'contract_impossible_{SUFFIX}', schema={
        'type': 'object', 'properties': {'n': {'type': 'integer', 'minimum': 5, 'maximum': 1}}, 'required': ['n']})
    with pytest.raises(SampleError, match='no integer'):
        example(legacy)


async def test_the_demo_fleet_handles_every_example_it_declares() -> None:
    report = await check_contract(UserAgent, CommentAgent, MailerAgent, PushAgent)
    handled = {(case.kind, case.name, case.handlers) for case in report.cases}
    assert handled == {
        ('signal', 'comments_count', ('CommentAgent.count',)),
        ('signal', 'user_created', ('MailerAgent.welcome',)),
        ('queue', 'mailer', ('MailerAgent.send_mail',)),  # it fails the first time, then the retry succeeds
        ('queue', 'push_android', ('PushAgent.android',)),
        ('queue', 'push_ios', ('PushAgent.ios',)),
    }
    assert all(case.ok for case in report.cases) and not report.failures
    assert 'all 5 inbound examples were handled' in str(report)


async def test_a_seeded_check_sends_varied_examples() -> None:
    report = await check_contract(CommentAgent, PushAgent, n=4, seed=3)
    assert len(report.cases) == 12 and not report.failures
    assert len({case.example.user_id for case in report.cases if case.name == 'push_ios'}) > 1


class Ticket(msgspec.Struct, frozen=True):
    ticket_id: int
    title: str


ticket_opened = Signal(f'contract_ticket_opened_{SUFFIX}', Ticket)
ticket_priced = Signal(f'contract_ticket_priced_{SUFFIX}', Ticket, returns=int)
tickets = Queue(f'contract_tickets_{SUFFIX}', Ticket)
archive = Queue(f'contract_archive_{SUFFIX}', Ticket)
legacy_closed = Signal(f'contract_ticket_closed_{SUFFIX}', providing_args=['ticket_id', 'reason'])


class Helpdesk(MicroAgent):
    @receiver(ticket_opened)
    async def opened(self, ticket: Ticket) -> None:
        await self.broker[tickets].send(ticket)  # its own traffic, beside the example of `tickets`

    @receiver(ticket_priced)
    async def price(self, ticket: Ticket) -> int:
        return 'free'  # type: ignore[return-value]  # planted: the answer type says int

    @receiver(legacy_closed)
    async def closed(self, **kwargs: Any) -> None:
        assert {'ticket_id', 'reason'} <= kwargs.keys()

    @consumer(tickets, max_retries=1, retry_delay=0.01)
    async def file(self, ticket: Ticket) -> None:
        raise ValueError(f'cannot file {ticket.title!r}')  # planted: fails every attempt

    @consumer(archive, timeout=0.05, max_retries=0)
    async def store(self, ticket: Ticket) -> None:
        await asyncio.get_running_loop().create_future()  # planted: never done, hangs past its timeout


async def test_planted_failures_are_named_with_why() -> None:
    with pytest.raises(ContractFailed) as failed:
        await check_contract(Helpdesk, timeout=5)
    report = failed.value.report
    by_name = {case.name: case for case in report.cases}
    assert by_name[legacy_closed.name].ok and by_name[ticket_opened.name].ok  # a 1.x handler too
    filing = by_name[tickets.name]
    assert not filing.ok and filing.attempts == 2  # the example's own attempts, not the receiver's message
    assert filing.error is not None and "Helpdesk.file raised ValueError: cannot file 'example'" in filing.error
    priced = by_name[ticket_priced.name]
    assert priced.error is not None and "answered 'free', which the answer type refuses" in priced.error
    hung = by_name[archive.name]
    assert hung.error is not None and 'Helpdesk.store was cancelled' in hung.error
    assert len(report.failures) == 3
    text = str(failed.value)
    assert text.startswith('3 of 5 inbound examples were not handled')
    assert f'Helpdesk.file (queue {tickets.name}): FAILED' in text and 'example Ticket(ticket_id=1' in text


async def test_a_report_without_raising() -> None:
    report = await check_contract(Helpdesk, timeout=5, raise_on_failure=False)
    assert {case.name for case in report.failures} == {tickets.name, ticket_priced.name, archive.name}


async def test_an_example_never_delivered_is_reported() -> None:
    class Refusing:
        def __init__(self, **fields: Any) -> None:
            raise TypeError('refuses every message')

    class Refuser(MicroAgent):
        @consumer(Queue(f'contract_refused_{SUFFIX}', Ticket), max_retries=0, dto_class=Refusing)
        async def hear(self, **kwargs: Any) -> None:
            pass

    report = await check_contract(Refuser, timeout=1, raise_on_failure=False)
    [case] = report.failures
    assert case.attempts == 0 and case.error is not None
    assert case.error.startswith('not handled within 1s; dead letters of') and 'refuses every message' in case.error


async def test_receivers_and_consumers_are_named_agent_dot_method() -> None:
    class Napper(MicroAgent):  # defined in a function: its qualname has <locals>
        @receiver(Signal(f'contract_nap_{SUFFIX}', Ticket))
        async def nap(self, ticket: Ticket) -> None:
            raise ValueError('asleep')

        @consumer(Queue(f'contract_meals_{SUFFIX}', Ticket), max_retries=0)
        async def eat(self, ticket: Ticket) -> None:
            raise ValueError('full')

    report = await check_contract(Napper, timeout=5, raise_on_failure=False)

    assert sorted(case.handlers for case in report.failures) == [('Napper.eat',), ('Napper.nap',)]
    assert '<locals>' not in str(report) and 'Napper.nap raised ValueError: asleep' in str(report)
