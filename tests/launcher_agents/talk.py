"""A pinger and a listener on one in-memory bus: they only meet in --single-process mode."""
import os

_DIR = os.environ.get('LAUNCHER_TEST_DIR', '.')
BUS = {'default': {'backend': 'microagent.tools.memory.MemorySignalBus', 'dsn': 'memory://launcher-talk'}}
AGENT = {
    'pinger': {'backend': 'tests.launcher_agents.agents.Pinger', 'bus': 'default',
               'settings': {'dir': _DIR, 'name': 'pinger'}},
    'listener': {'backend': 'tests.launcher_agents.agents.Listener', 'bus': 'default',
                 'settings': {'dir': _DIR, 'name': 'listener'}},
}
