"""Several hosts in one AMQP DSN (a cluster): how the DSN is split, shown and refused."""
from __future__ import annotations

import re

import pytest

from microagent.backends.amqp import AMQPBroker, AMQPSignalBus
from microagent.backends.amqp.hosts import join_hosts, split_hosts
from microagent.errors import InvalidArgument


def test_one_host_is_taken_as_written() -> None:
    assert split_hosts('amqp://u:p@rabbit/vhost?heartbeat=5') == ['amqp://u:p@rabbit/vhost?heartbeat=5']


def test_several_hosts_share_userinfo_vhost_and_query_and_get_the_default_port() -> None:
    assert split_hosts('amqp://u:p@h1,h2:5673, [::1] ,[::2]:5000/v?heartbeat=5') == [
        'amqp://u:p@h1:5672/v?heartbeat=5', 'amqp://u:p@h2:5673/v?heartbeat=5',
        'amqp://u:p@[::1]:5672/v?heartbeat=5', 'amqp://u:p@[::2]:5000/v?heartbeat=5']
    assert split_hosts('amqps://h1,h2') == ['amqps://h1:5671', 'amqps://h2:5671']


def test_a_list_of_dsns_is_a_list_of_hosts() -> None:
    hosts = ['amqp://u:p@h1/v', 'amqp://u:p@h2,h3/v']
    assert split_hosts(hosts) == ['amqp://u:p@h1/v', 'amqp://u:p@h2:5672/v', 'amqp://u:p@h3:5672/v']
    assert join_hosts(split_hosts(hosts)) == 'amqp://u:p@h1,h2:5672,h3:5672/v'


@pytest.mark.parametrize(('dsn', 'error'), [
    ('redis://h1,h2/0', 'starts with amqp:// or amqps://'),
    ('amqp://u:secret@h1,,h2/', 'An empty host'),
    ('amqp://u:secret@h1,h2:notaport/', re.escape("'amqp://u:***@h2:notaport/'")),
])
def test_bad_dsns_are_refused_without_their_password(dsn: str, error: str) -> None:
    with pytest.raises(InvalidArgument, match=error) as caught:
        split_hosts(dsn)
    assert 'secret' not in str(caught.value)
    with pytest.raises(InvalidArgument):
        AMQPBroker(dsn)


def test_an_empty_list_is_refused() -> None:
    with pytest.raises(InvalidArgument, match='at least one server'):
        split_hosts([])


async def test_brokers_and_buses_show_every_host_and_no_password() -> None:
    broker = AMQPBroker(['amqp://u:secret@h1/v', 'amqp://u:secret@h2:5673/v'])
    bus = AMQPSignalBus('amqp://u:secret@h1,h2/v')
    assert repr(broker) == '<AMQPBroker amqp://u:***@h1,h2:5673/v>'
    assert broker.dsn == 'amqp://u:secret@h1,h2:5673/v'
    assert 'secret' not in repr(bus) and 'h1:5672,h2:5672' in repr(bus)
    await broker.close()
    await bus.close()
