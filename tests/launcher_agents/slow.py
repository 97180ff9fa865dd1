"""A recorder and a worker whose task takes ``$LAUNCHER_TEST_WORK`` seconds."""
import os

_DIR = os.environ.get('LAUNCHER_TEST_DIR', '.')
AGENT = {
    'worker': {'backend': 'tests.launcher_agents.agents.SlowWorker',
               'settings': {'dir': _DIR, 'name': 'worker', 'work': float(os.environ.get('LAUNCHER_TEST_WORK', 1))}},
    'idle': {'backend': 'tests.launcher_agents.agents.Recorder', 'settings': {'dir': _DIR, 'name': 'idle'}},
}
