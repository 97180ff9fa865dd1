"""Comment signals, including an RPC with a typed answer."""
from __future__ import annotations

from typing import Annotated

import msgspec

from microagent import Signal


class CommentPosted(msgspec.Struct, frozen=True):
    """A user posted a comment."""

    comment_id: int
    user_id: int
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]


class CountQuery(msgspec.Struct, frozen=True):
    """How many comments has this user posted?"""

    user_id: int


comment_posted = Signal('comment_posted', CommentPosted)
comments_count = Signal('comments_count', CountQuery, returns=int)
