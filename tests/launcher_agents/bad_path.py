AGENT = {'ghost': {'backend': 'tests.launcher_agents.agents.NoSuchAgent'}}
