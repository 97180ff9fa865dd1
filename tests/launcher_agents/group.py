"""Two recorders: the basic group."""
import os

_DIR = os.environ.get('LAUNCHER_TEST_DIR', '.')
BUS = {'default': {'backend': 'microagent.tools.memory.MemorySignalBus', 'dsn': 'memory://launcher'}}
AGENT = {
    'alpha': {'backend': 'tests.launcher_agents.agents.Recorder', 'bus': 'default',
              'settings': {'dir': _DIR, 'name': 'alpha'}},
    'beta': {'backend': 'tests.launcher_agents.agents.Recorder', 'settings': {'dir': _DIR, 'name': 'beta'}},
}
