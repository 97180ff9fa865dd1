"""A SETUP that fails: no agent may start."""
import os

_DIR = os.environ.get('LAUNCHER_TEST_DIR', '.')
SETUP = 'tests.launcher_agents.hooks:broken'
AGENT = {'alpha': {'backend': 'tests.launcher_agents.agents.Recorder', 'settings': {'dir': _DIR, 'name': 'alpha'}}}
