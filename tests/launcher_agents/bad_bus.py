import os

BUS = {'default': {'backend': 'microagent.tools.memory.MemorySignalBus'}}
AGENT = {'alpha': {'backend': 'tests.launcher_agents.agents.Recorder',
                   'settings': {'dir': os.environ.get('LAUNCHER_TEST_DIR', '.'), 'name': 'alpha'}},
         'listener': {'backend': 'tests.launcher_agents.agents.Listener', 'bus': 'main'}}
