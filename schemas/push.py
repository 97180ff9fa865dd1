"""Push notifications routed by platform through the ``push`` topic exchange."""
from __future__ import annotations

import msgspec

from microagent import Queue


class Push(msgspec.Struct, frozen=True):
    """A push notification; the routing key is ``{user_id}.{platform}``."""

    user_id: int
    text: str


push_android = Queue('push_android', Push, exchange='push', topics=['*.android'])
push_ios = Queue('push_ios', Push, exchange='push', topics=['*.ios'])
