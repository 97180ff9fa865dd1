"""Benchmarks: this project against raw clients on the same server, printed as ratios."""
