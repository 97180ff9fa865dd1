BROKER = {'main': {'prefix': 'x'}}  # neither a backend nor a DSN that names one
AGENT = {'alpha': {'backend': 'tests.launcher_agents.agents.Recorder', 'broker': 'main'}}
