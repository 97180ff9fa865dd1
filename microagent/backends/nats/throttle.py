"""A warning that may come in floods (forged requests, one per message a stranger sends) logged at
most once per ``interval`` per source, with the count of the ones it stands for."""
from __future__ import annotations

import logging
import time

__all__ = ['Throttled']

MAX_SOURCES = 1024  # sources remembered at once; past it the memory starts again


class Throttled:
    """``warn(source, text)``: the first of a source's warnings in an interval is logged, naming how
    many of the source's warnings the previous interval held back; the others are counted."""

    def __init__(self, log: logging.Logger, interval: float = 60.0) -> None:
        self.log = log
        self.interval = interval
        self._sources: dict[str, tuple[float, int]] = {}  # source -> (when last logged, held back since)

    def warn(self, source: str, text: str) -> None:
        now = time.monotonic()
        logged = self._sources.get(source)
        if logged is not None and now - logged[0] < self.interval:
            self._sources[source] = (logged[0], logged[1] + 1)
            return
        if len(self._sources) >= MAX_SOURCES:
            self._sources.clear()
        held = logged[1] if logged is not None else 0
        more = f' ({held} more like it in the last {self.interval:.0f}s)' if held else ''
        self.log.warning('%s%s', text, more)
        self._sources[source] = (now, 0)
