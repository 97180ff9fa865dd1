"""Shared benchmark helpers: alternate this project and the raw client within each round, time each
side's wall clock and client CPU, print one table of medians with their ranges.

This machine (and any CI runner) is shared and noisy: one round can move by 30 %. So every row is
measured in ``rounds`` rounds (at least 5), each running ours then raw (then any raw variant) one
after the other, and shows the median of the per-round ratios with their range, beside the client
CPU time per message (``time.process_time``, the whole benchmark process: a signal row counts the
sender and the receiver), which a busy neighbour moves far less than wall-clock rates.

``MICROAGENT_BENCH_QUICK=1`` (or ``--quick`` on ``python -m benchmarks``) runs smaller batches.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: smaller batches, same number of rounds: a quick look rather than a figure to quote
QUICK = os.environ.get('MICROAGENT_BENCH_QUICK', '') not in ('', '0')
ROUNDS = max(5, int(os.environ.get('MICROAGENT_BENCH_ROUNDS', '5')))


def scaled(count: int) -> int:
    """``count`` messages, or a fifth of them in quick mode."""
    return max(count // 5, 50) if QUICK else count


@dataclass(frozen=True)
class Row:
    """One figure. ``ours`` and ``raw`` are rates (higher is better) unless ``lower_is_better``,
    then ``ratio`` is raw / ours so that a ratio above 1 always means 'faster than raw'. ``ratios``
    are the per-round ones (the ratio shown is their median, with their range); ``cpu`` is the
    client CPU in microseconds per message of (ours, raw), medians over the rounds."""

    name: str
    ours: float
    raw: float | None
    unit: str
    target: float | None = None
    lower_is_better: bool = False
    note: str = ''
    ratios: tuple[float, ...] = ()
    cpu: tuple[float | None, float | None] = (None, None)

    @property
    def ratio(self) -> float | None:
        if self.ratios:
            return statistics.median(self.ratios)
        if self.raw is None or not self.ours or not self.raw:
            return None
        return self.raw / self.ours if self.lower_is_better else self.ours / self.raw

    @property
    def spread(self) -> str:
        return f'{min(self.ratios):.2f}-{max(self.ratios):.2f}' if len(self.ratios) > 1 else ''

    @property
    def verdict(self) -> str:
        if self.target is None or self.ratio is None:
            return ''
        return 'ok' if self.ratio >= self.target else 'MISSED'


@dataclass
class Side:
    """One side of a comparison: ``run`` is timed (wall and CPU); ``prepare`` and ``finish``
    (filling a queue, starting and stopping an agent) run around it untimed."""

    run: Callable[[], Awaitable[Any]]
    prepare: Callable[[], Awaitable[Any]] | None = None
    finish: Callable[[], Awaitable[Any]] | None = None
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    async def once(self) -> None:
        if self.prepare is not None:
            await self.prepare()
        cpu, wall = time.process_time(), time.perf_counter()
        await self.run()
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)
        if self.finish is not None:
            await self.finish()


async def alternate(sides: Sequence[Side], rounds: int = ROUNDS) -> None:
    """Run every side once per round, in turn, ``rounds`` times (a warm-up round first, not kept)."""
    for side in sides:
        await side.once()
    for side in sides:
        side.wall.clear()
        side.cpu.clear()
    for _ in range(rounds):
        for side in sides:
            await side.once()


def rate_row(name: str, count: int, ours: Side, raw: Side, target: float | None = None, note: str = '') -> Row:
    """A rate row (messages per second) of two sides measured by ``alternate``, ``count`` per round."""
    ratios = tuple(r / o for o, r in zip(ours.wall, raw.wall, strict=True))
    return Row(name, count / median(ours.wall), count / median(raw.wall), 'msg/s', target, note=note,
               ratios=ratios, cpu=(median(ours.cpu) / count * 1e6, median(raw.cpu) / count * 1e6))


def latency_rows(name: str, ours: list[list[float]], raw: list[list[float]], target: float | None = None,
                 cpu: tuple[float | None, float | None] = (None, None)) -> list[Row]:
    """p50 and p99 rows of per-round latency samples (seconds), ratios per round (raw / ours)."""
    micro = 1e6
    rows = []
    for label, fraction in ((name, 0.5), ('  p99 of the same calls', 0.99)):
        ours_p = [percentile(samples, fraction) for samples in ours]
        raw_p = [percentile(samples, fraction) for samples in raw]
        rows.append(Row(label, median(ours_p) * micro, median(raw_p) * micro, 'us',
                        target if fraction == 0.5 else None, lower_is_better=True,
                        ratios=tuple(r / o for o, r in zip(ours_p, raw_p, strict=True)),
                        cpu=cpu if fraction == 0.5 else (None, None)))
    return rows


async def rate(count: int, run: Callable[[], Awaitable[None]]) -> float:
    """Operations per second of ``run``, which performs ``count`` operations."""
    start = time.perf_counter()
    await run()
    return count / (time.perf_counter() - start)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def _number(value: float | None) -> str:
    if value is None:
        return '-'
    return f'{value:,.0f}' if abs(value) >= 100 else f'{value:,.2f}'


def print_table(title: str, rows: list[Row]) -> None:
    """A plain-text table: name, ours, raw, unit, ratio (median of the rounds) and its range, client
    CPU per message of both sides, target and whether it was met."""
    header = ('benchmark', 'ours', 'raw', 'unit', 'ratio', 'range', 'cpu us/msg ours', 'raw', 'target', '')
    lines = [header] + [
        (r.name, _number(r.ours), _number(r.raw), r.unit, '-' if r.ratio is None else f'{r.ratio:.2f}x',
         r.spread, _number(r.cpu[0]), _number(r.cpu[1]),
         '-' if r.target is None else f'>= {r.target:.2f}x',
         r.verdict or r.note)
        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(f'\n{title}  (ratio > 1: faster than raw; medians of {ROUNDS} alternating rounds)', flush=True)
    for index, line in enumerate(lines):
        print('  '.join(cell.ljust(width) if i in (0, 3, 9) else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip())
        if index == 0:
            print('  '.join('-' * width for width in widths))
    print(flush=True)
