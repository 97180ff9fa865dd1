"""``microagent.launcher``, the 1.x path of ``marun`` (``microagent.cli.marun``) and its helpers."""
from microagent.cli.marun import (
    ConfigError,
    ServerInterrupt,
    init_agent,
    load_configuration,
    main,
    run_agents,
    run_group,
)

__all__ = ['ConfigError', 'ServerInterrupt', 'init_agent', 'load_configuration', 'main', 'run_agents', 'run_group']
