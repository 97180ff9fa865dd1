"""A recorder next to an agent that fails in ``pre_start``."""
import os

_DIR = os.environ.get('LAUNCHER_TEST_DIR', '.')
AGENT = {
    'steady': {'backend': 'tests.launcher_agents.agents.Recorder', 'settings': {'dir': _DIR, 'name': 'steady'}},
    'broken': {'backend': 'tests.launcher_agents.agents.FailingStart', 'settings': {'dir': _DIR, 'name': 'broken'}},
}
