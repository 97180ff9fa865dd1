"""Two agents, each in its process: SETUP runs in each, before the agent is built."""
import os

_DIR = os.environ.get('LAUNCHER_TEST_DIR', '.')
SETUP = 'tests.launcher_agents.hooks:setup'
AGENT = {name: {'backend': 'tests.launcher_agents.hooks.SetUp', 'settings': {'dir': _DIR, 'name': name}}
         for name in ('alpha', 'beta')}
