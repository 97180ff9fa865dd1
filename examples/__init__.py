"""The demo: four agents built on the ``schemas/`` package.

    python -m examples --duration 10                                # memory backend, one process
    python -m examples --duration 10 --redis redis://127.0.0.1:6379/5   # Redis, one process per agent
    marun --single-process examples.settings_memory                 # the same group, until Ctrl-C
"""
