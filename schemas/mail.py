"""The mail queue, with a pydantic model (the one place pydantic is used in the reference package)."""
from __future__ import annotations

from pydantic import BaseModel, Field

from microagent import Queue


class Mail(BaseModel):
    """An e-mail to send."""

    to: str = Field(pattern=r'^[^@\s]+@[^@\s]+$')
    subject: str = Field(min_length=1, max_length=200)
    body: str = ''


mailer = Queue('mailer', Mail)
