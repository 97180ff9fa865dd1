BROKER = {'main': {'dsn': 'memory://x'}}
AGENT = {'alpha': {'backend': 'tests.launcher_agents.agents.Recorder', 'broker': 'main'}}
