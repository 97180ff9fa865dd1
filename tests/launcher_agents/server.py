"""A recorder next to an agent whose server ends it."""
import os

_DIR = os.environ.get('LAUNCHER_TEST_DIR', '.')
AGENT = {
    'steady': {'backend': 'tests.launcher_agents.agents.Recorder', 'settings': {'dir': _DIR, 'name': 'steady'}},
    'server': {'backend': 'tests.launcher_agents.agents.ShortServer', 'settings': {'dir': _DIR, 'name': 'server'}},
}
