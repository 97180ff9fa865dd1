"""1.x keyword sends stay accepted where the payload is the 1.x dict: a declaration without a model,
attribute access and indexing by name (untyped, as in 1.x), a signal looked up by name."""
from __future__ import annotations

from microagent import AbstractSignalBus, Signal
from schemas import CountQuery, comments_count

started = Signal(name='started', providing_args=['user_id'])
typed_json = Signal(name='typed_json', providing_args={'user_id': 'integer'})


async def send(bus: AbstractSignalBus) -> None:
    await bus.user_created.send('d', user_id=1, email='a@b.c')
    await bus['user_created'].send('d', user_id=1, email='a@b.c')
    await bus[started].send('d', user_id=1)
    await bus[started].send('d', {'user_id': 1}, headers={'x-tenant': 'acme'})
    await bus[typed_json].send('d', user_id=1)
    await bus[Signal.get('started')].send('d', user_id=1)
    answers = await bus[started].call('d', user_id=1, timeout=5)
    assert isinstance(answers, dict)
    async with bus.comments_count.waiter('d', user_id=1, timeout=5) as waiting:
        async for answer in waiting:
            assert answer
    counts: dict[str, int] = await bus[comments_count].call('d', CountQuery(user_id=1), timeout=5)
    assert counts
