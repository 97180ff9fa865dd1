"""User lifecycle signals."""
from __future__ import annotations

import msgspec

from microagent import Signal


class UserCreated(msgspec.Struct, frozen=True):
    """A user account was created."""

    user_id: int
    email: str
    name: str = ''


class UserDeleted(msgspec.Struct, frozen=True):
    """A user account was deleted."""

    user_id: int


user_created = Signal('user_created', UserCreated)
user_deleted = Signal('user_deleted', UserDeleted)
