"""Every error microagent raises is a MicroAgentError and keeps the built-in base 1.x code catches;
``bus.x`` / ``broker.x`` for an undeclared name behave like a missing attribute."""
from __future__ import annotations

import ast
import builtins
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

import microagent
from microagent import (
    BackendClosed,
    CallTimeout,
    DeclarationError,
    InvalidArgument,
    MicroAgent,
    MicroAgentError,
    Queue,
    QueueNotFound,
    Signal,
    SignalNotFound,
    UsageError,
    consumer,
    cron,
    on,
    periodic,
    receiver,
)
from microagent.backends.memory import MemoryBroker, MemorySignalBus
from microagent.cli.schema import load_agent
from microagent.contract.info import agent_class

PACKAGE = Path(microagent.__file__).parent


class Ping(msgspec.Struct):
    n: int


async def _tick(self: Any) -> None: ...


async def _handle(self: Any, ping: Ping) -> None: ...


def _not_async(self: Any) -> None: ...


def _twice(unique: str) -> None:
    queue = Queue(f'err_twice_{unique}', Ping)

    class Agent(MicroAgent):
        @consumer(queue)
        async def first(self, ping: Ping) -> None: ...

        @consumer(queue)
        async def second(self, ping: Ping) -> None: ...


MISTAKES: list[tuple[str, Callable[[str], object], type[Exception], type[Exception]]] = [
    ('period <= 0', lambda u: periodic(0)(_tick), DeclarationError, ValueError),
    ('invalid cron spec', lambda u: cron('61 * * * *')(_tick), DeclarationError, ValueError),
    ('unknown hook label', lambda u: on('pre_strat'), DeclarationError, ValueError),
    ('concurrency 0', lambda u: consumer(Queue(f'err_c_{u}', Ping), concurrency=0)(_handle), DeclarationError,
     ValueError),
    ('one queue, two consumers', _twice, DeclarationError, ValueError),
    ('a sync handler', lambda u: periodic(1)(_not_async), UsageError, TypeError),  # type: ignore[type-var]
    ('no signal', lambda u: receiver(), UsageError, TypeError),  # type: ignore[call-overload]
    ('no queue', lambda u: consumer('mailer'), UsageError, TypeError),  # type: ignore[call-overload]
    ('not an agent', lambda u: agent_class(object()), UsageError, TypeError),
    ('not an agent path', lambda u: load_agent('tests.unit.test_errors'), InvalidArgument, ValueError),
    ('undeclared signal', lambda u: Signal.get(f'err_none_{u}'), SignalNotFound, LookupError),
    ('undeclared queue', lambda u: Queue.get(f'err_none_{u}'), QueueNotFound, LookupError),
]


@pytest.mark.parametrize(('what', 'mistake', 'error', 'builtin'), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes_raise_a_microagent_error_with_the_1x_base(
        what: str, mistake: Callable[[str], object], error: type[Exception], builtin: type[Exception],
        unique: str) -> None:
    with pytest.raises(error) as caught:
        mistake(unique)
    assert isinstance(caught.value, MicroAgentError) and isinstance(caught.value, builtin)


async def test_sending_and_calling_mistakes(unique: str) -> None:
    signal = Signal(f'err_rpc_{unique}', Ping, returns=int)
    bus, broker = MemorySignalBus(), MemoryBroker()

    with pytest.raises(UsageError, match=f"signal 'err_rpc_{unique}': give the payload or keywords") as misuse:
        await bus[signal].send('me', Ping(n=1), n=2)  # type: ignore[call-arg]  # refused by mypy too
    with pytest.raises(CallTimeout, match=f"no answer to signal 'err_rpc_{unique}'") as timeout:
        await bus[signal].call('me', Ping(n=1), timeout=0.01)
    with pytest.raises(QueueNotFound, match=f"No queue is bound to exchange 'err_{unique}'") as unbound:
        await broker.publish(f'err_{unique}', {'n': 1})
    assert isinstance(misuse.value, TypeError) and isinstance(timeout.value, TimeoutError)
    assert isinstance(unbound.value, LookupError)


async def test_a_second_consumer_of_one_queue_on_one_broker_is_a_declaration_error(unique: str) -> None:
    queue = Queue(f'err_bound_{unique}', Ping)

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, ping: Ping) -> None: ...

    broker = MemoryBroker()
    async with Worker(broker=broker):
        with pytest.raises(DeclarationError, match=f"queue 'err_bound_{unique}' already has a consumer") as caught:
            await Worker(broker=broker).start()
    assert isinstance(caught.value, ValueError)


