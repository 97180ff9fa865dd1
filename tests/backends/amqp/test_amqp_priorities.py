"""RabbitMQ priority queues: ``Queue(..., priorities=n)`` is a classic queue with
``x-max-priority`` n - 1 and ``send(..., priority=k)`` the message's ``priority`` property; a
quorum queue with priorities, or a queue that exists with other arguments, is a clear error naming
the queue."""
from __future__ import annotations

import msgspec
import pytest

from microagent import Queue
from microagent.errors import DeclarationError
from tests.amqp_support import Servers

pytestmark = pytest.mark.amqp


class Job(msgspec.Struct, frozen=True):
    job_id: int


async def test_a_priority_queue_is_declared_with_x_max_priority(amqp: Servers, unique: str) -> None:
    queue = Queue(f'prio_{unique}', Job, priorities=5)
    broker = amqp.broker()
    await broker[queue].send(Job(1), priority=4)
    args = broker.transport.arguments(queue)
    assert args.main(f'{queue.name}.dead') == {'x-max-priority': 4}
    assert await broker[queue].length() == 1


async def test_priorities_on_a_quorum_queue_are_refused(amqp: Servers, unique: str) -> None:
    queue = Queue(f'prio_qq_{unique}', Job, priorities=3)
    broker = amqp.broker(queue_type='quorum')
    with pytest.raises(DeclarationError, match=f"queue 'prio_qq_{unique}': priorities need a classic queue"):
        await broker[queue].send(Job(1), priority=1)


async def test_a_queue_declared_before_without_priorities_is_a_clear_error(amqp: Servers, unique: str) -> None:
    await amqp.broker()[Queue(f'prio_old_{unique}', Job)].declare()
    again = Queue(f'prio_old_{unique}x', Job, priorities=3)
    again.name = f'prio_old_{unique}'  # the same queue on RabbitMQ, now with levels (another deployment)
    with pytest.raises(DeclarationError, match=f"queue 'prio_old_{unique}' exists on RabbitMQ with other arguments "
                                               r'than a classic queue with 3 priority levels \(x-max-priority 2\)'):
        await amqp.broker()[again].send(Job(1), priority=2)
