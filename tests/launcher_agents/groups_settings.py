"""A marun group of one grouped receiver on a real server, from the environment a test sets:
``GROUP_TEST_DSN``, ``GROUP_TEST_PREFIX``, ``GROUP_TEST_VISIBILITY`` (seconds) and the run's
``LAUNCHER_TEST_DIR``."""
import os

from microagent.groups import GroupOptions

BUS = {'default': {'dsn': os.environ['GROUP_TEST_DSN'], 'prefix': os.environ['GROUP_TEST_PREFIX'],
                   'group_options': GroupOptions(visibility_timeout=float(os.environ['GROUP_TEST_VISIBILITY']))}}
AGENT = {'billing': {'backend': 'tests.launcher_agents.agents.GroupedWriter', 'bus': 'default',
                     'settings': {'dir': os.environ['LAUNCHER_TEST_DIR'], 'name': 'billing', 'work': 0.01}}}
