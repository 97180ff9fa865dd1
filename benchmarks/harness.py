"""Shared benchmark helpers: time a run, compare with the raw client, print one table.

A backend's benchmark module builds ``Row`` objects (this project vs the raw client on the same
server in the same run) and calls ``print_table``; targets are ratios, checked when printed.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One figure. ``ours`` and ``raw`` are rates (higher is better) unless ``lower_is_better``,
    then ``ratio`` is raw / ours so that a ratio above 1 always means 'faster than raw'."""

    name: str
    ours: float
    raw: float | None
    unit: str
    target: float | None = None
    lower_is_better: bool = False
    note: str = ''

    @property
    def ratio(self) -> float | None:
        if self.raw is None or not self.ours or not self.raw:
            return None
        return self.raw / self.ours if self.lower_is_better else self.ours / self.raw

    @property
    def verdict(self) -> str:
        if self.target is None or self.ratio is None:
            return ''
        return 'ok' if self.ratio >= self.target else 'MISSED'


async def rate(count: int, run: Callable[[], Awaitable[None]]) -> float:
    """Operations per second of ``run``, which performs ``count`` operations."""
    start = time.perf_counter()
    await run()
    return count / (time.perf_counter() - start)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def _number(value: float | None) -> str:
    if value is None:
        return '-'
    return f'{value:,.0f}' if abs(value) >= 100 else f'{value:,.2f}'


def print_table(title: str, rows: list[Row]) -> None:
    """A plain-text table: name, ours, raw, unit, ratio, target and whether it was met."""
    header = ('benchmark', 'ours', 'raw', 'unit', 'ratio', 'target', '')
    lines = [header] + [
        (r.name, _number(r.ours), _number(r.raw), r.unit, '-' if r.ratio is None else f'{r.ratio:.2f}x',
         '-' if r.target is None else f'>= {r.target:.2f}x', r.verdict or r.note)
        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(f'\n{title}')
    for index, line in enumerate(lines):
        print('  '.join(cell.ljust(width) if i in (0, 3, 6) else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip())
        if index == 0:
            print('  '.join('-' * width for width in widths))
