"""marun settings sign messages: ``SIGNING_KEY`` reaches every BUS and BROKER entry of its module
(an entry's own ``signing_key`` wins), agents of a signed group hear each other while a process
without the key is not heard, and a bad key is a configuration error that never shows a key."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from microagent.cli.config import ConfigError, load_group
from microagent.cli.marun import run_agents
from microagent.message import Envelope
from microagent.signing import SignedBrokerTransport, SignedBusTransport, SigningKeys, rejected
from microagent.tools.memory import MemorySignalBus
from tests.helpers import eventually
from tests.launcher_agents.agents import Listener, Ping, ping
from tests.launcher_agents.support import DEADLINE

AGENTS = 'tests.launcher_agents.agents'
KEY, OWN = 'settings-fleet-key-0123456789', 'entry-own-key-0123456789'


def group(directory: Path, **sections: Any) -> dict[str, Any]:
    """A pinger and a listener on one BUS entry, the listener with a BROKER entry too."""
    agents = {name: {'backend': f'{AGENTS}.{cls}', 'bus': 'default',
                     'settings': {'dir': str(directory), 'name': name}}
              for name, cls in (('pinger', 'Pinger'), ('listener', 'Listener'))}
    agents['listener']['broker'] = 'default'
    return {'BUS': {'default': {'dsn': 'memory://'}}, 'BROKER': {'default': {'dsn': 'memory://'}},
            'AGENT': agents, **sections}


async def test_a_settings_key_signs_every_entry_and_the_group_hears_itself(
        config_module: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heard = asyncio.Event()
    monkeypatch.setattr(Listener, 'heard', [lambda name: heard.set()])
    configs = load_group([config_module(**group(tmp_path, SIGNING_KEY=[KEY, 'an-older-key-0123456789']))])
    listener = next(config for config in configs if config.name == 'listener')
    assert listener.bus is not None and listener.broker is not None
    built = listener.build()
    assert isinstance(built.bus.transport, SignedBusTransport)
    assert isinstance(built.broker.transport, SignedBrokerTransport)
    assert KEY not in repr(listener) and KEY not in repr(configs)

    stopping = asyncio.Event()
    async with asyncio.timeout(DEADLINE):
        running = asyncio.create_task(run_agents(configs, stopping, grace=1))
        await heard.wait()
        # a process on the same hub without the key is not heard
        stranger = MemorySignalBus(listener.bus.options['dsn'])
        before = rejected.get(('signal', ping.name, 'unsigned'), 0)
        await stranger[ping].send('stranger', Ping(number=-1))
        await eventually(_more(before))  # dropped before the listener, which never hears 'stranger'
        stopping.set()
        assert await running == 0


def _more(before: int) -> Any:
    async def check() -> bool:
        return rejected.get(('signal', ping.name, 'unsigned'), 0) > before
    return check


def test_an_entrys_own_key_wins_over_the_settings_key(config_module: Any, tmp_path: Path) -> None:
    sections = group(tmp_path, SIGNING_KEY=KEY)
    sections['BUS']['default']['signing_key'] = OWN
    (pinger, _) = load_group([config_module(**sections)])
    bus = pinger.build().bus
    assert isinstance(bus.transport, SignedBusTransport)
    signed = bus.transport.keys.sign(Envelope(b'{}', {}))
    assert SigningKeys(OWN).check(signed) is None and SigningKeys(KEY).check(signed) == 'bad signature'


@pytest.mark.parametrize(('where', 'key', 'says'), [
    ('SIGNING_KEY', 'short-secret', 'SIGNING_KEY: signing_key[0]: a key must be at least 16 bytes long, '
                                    'this one has 12'),
    ('SIGNING_KEY', ['long-enough-secret-0123', 'short-secret'], 'signing_key[1]: a key must be at least 16 bytes'),
    ('SIGNING_KEY', 42, 'a key (str or bytes) or a non-empty list of keys is expected, got int'),
    ('SIGNING_KEY', [], 'a non-empty list of keys is expected'),
    ('entry', 'short-secret', "BUS['default']['signing_key']: signing_key[0]: a key must be at least 16 bytes"),
])
def test_a_bad_key_is_a_configuration_error_that_shows_no_key(config_module: Any, tmp_path: Path,
                                                               where: str, key: Any, says: str) -> None:
    sections = group(tmp_path)
    if where == 'entry':
        sections['BUS']['default']['signing_key'] = key
    else:
        sections[where] = key
    with pytest.raises(ConfigError, match=re.escape(says)) as caught:
        load_group([config_module(**sections)])
    assert 'short-secret' not in str(caught.value) and 'long-enough-secret' not in str(caught.value)
