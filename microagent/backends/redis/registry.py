"""The groups of a bus prefix, as its publishers know them without a round trip per send.

A member joining a group writes the retention its ``GroupOptions`` ask for into the prefix's
registry (``keys.group_registry``: store name -> JSON) and publishes the same on
``keys.group_channel``. Every bus of the prefix loads the registry on its first send, hears of each
join on that channel (the subscriber it already has), and reads the registry again after a
reconnection and every ``refresh`` seconds. A signal with at least one group is then also appended
to its stream, trimmed to the most generous retention of its groups; a signal without is only
PUBLISHed, as before. Whatever is read here comes from the server and is checked: a bad entry is
skipped with a warning, never applied.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from microagent.backends.redis.keys import group_stream
from microagent.errors import InvalidArgument
from microagent.groups import GroupOptions, split_store_name

__all__ = ['MAX_LENGTH', 'Target', 'encode', 'parse', 'targets']

#: the largest ``max_length`` taken from the registry (larger: the entry is refused)
MAX_LENGTH = 1_000_000_000
#: the longest ``max_age`` (s) taken from the registry: ten years
MAX_AGE = 10 * 366 * 86400.0


@dataclass(frozen=True)
class Target:
    """Where a send of a grouped signal goes besides its channel: the stream and its retention."""

    stream: str
    max_length: int
    max_age_ms: int


def encode(store: str, options: GroupOptions) -> bytes:
    """A registry value (and, with ``store``, the join notification)."""
    return msgspec.json.encode({'store': store, 'max_length': options.max_length, 'max_age': options.max_age})


def parse(store: str | bytes, raw: bytes) -> tuple[str, int, float]:
    """``(store name, max length, max age)`` of a registry value; a ValueError says what is wrong."""
    try:
        name = store.decode() if isinstance(store, bytes) else store
        split_store_name(name)
        value = msgspec.json.decode(raw)
    except (UnicodeDecodeError, msgspec.DecodeError) as exc:
        raise InvalidArgument(f'unreadable: {exc}') from None
    if not isinstance(value, dict):
        raise InvalidArgument('not a JSON object')
    length, age = value.get('max_length'), value.get('max_age')
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= MAX_LENGTH:
        raise InvalidArgument(f'max_length must be an int from 1 to {MAX_LENGTH}, got {length!r}')
    if isinstance(age, bool) or not isinstance(age, int | float) or not 0 < age <= MAX_AGE or math.isnan(age):
        raise InvalidArgument(f'max_age must be seconds from 0 to {MAX_AGE}, got {age!r}')
    return name, length, float(age)


def notification(raw: bytes) -> tuple[str, int, float]:
    """``(store name, max length, max age)`` of a join notification; a ValueError when malformed."""
    try:
        value: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f'unreadable: {exc}') from None
    if not isinstance(value, dict) or not isinstance(value.get('store'), str):
        raise InvalidArgument('not a JSON object with a store name')
    return parse(value['store'], raw)


def targets(prefix: str, stores: Mapping[str, tuple[int, float]]) -> dict[str, Target]:
    """Signal name -> its stream and retention: the largest length and age any of its groups asked for."""
    found: dict[str, Target] = {}
    for store, (length, age) in stores.items():
        signal, _ = split_store_name(store)
        known = found.get(signal)
        age_ms = int(age * 1000)
        if known is not None:
            length, age_ms = max(length, known.max_length), max(age_ms, known.max_age_ms)
        found[signal] = Target(group_stream(prefix, signal), length, age_ms)
    return found