async def test_backend_argument_and_closed_errors() -> None:
    pytest.importorskip('redis')
    pytest.importorskip('aiormq')
    from microagent.backends.amqp.link import check_dsn
    from microagent.backends.redis import RedisBroker, RedisSignalBus

    with pytest.raises(InvalidArgument, match='heartbeat must be positive'):
        RedisBroker('redis://127.0.0.1:1/0', heartbeat=0)
    with pytest.raises(InvalidArgument, match='An AMQP DSN starts with amqp://'):
        check_dsn('redis://guest:secret@host/')
    bus = RedisSignalBus('redis://127.0.0.1:1/0')
    await bus.close()
    with pytest.raises(BackendClosed, match='is closed') as caught:
        await bus.transport.subscribe(('x',), bus.deliver)
    assert isinstance(caught.value, RuntimeError)


def test_an_undeclared_name_on_a_bus_or_broker_is_a_missing_attribute(unique: str) -> None:
    declared_signal, declared_queue = Signal(f'err_attr_{unique}', Ping), Queue(f'err_attr_{unique}', Ping)
    bus, broker = MemorySignalBus(), MemoryBroker()
    name = f'err_undeclared_{unique}'

    assert not hasattr(bus, name) and getattr(bus, name, None) is None
    assert not hasattr(broker, name) and getattr(broker, name, None) is None
    assert getattr(bus, declared_signal.name).signal is declared_signal
    assert getattr(broker, declared_queue.name).queue is declared_queue
    with pytest.raises(SignalNotFound, match=f"No such signal '{name}'") as no_signal:
        getattr(bus, name)
    with pytest.raises(QueueNotFound, match=f"No such queue '{name}'") as no_queue:
        getattr(broker, name)
    for error, owner in ((no_signal.value, bus), (no_queue.value, broker)):
        assert isinstance(error, AttributeError) and isinstance(error, LookupError)
        assert (error.name, error.obj) == (name, owner)


def test_private_names_stay_plain_attribute_errors() -> None:
    for owner in (MemorySignalBus(), MemoryBroker()):
        with pytest.raises(AttributeError) as caught:
            owner._no_such_thing  # noqa: B018
        assert not isinstance(caught.value, MicroAgentError)


# the audit: no `raise` of a bare built-in exception creeps back into the library

ALLOWED = {
    ('__getattr__', 'AttributeError'),  # the attribute protocol itself, for names that are not declarations
    ('run', 'TimeoutError'),  # a receiver's own timeout (deadlines.py), caught and logged by the bus
    ('_with_timer', 'TimeoutError'),  # the same, for a receiver called again within its own call
    ('*', 'NotImplementedError'),  # the body of a method every subclass overrides
    ('__anext__', 'StopAsyncIteration'),  # the async iterator protocol itself (RPC answers of a waiter)
}


def _builtin_raises() -> list[str]:
    builtin_errors = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}
    found = []
    for path in sorted(PACKAGE.rglob('*.py')):
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if not isinstance(node, ast.Raise) or node.exc is None:
                    continue
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(target, ast.Name) and target.id in builtin_errors \
                        and not {(function.name, target.id), ('*', target.id)} & ALLOWED:
                    found.append(f'{path.relative_to(PACKAGE.parent)}:{node.lineno} {function.name}: {target.id}')
    return found


def test_the_library_raises_no_bare_builtin_exception() -> None:
    assert _builtin_raises() == []
