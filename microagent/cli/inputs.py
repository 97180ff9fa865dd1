"""What a user types, checked before it is used: a DSN's host and port, a number of seconds.

A malformed DSN (``redis://h:99999/0``, ``redis://[::1``) is a usage error (exit 2, one line naming
the option or entry, the password hidden), never a traceback at connect time and never exit 3,
which means the server did not answer. The check reads every ``host:port`` of the authority as
``urllib`` does (clients parse DSNs with it), whatever the backend; a backend may refuse more when
it is built, which ``build`` turns into the same one line.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from microagent.cli.config import MAX_REPLICAS, ConfigError, check_replicas
from microagent.dsn import hide_password, malformed, scrub

T = TypeVar('T')


def check_dsn(label: str, dsn: str) -> None:
    """A ConfigError naming ``label`` when a host or port of ``dsn`` cannot be read."""
    if (problem := malformed(dsn)) is not None:
        raise ConfigError(f'{label}: {problem}')


def build(label: str, dsn: str, make: Callable[[], T]) -> T:
    """``make()``, after ``check_dsn``; a ValueError the backend raises on reading the DSN is a
    ConfigError naming ``label``."""
    check_dsn(label, dsn)
    try:
        return make()
    except ValueError as exc:  # InvalidArgument too: the backend read the DSN and refused it
        raise ConfigError(f'{label}: the DSN {hide_password(dsn)} is malformed: {scrub(str(exc), dsn)}') from None


def _seconds(text: str, zero_ok: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (value < 0 if zero_ok else value <= 0):
        bound = '>= 0' if zero_ok else '> 0'
        raise argparse.ArgumentTypeError(f'{text!r} is not a finite number of seconds {bound}')
    return value


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0 (nan, inf and negatives are usage errors)."""
    return _seconds(text, zero_ok=False)


def seconds_or_zero(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    return _seconds(text, zero_ok=True)


def replica_counts(parser: argparse.ArgumentParser, given: Sequence[str]) -> dict[str, int]:
    """``--replicas users=3 --replicas mailer=2`` as a dict; a usage error (exit 2) for a bad one."""
    counts: dict[str, int] = {}
    for item in given:
        name, equals, number = item.partition('=')
        if not (equals and name and number.strip().isdigit()):
            parser.error(f'--replicas: expected NAME=N (N from 1 to {MAX_REPLICAS}), got {item!r}')
        try:
            counts[name] = check_replicas(f'--replicas {name}', int(number))
        except ConfigError as exc:
            parser.error(str(exc))
    return counts


def read_token(parser: argparse.ArgumentParser, path: str) -> str:
    """The token in ``path`` (one line); a usage error (exit 2) when it cannot be read or is empty."""
    try:
        with open(path, encoding='utf-8') as file:
            token = file.read().strip()
    except OSError as exc:
        parser.error(f'--http-token-file: cannot read {path!r}: {exc.strerror}')
    if not token or any(char.isspace() for char in token):
        parser.error(f'--http-token-file: {path!r} must hold one token, without spaces')
    return token
