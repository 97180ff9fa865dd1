"""``microagent dead-letters ... --bus DSN``: a signal group's dead letters, by its store name."""
from __future__ import annotations

import asyncio

import msgspec
import pytest

from microagent import MicroAgent, Signal, receiver
from microagent.backends.memory import MemorySignalBus
from microagent.cli.main import main
from tests.helpers import eventually


class Order(msgspec.Struct, frozen=True):
    number: int


async def _dead_letter_one(dsn: str, signal: Signal[Order, None]) -> None:
    class Billing(MicroAgent):
        @receiver(signal, group='billing', max_retries=0)
        async def bill(self, order: Order) -> None:
            raise ValueError(f'cannot bill {order.number}')

    bus = MemorySignalBus(dsn)
    async with Billing(bus=bus):
        await MemorySignalBus(dsn)[signal].send('shop', Order(7))
        await eventually(lambda: _has_dead_letter(bus, f'{signal.name}@billing'))


async def _has_dead_letter(bus: MemorySignalBus, store: str) -> bool:
    return await bus.groups.dead_letter_count(store) == 1


def test_a_groups_dead_letters_are_listed_and_requeued(unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn, signal = f'memory://cli-groups-{unique}', Signal(f'order_{unique}', Order)
    asyncio.run(_dead_letter_one(dsn, signal))
    store = f'{signal.name}@billing'

    assert main(['dead-letters', 'list', store, '--bus', dsn]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"1 dead letters on queue '{store}' ({dsn}):"
    assert 'reason: ValueError: cannot bill 7' in out and '{"number":7}' in out

    assert main(['dead-letters', 'requeue', store, '--bus', dsn]) == 0
    assert capsys.readouterr().out.startswith(f"Requeued 1 dead letters on queue '{store}'")
    assert main(['dead-letters', 'list', store, '--bus', dsn]) == 1


@pytest.mark.parametrize(('args', 'error'), [
    (['list', 'order', '--bus', 'memory://x'], "--bus: 'order' is not a group store name (signal@group)"),
    (['list', 'order@nobody', '--bus', 'memory://x'], "queue 'order@nobody' is not declared on memory://x"),
])
def test_a_wrong_group_store_is_a_usage_error(args: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['dead-letters', *args]) == 2
    assert error in capsys.readouterr().err


def test_bus_and_broker_together_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(['dead-letters', 'list', 'a@b', '--bus', 'memory://', '--broker', 'memory://'])
    assert exited.value.code == 2
    assert 'not allowed with argument' in capsys.readouterr().err
