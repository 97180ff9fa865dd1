"""JSON and text log lines of a real run: every line logged while a message is handled (by the
engine or by the handler's own code) names the agent, the handler and the message's ids; every
failure line says what happens next."""
from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest

from microagent import Message, MicroAgent, Queue, Signal, consumer, periodic, receiver
from microagent.logs import AgentFilter, JsonFormatter, TextFormatter
from tests.conformance.backends import BACKENDS, Backend

user_log = logging.getLogger('tests.user_code')


class Job(msgspec.Struct, frozen=True):
    job_id: int


class Event(msgspec.Struct, frozen=True):
    job_id: int


class Lines(logging.Handler):
    """The root logger's records, formatted as setup_logging formats them; ``wait`` for a line."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(AgentFilter())
        self.setFormatter(formatter)
        self.stream = io.StringIO()
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write(self.format(record) + '\n')
        self.changed.set()

    def json(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(line) for line in self.stream.getvalue().splitlines()]

    async def wait(self, text: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while text not in self.stream.getvalue():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def captured() -> Iterator[Lines]:
    yield from _capture(JsonFormatter())


@pytest.fixture
def captured_text() -> Iterator[Lines]:
    yield from _capture(TextFormatter())


def _capture(formatter: logging.Formatter) -> Iterator[Lines]:
    root = logging.getLogger()
    lines, level = Lines(formatter), root.level
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        root.removeHandler(lines)
        root.setLevel(level)


@pytest.fixture(params=['memory', 'redis'])
async def run_on(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with BACKENDS[request.param]() as opened:
        yield opened


def _lines_with(lines: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [line for line in lines if text in line['message']]


async def test_json_lines_carry_the_ids_and_failures_say_what_follows(run_on: Backend, captured: Lines,
                                                                      unique: str) -> None:
    started = Signal(f'logs_started_{unique}', Event)
    jobs = Queue(f'logs_jobs_{unique}', Job)
    seen: dict[str, Message] = {}

    class Starter(MicroAgent):
        @receiver(started)
        async def on_started(self, event: Event, *, message: Message) -> None:
            seen['signal'] = message
            user_log.info('signal for job %d', event.job_id)
            await self.broker[jobs].send(Job(event.job_id))

    class Worker(MicroAgent):
        @consumer(jobs, max_retries=2, retry_delay=0.01)
        async def work(self, job: Job, *, message: Message) -> None:
            seen[f'job{message.attempt}'] = message
            user_log.info('job %d, attempt %d', job.job_id, message.attempt)
            raise ValueError(f'job {job.job_id} cannot be done')

    broker = run_on.broker()
    async with Starter(bus=run_on.bus(), broker=broker), Worker(broker=broker):
        await run_on.bus()[started].send('test', Event(7))
        await captured.wait('dead-lettered')
    lines = captured.json()

    [signal_line] = _lines_with(lines, 'signal for job 7')
    first = seen['signal']
    assert first.trace_id is not None
    assert signal_line['agent'] == 'Starter' and signal_line['handler'] == 'Starter.on_started'
    assert signal_line['logger'] == 'tests.user_code' and signal_line['level'] == 'INFO'
    assert (signal_line['message_id'], signal_line['correlation_id'], signal_line['trace_id']) == (
        first.message_id, first.correlation_id, first.trace_id)

    job = seen['job1']  # the queued message: a new id, the signal's conversation and trace
    assert job.message_id != first.message_id
    assert job.correlation_id == first.correlation_id and job.trace_id == first.trace_id
    handled = _lines_with(lines, 'job 7, attempt')
    assert [line['message'] for line in handled] == ['job 7, attempt 1', 'job 7, attempt 2', 'job 7, attempt 3']
    for line in handled:
        assert line['agent'] == 'Worker' and line['handler'] == 'Worker.work'
        assert (line['message_id'], line['correlation_id'], line['trace_id']) == (
            job.message_id, job.correlation_id, job.trace_id)  # kept across retries

    failures = [line for line in lines if 'outcome' in line]
    assert [(f['level'], f['outcome'], f['attempt'], f['max_retries']) for f in failures] == [
        ('WARNING', 'retried', 1, 2), ('WARNING', 'retried', 2, 2), ('ERROR', 'dead_lettered', 3, 2)]
    assert [f.get('retry_in') for f in failures] == [0.01, 0.02, None]
    assert 'Worker.work failed on attempt 1 (ValueError: job 7 cannot be done); retry 1 of 2 in 0.01 s' in (
        failures[0]['message'])
    assert failures[1]['message'].endswith('retry 2 of 2 in 0.02 s')
    assert failures[2]['message'].endswith('after 2 retries; dead-lettered: ValueError: job 7 cannot be done')
    for line in failures:
        assert line['agent'] == 'Worker' and line['handler'] == 'Worker.work'
        assert (line['message_id'], line['correlation_id'], line['trace_id']) == (
            job.message_id, job.correlation_id, job.trace_id)
    assert [letter.reason for letter in await broker[jobs].dead_letters()] == ['ValueError: job 7 cannot be done']


async def test_lines_outside_a_handling_carry_no_ids(captured: Lines) -> None:
    user_log.warning('nothing is handled here')
    [line] = captured.json()
    assert line['message'] == 'nothing is handled here'
    assert not {'handler', 'message_id', 'correlation_id', 'trace_id', 'outcome'} & set(line)


async def test_a_failed_receiver_says_it_is_not_retried(captured: Lines, unique: str) -> None:
    async with BACKENDS['memory']() as backend:
        signal = Signal(f'logs_fails_{unique}', Event)

        class Fails(MicroAgent):
            @receiver(signal)
            async def on_event(self, event: Event) -> None:
                raise RuntimeError('no')

        async with Fails(bus=backend.bus()):
            await backend.bus()[signal].send('test', Event(1))
            await captured.wait('Receiver')
    [line] = [line for line in captured.json() if 'outcome' in line]
    assert line['outcome'] == 'failed' and line['handler'] == 'Fails.on_event' and line['agent'] == 'Fails'
    assert line['message'].endswith('failed; not retried (a signal is handled once)')
    assert 'RuntimeError: no' in line['exc'] and len(line['message_id']) == 32


async def test_an_invalid_queue_message_line_names_its_ids(captured: Lines, unique: str) -> None:
    from microagent.message import Envelope, new_headers

    jobs = Queue(f'logs_invalid_{unique}', Job)
    got: list[Job] = []

    class Worker(MicroAgent):
        @consumer(jobs)
        async def work(self, job: Job) -> None:
            got.append(job)

    async with BACKENDS['memory']() as backend:
        broker = backend.broker()
        headers = new_headers()
        await broker.transport.put(jobs, [Envelope(b'{"job_id": "x"}', headers)], delay=0)
        async with Worker(broker=broker):
            await captured.wait('dead-lettered')
    [line] = [line for line in captured.json() if 'outcome' in line]
    assert line['outcome'] == 'dead_lettered' and line['handler'] == 'Worker.work'
    assert line['message_id'] == headers['message-id'] and '$.job_id' in line['message']
    assert got == []


async def test_text_lines_show_a_short_message_id(captured_text: Lines, unique: str) -> None:
    jobs = Queue(f'logs_text_{unique}', Job)
    seen: list[Message] = []

    class Worker(MicroAgent):
        @consumer(jobs)
        async def work(self, job: Job, *, message: Message) -> None:
            seen.append(message)
            user_log.info('working on %d', job.job_id)

    async with BACKENDS['memory']() as backend:
        broker = backend.broker()
        async with Worker(broker=broker):
            await broker[jobs].send(Job(3))
            await captured_text.wait('working on 3')
    [line] = captured_text.stream.getvalue().splitlines()
    assert line.endswith(f' Worker[{os.getpid()}] tests.user_code #{seen[0].message_id[-8:]}: working on 3')


async def test_a_periodic_run_names_its_handler_and_conversation_not_a_message(captured: Lines,
                                                                              unique: str) -> None:
    ticks = Signal(f'logs_tick_{unique}', Event)
    got: list[Message] = []
    received = asyncio.Event()

    class Ticker(MicroAgent):
        @periodic(3600, start_after=0)
        async def tick(self) -> None:
            user_log.info('ticking')
            await self.bus[ticks].send('ticker', Event(1))
            raise RuntimeError('tick broke')

    class Listener(MicroAgent):
        @receiver(ticks)
        async def on_tick(self, event: Event, *, message: Message) -> None:
            got.append(message)
            received.set()

    async with BACKENDS['memory']() as backend, Listener(bus=backend.bus()), Ticker(bus=backend.bus()):
        await captured.wait('Task Ticker.tick failed')
        await asyncio.wait_for(received.wait(), 5)
    lines = captured.json()
    [tick] = _lines_with(lines, 'ticking')
    [failed] = _lines_with(lines, 'Task Ticker.tick failed')
    assert tick['handler'] == failed['handler'] == 'Ticker.tick' and tick['agent'] == 'Ticker'
    assert 'message_id' not in tick and tick['correlation_id'] == got[0].correlation_id  # what the run sent
    assert failed['outcome'] == 'failed' and failed['message'].endswith('; it runs again when next due')
