"""The command line: ``microagent`` (run, schema, check, docs, publish, dead-letters) and ``marun``."""
from microagent.cli.main import main

__all__ = ['main']
